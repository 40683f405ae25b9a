"""One door for every data source: ``open_source(spec, preprocess, ...)`` dispatches through :data:`SOURCES`.

A source is a kind of data (captions files, class folders, WebDataset shards, the built-in
digits; packs add their own, such as DICOM) that says whether it *accepts* a spec and *opens* it
into a :class:`~raylens.data.result.ReadResult`. :func:`open_source` tries them in order of
``priority``; ``KIND:SPEC`` (``dicom:/data/ct``, ``captions:list.txt``) picks one by name. Packs
register more from their plug-in module (``raylens.plugins``) with :func:`register_source`::

    @register_source("dicom", accepts=lambda spec: Path(spec).name == "DICOMDIR", describe="dicom:PATH")
    def open_dicom(spec, preprocess=None, *, split=None, seed=0, **options): ...

Ray-free: each source imports its Ray reader when it opens a spec.

>>> sorted(n for n in SOURCES.names() if n in ("captions", "digits", "folder", "webdataset"))
['captions', 'digits', 'folder', 'webdataset']
>>> SOURCES.get("webdataset").accepts("shards/{00000..00009}.tar")
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylens.data.result import ReadResult
from raylens.registry import Registry

__all__ = ["DataSource", "SOURCES", "register_source", "open_source", "describe_sources"]

SOURCES = Registry("data source")
"""Name -> :class:`DataSource`. Register with :func:`register_source`."""


@dataclass(frozen=True)
class DataSource:
    """One kind of data :func:`open_source` can open."""

    name: str
    """Registry name; also the ``KIND:`` prefix that picks this source explicitly."""
    accepts: Callable[[str], bool]
    """``accepts(spec)``: cheap (no reading of data), never raises for a spec it does not take."""
    open: Callable[..., ReadResult]
    """``open(spec, preprocess, *, split=None, seed=0, **options) -> ReadResult``."""
    describe: str
    """How the kind is written, for error messages ("a captions file (.csv/.tsv/.jsonl/.parquet)")."""
    priority: int = 50
    """Sources are tried from low to high; catch-alls (any folder) go last."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"name must be an identifier such as 'dicom' (it is the KIND: prefix), got {self.name!r}")
        if not callable(self.accepts) or not callable(self.open):
            raise TypeError(f"source {self.name!r}: accepts and open must be callables")
        if not self.describe:
            raise ValueError(f"source {self.name!r}: describe must say how a spec of this kind is written")

    def __call__(self, spec: str, preprocess: Any = None, **options: Any) -> ReadResult:
        return self.open(spec, preprocess, **options)


def register_source(name: str, *, accepts: Callable[[str], bool], describe: str, priority: int = 50):
    """Decorator registering ``open(spec, preprocess, *, split=None, seed=0, **options)`` as a source.

    The function must return a :class:`~raylens.data.result.ReadResult`; ``accepts`` tells
    :func:`open_source` which specs are this source's.
    """

    def deco(open_fn: Callable[..., ReadResult]) -> Callable[..., ReadResult]:
        source = DataSource(name, accepts, open_fn, describe, priority)
        SOURCES.register(name, doc=describe)(source)
        return open_fn

    return deco


def _sources() -> list[DataSource]:
    from raylens.plugins import load_plugins

    load_plugins()  # packs register their sources on import
    return sorted((SOURCES.get(n) for n in SOURCES.names()), key=lambda s: (s.priority, s.name))


def describe_sources() -> str:
    """The kinds :func:`open_source` reads, as one sentence."""
    kinds = [s.describe for s in _sources()]
    return ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else "".join(kinds)


