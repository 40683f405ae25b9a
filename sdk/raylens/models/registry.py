"""The one model front door: every kind (CLIP, classifiers, fusion nets, NeRF, diffusion) by name.

Two ways a name becomes a model:

* :func:`register_model` (the timm-style decorator) on a small factory function: ours and the
  domain packs' models (packs register from their ``raylens.plugins`` entry-point module);
* a :class:`ModelFamily`: a whole library's architectures, listed and built dynamically (every
  open_clip architecture is a ``clip`` model; every timm architecture, as ``timm/<name>``, a
  ``classifier``).

:func:`create_model` attaches a :class:`ModelRecord` (kind, registry name, resolved arguments) to
what it returns, so :func:`raylens.models.save_model` can save any model without being told its kind.

>>> from raylens.models import create_model, list_models, model_kind
>>> model_kind("clip-tiny"), "clip-tiny" in list_models("clip-*", kind="clip")
('clip', True)
>>> model_record(create_model("timm/test_resnet", num_classes=3))
ModelRecord(kind='classifier', arch='timm/test_resnet', model_config={'num_classes': 3})
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from raylens.models.checkpoint import MODEL_KINDS
from raylens.models.layout import channels_last
from raylens.registry import Registry, unknown_name_error

__all__ = [
    "MODELS",
    "MODEL_KINDS",
    "RECORD_ATTR",
    "ModelRecord",
    "ModelFamily",
    "ModelInfo",
    "register_model",
    "register_family",
    "create_model",
    "list_models",
    "model_kind",
    "model_info",
    "model_infos",
    "model_record",
    "attach_record",
    "example_input",
    "unwrap_model",
]

MODELS = Registry("model")
"""The registered models (factories; metadata ``kind`` plus optional ``example_input``, ``save``, ``load``)."""
RECORD_ATTR = "raylens_record"
"""The attribute :func:`create_model` sets on a model (a class may define it as a property instead)."""


@dataclass(frozen=True)
class ModelRecord:
    """What a model is, enough to save it and to rebuild it: ``create_model(arch, **model_config)``."""

    kind: str
    """One of :data:`MODEL_KINDS`."""
    arch: str
    """The registry (or family) name."""
    model_config: dict[str, Any] = field(default_factory=dict)
    """The resolved keyword arguments of the factory (``pretrained`` excluded: it is a weight source)."""

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch must be a registry name, got {self.arch!r}")


@dataclass(frozen=True)
class ModelFamily:
    """A library's architectures served dynamically under one kind (open_clip, timm)."""

    name: str
    """Short name of the family, shown by ``raylens models`` (``open_clip``, ``timm``)."""
    kind: str
    """The kind of every model in the family."""
    names: Callable[[], Iterable[str]]
    """Lists the family's model names (as ``create_model`` takes them)."""
    create: Callable[..., Any]
    """``create(name, **overrides)`` builds one."""
    doc: str = ""
    """One line describing every member (``raylens models`` shows it)."""
    example_input: Callable[[Any], Any] | None = None
    """``example_input(model)``: a tiny input such that ``model(x)`` runs (tests use it)."""

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class ModelInfo:
    """One row of the model list: name, kind, a one-line description, where it comes from."""

    name: str
    kind: str
    doc: str
    source: str
    """``"registered"`` or the family's name (``open_clip``, ``timm``)."""


_FAMILIES: dict[str, ModelFamily] = {}
_plugins_loaded = False


def register_model(name: str | None = None, *, kind: str, doc: str | None = None, **meta: Any):
    """Decorator registering a model factory under ``name`` as a model of ``kind``.

    Args:
        name: the registry name (default: the function's name).
        kind: one of :data:`MODEL_KINDS`.
        doc: one line for ``raylens models`` (default: the docstring's first line).
        **meta: optional hooks: ``example_input=fn(model)`` (a tiny input for ``model(x)``, when the
            model has no ``example_input()`` method), ``save=fn(model, directory) -> weights file name``
            and ``load=fn(checkpoint, device) -> model`` for a kind with a native format,
            ``test_overrides={...}`` (arguments that make it tiny for the registry-wide test).

    >>> import torch
    >>> @register_model("toy-linear", kind="classifier", doc="A 4->2 linear layer.")
    ... def toy_linear(num_classes: int = 2):
    ...     return torch.nn.Linear(4, num_classes)
    >>> model_record(create_model("toy-linear"))
    ModelRecord(kind='classifier', arch='toy-linear', model_config={'num_classes': 2})
    >>> _ = MODELS.unregister("toy-linear")
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    return MODELS.register(name, doc=doc, kind=kind, **meta)


def register_family(family: ModelFamily) -> ModelFamily:
    """Serve a library's architectures (a :class:`ModelFamily`) through the front door."""
    _FAMILIES[family.name] = family
    return family


def _ensure_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True  # first: a plugin that looks a model up on import must not recurse
        from raylens.plugins import load_plugins

        load_plugins()


def _families() -> list[ModelFamily]:
    """The families in kind order (clip before classifier ...), then by name."""
    return sorted(_FAMILIES.values(), key=lambda f: (MODEL_KINDS.index(f.kind), f.name))


def _family_of(name: str) -> ModelFamily | None:
    for fam in _families():
        if name in set(fam.names()):
            return fam
    return None