def open_source(
    spec: str, preprocess: Any = None, *, split: str | None = None, seed: int = 0, **options: Any
) -> ReadResult:
    """Open ``spec`` as a lazy Ray dataset with its ingest report.

    Args:
        spec: ``digits``, a captions file, a folder of class subfolders, WebDataset shards, a kind a
            pack registered (``dicom:PATH``), or ``KIND:SPEC`` to name the kind (see :data:`SOURCES`).
        preprocess: the image transform (``model.preprocess`` or a ``TrainAugment``); sources that
            take none (DICOM) document what they accept.
        split: a captions file's ``split`` value; for ``digits`` ``train`` (default) or ``heldout``.
            Sources without splits refuse it.
        seed: seed of sources that draw (the digits split).
        **options: passed to the source (``columns=`` for captions, ``batch_size=``, ...).

    Raises:
        FileNotFoundError: no source takes ``spec`` and no such file exists; the message lists the kinds.
        ValueError: ``spec`` exists but no source takes it (same message), or the source's own checks.
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"spec must be a non-empty string such as 'digits' or a path, got {spec!r}")
    sources = _sources()
    kind, sep, rest = spec.partition(":")
    if sep and rest and len(kind) > 1 and kind in SOURCES:  # KIND:SPEC (one letter is a drive, C:/...)
        return SOURCES.get(kind)(rest, preprocess, split=split, seed=seed, **options)
    for source in sources:
        if source.accepts(spec):
            return source(spec, preprocess, split=split, seed=seed, **options)
    names = ", ".join(s.name for s in sources)
    exists = Path(spec).expanduser().exists()
    msg = (
        f"data {spec!r} {'is no kind' if exists else 'is not a file or folder, nor a kind'} raylens can read; "
        f"give {describe_sources()} (or KIND:SPEC, KIND one of {names})"
    )
    raise (ValueError if exists else FileNotFoundError)(msg)


# ----------------------------------------------------------------------------------- built-ins


def _refuse_split(kind: str, split: str | None) -> None:
    if split is not None:
        raise ValueError(f"split={split!r}: {kind} have no splits; split is for captions files and digits")


def _need_preprocess(kind: str, preprocess: Any) -> None:
    if preprocess is None:
        raise ValueError(f"{kind} need an image transform: pass preprocess=model.preprocess (or a TrainAugment)")


@register_source("digits", accepts=lambda spec: spec == "digits", describe="'digits' (built in)", priority=0)
def _open_digits(spec: str, preprocess: Any, *, split: str | None = None, seed: int = 0, **options: Any) -> ReadResult:
    if spec != "digits":
        raise ValueError(f"the digits source takes no path, got {spec!r}; choose the part with split='heldout'")
    _need_preprocess("digits", preprocess)
    from raylens.data.ray_digits import read_digits

    return read_digits(preprocess, split or "train", seed=seed, **options)


def _is_shards(spec: str) -> bool:
    return ".tar" in spec and not Path(spec).is_dir()


@register_source(
    "webdataset", accepts=_is_shards, describe="WebDataset shards (.tar, a glob, or {00000..00009}.tar)", priority=10
)
def _open_webdataset(
    spec: str, preprocess: Any, *, split: str | None = None, seed: int = 0, **options: Any
) -> ReadResult:
    _refuse_split("WebDataset shards", split)
    _need_preprocess("WebDataset shards", preprocess)
    from raylens.data.ray_webdataset import read_webdataset

    return read_webdataset(spec, preprocess, **options)


_CAPTION_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")


def _is_captions(spec: str) -> bool:
    path = Path(spec).expanduser()
    if path.suffix.lower() in _CAPTION_SUFFIXES:
        return True
    # a folder of parquet files (flat, or hive-partitioned as key=value/ subfolders)
    return path.is_dir() and (
        next(path.glob("*.parquet"), None) is not None or next(path.glob("*=*/**/*.parquet"), None) is not None
    )


@register_source(
    "captions",
    accepts=_is_captions,
    describe="a captions file (.csv/.tsv/.jsonl/.parquet, or a folder of parquet files)",
    priority=20,
)
def _open_captions(
    spec: str, preprocess: Any, *, split: str | None = None, seed: int = 0, **options: Any
) -> ReadResult:
    _need_preprocess("captions files", preprocess)
    from raylens.data.ray_reader import read_captioned_images

    return read_captioned_images(Path(spec).expanduser(), preprocess, split=split, **options)


@register_source(
    "folder",
    accepts=lambda spec: Path(spec).expanduser().is_dir(),
    describe="a folder of class subfolders (root/<class>/<image>)",
    priority=90,
)
def _open_folder(spec: str, preprocess: Any, *, split: str | None = None, seed: int = 0, **options: Any) -> ReadResult:
    _refuse_split("class folders", split)
    _need_preprocess("class folders", preprocess)
    from raylens.data.ray_folders import read_image_folder

    return read_image_folder(Path(spec).expanduser(), preprocess, **options)