def model_infos(pattern: str = "*", kind: str | None = None) -> list[ModelInfo]:
    """:class:`ModelInfo` of every model :func:`list_models` lists, in the same order."""
    if kind is not None and kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS} or None, got {kind!r}")
    _ensure_plugins()
    ours = MODELS.names(pattern) if kind is None else MODELS.names(pattern, kind=kind)
    out = [ModelInfo(n, MODELS.meta(n)["kind"], MODELS.describe(n), "registered") for n in ours]
    seen = set(ours)
    for fam in _families():
        if kind is not None and fam.kind != kind:
            continue
        for n in fam.names():
            if n not in seen and fnmatch.fnmatch(n, pattern):
                out.append(ModelInfo(n, fam.kind, fam.doc, fam.name))
                seen.add(n)
    return out


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered model names (sorted), then every family's, matching the glob ``pattern`` and ``kind``.

    >>> list_models("mid*", kind="clip")
    []
    """
    return [i.name for i in model_infos(pattern, kind)]


def _unknown(name: str) -> KeyError:
    return unknown_name_error("model", name, list_models(), "See raylens.models.list_models() for all names.")


def model_info(name: str) -> ModelInfo:
    """Kind, description and source of a model name; ``KeyError`` with close matches if unknown."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"model name must be a non-empty string, got {name!r}")
    _ensure_plugins()
    if name in MODELS:
        return ModelInfo(name, MODELS.meta(name)["kind"], MODELS.describe(name), "registered")
    fam = _family_of(name)
    if fam is None:
        raise _unknown(name)
    return ModelInfo(name, fam.kind, fam.doc, fam.name)


def model_kind(name: str) -> str:
    """The kind of a model name (``clip``, ``classifier``, ``fusion``, ``nerf``, ``diffusion``)."""
    return model_info(name).kind


def _resolved_config(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The factory's arguments with defaults applied (``**kwargs`` flattened, ``pretrained`` left out)."""
    try:
        sig = inspect.signature(factory)
        bound = sig.bind(**kwargs)
    except (TypeError, ValueError):
        return dict(kwargs)
    bound.apply_defaults()
    cfg: dict[str, Any] = {}
    for pname, value in bound.arguments.items():
        p = sig.parameters[pname]
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            cfg.update(value)
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            cfg[pname] = value
    cfg.pop("pretrained", None)
    return cfg


def unwrap_model(model: Any) -> Any:
    """The model inside a DDP / ``torch.compile`` wrapper (the model itself otherwise)."""
    for _ in range(4):
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ == "DistributedDataParallel":
            inner = model.module
        if inner is None:
            return model
        model = inner
    return model


def attach_record(model: Any, record: ModelRecord) -> Any:
    """Attach ``record`` to ``model`` (for a model built outside :func:`create_model`); returns ``model``."""
    try:
        setattr(unwrap_model(model), RECORD_ATTR, record)
    except AttributeError as e:
        raise TypeError(f"cannot attach a model record to a {type(model).__name__} ({e})") from e
    return model


def model_record(model: Any) -> ModelRecord:
    """The :class:`ModelRecord` of a model built by :func:`create_model` or :func:`raylens.models.load_model`."""
    rec = getattr(unwrap_model(model), RECORD_ATTR, None)
    if not isinstance(rec, ModelRecord):
        raise TypeError(
            f"{type(model).__name__} carries no raylens model record: build it with raylens.models.create_model(name), "
            "or attach one with raylens.models.attach_record(model, ModelRecord(kind, arch, model_config))"
        )
    return rec


def create_model(name: str, **overrides: Any) -> Any:
    """Build a model of any kind by name; ``overrides`` go to its factory (``None`` values are dropped).

    A CLIP model also takes ``pretrained``: a raylens checkpoint dir, a weights file or an open_clip tag.
    To load a saved checkpoint of any kind, use :func:`raylens.models.load_model`.

    Raises:
        KeyError: unknown name (the message lists the close matches across all kinds).
    """
    info = model_info(name)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if info.source == "registered":
        factory = MODELS.get(name)
        model = factory(**kwargs)
        config = _resolved_config(factory, kwargs)
    else:
        model = _FAMILIES[info.source].create(name, **kwargs)
        config = {k: v for k, v in kwargs.items() if k != "pretrained"}
    channels_last(model if hasattr(model, "modules") else getattr(model, "model", None))  # see raylens.models.layout
    rec = getattr(model, RECORD_ATTR, None)
    if rec is None:
        attach_record(model, ModelRecord(info.kind, name, config))
    elif not isinstance(rec, ModelRecord) or rec.kind != info.kind:
        raise TypeError(f"model {name!r} ({info.kind}) came back with a record of another kind: {rec!r}")
    return model


def _entry_meta(model: Any) -> tuple[dict[str, Any], ModelFamily | None]:
    rec = model_record(model)
    if rec.arch in MODELS:
        return MODELS.meta(rec.arch), None
    return {}, _family_of(rec.arch)


def example_input(model: Any) -> Any:
    """A tiny input ``x`` such that ``model(x)`` runs a forward pass (the model's, or its registry entry's).

    Raises:
        TypeError: the model offers none; give it an ``example_input()`` method or register it with
            ``example_input=fn``.
    """
    own = getattr(unwrap_model(model), "example_input", None)
    if callable(own):
        return own()
    meta, fam = _entry_meta(model)
    fn = meta.get("example_input") or (fam.example_input if fam else None)
    if fn is None:
        raise TypeError(
            f"model {model_record(model).arch!r} offers no example input: give it an example_input() method "
            "or register it with register_model(..., example_input=fn)"
        )
    return fn(model)
