"""Schemathesis hooks for the raylens services: strategies for the two image formats the search
service's OpenAPI document names (``raylens-image-base64`` and ``raylens-image``), so generated "valid"
requests carry real, small images; and for the medical service's ``application/zip`` upload, so they
carry real zip archives of DICOM series, with hostile archives as negative cases (see below). Load
with ``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks`` (from the repository root).
"""

from __future__ import annotations

import base64
import functools
import io
import sys
import tempfile
import zipfile
from pathlib import Path

import schemathesis
from hypothesis import strategies as st

__all__ = ["image_bytes", "dicom_zip", "hostile_upload", "hostile_zip", "dicom_pool", "MEDICAL_LIMITS"]


@st.composite
def image_bytes(draw) -> bytes:
    """A small PNG, JPEG, WebP, GIF or BMP file of random size and colour."""
    from PIL import Image

    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP"]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    colour = tuple(draw(st.integers(0, 255)) for _ in range(3))
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, fmt)
    return buf.getvalue()


schemathesis.openapi.format("raylens-image", image_bytes())
schemathesis.openapi.format("raylens-image-base64", image_bytes().map(lambda b: base64.b64encode(b).decode()))


# ------------------------------------------------------------------------------------------------
# the medical service: zip archives of DICOM series
#
# Its body schema can only say "binary": that the bytes must be a zip of DICOM CT/MR series is beyond
# JSON Schema. So (as for the images above) the generator knows it: positive cases carry real uploads
# the service must accept (200); and about half the fuzzed upload cases are turned (``flatmap_case``)
# into negative cases carrying hostile uploads it must refuse with a documented 4xx: truncated archives,
# corrupt members, cut DICOM files, the wrong content, nothing usable, a bare DICOM file, unsafe member
# paths, random bytes. Every draw is reproducible (seeded phantom, fixed UIDs and zip dates), so
# ``--generation-deterministic`` runs send the same requests every time.

MEDICAL_LIMITS = dict(max_body_bytes=1_000_000, max_pixels=400_000, max_batch=8, max_files=128)
"""The medical service's limits (``ServeLimits`` arguments) that every good upload below fits: at most
five studies, 120,000 voxels, 45 files and 300 kB. Run the service under test with them."""

PHANTOM = dict(
    n_patients=2,
    seed=11,
    ct_size=16,
    ct_slices=10,
    ct_pixel_mm=6.0,
    ct_slice_mm=8.0,
    mr_size=16,
    mr_slices=9,
    mr_pixel_mm=6.0,
    mr_slice_mm=9.0,
    rle_fraction=0.5,
    multiframe_fraction=0.5,
    extras=True,
)
"""Two small phantom patients (CT + MR each; some series RLE-compressed, some MR multi-frame), and the
extras: a text file, a CT series with a missing slice, a mixed series."""

PYDICOM_STACKS = {"CT_small.dcm": 4, "MR_small.dcm": 3, "MR_small_RLE.dcm": 3}
"""pydicom's bundled single slices (no download), stacked into series of this many slices."""
PYDICOM_SINGLES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_truncated.dcm",
    "badVR.dcm",
    "reportsi.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "SC_rgb_rle.dcm",
)
"""pydicom's bundled files as they are, each something the service skips: a lone CT or MR slice (too
few for a series; the two MR slices share a series and a position), a truncated file, a bad VR, a
structured report, an RT dose and an RT plan, an RGB secondary capture."""


def _pydicom_stack(name: str, n: int) -> list[tuple[str, bytes]]:
    """``n`` copies of one of pydicom's test slices, one slice thickness apart: one new series."""
    import copy

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file(name))
    study, series = (generate_uid(entropy_srcs=[name, what]) for what in ("study", "series"))
    x, y, z = (float(v) for v in base.ImagePositionPatient)
    out = []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name, str(i)])
        ds.ImagePositionPatient = [x, y, z + i * float(base.SliceThickness)]
        ds.InstanceNumber = i + 1
        buf = io.BytesIO()
        ds.save_as(buf)
        out.append((f"{Path(name).stem}_{i}.dcm", buf.getvalue()))
    return out


def _phantom_module():
    """:mod:`raylens_domains.medical.phantom` (numpy and pydicom only), loaded from its file without the
    medical package's ``__init__``, which imports torch and the models: several seconds of CPU that the
    schemathesis process does not need. Imported the usual way if it ever needs its package."""
    import importlib.util

    import raylens_domains

    name = "_raylens_schemathesis_phantom"
    path = Path(raylens_domains.__file__).parent / "medical" / "phantom.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except ImportError:
        del sys.modules[name]
        from raylens_domains.medical import phantom as module
    return module


@functools.cache
def dicom_pool() -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """``{"series": {name: files}, "extras": {name: files}}`` with ``files`` a list of ``(file name,
    bytes)``. Series are usable on their own: the phantom's (``p0/CT``, ``p0/MR``, ...) and pydicom's
    stacked slices (``stack/CT_small.dcm``, ...); extras are what the service skips beside them (the
    phantom's text file, series with a gap and mixed series; pydicom's :data:`PYDICOM_SINGLES`). Built
    once per process (the phantom is written to a temporary folder, read and deleted)."""
    from pydicom.data import get_testdata_file

    phantom_module = _phantom_module()
    series: dict[str, list[tuple[str, bytes]]] = {}
    extras: dict[str, list[tuple[str, bytes]]] = {}

    def files(path: Path) -> list[tuple[str, bytes]]:
        return (
            [(f.name, f.read_bytes()) for f in sorted(path.iterdir())]
            if path.is_dir()
            else [(path.name, path.read_bytes())]
        )

    with tempfile.TemporaryDirectory(prefix="raylens-st-dicom-") as tmp:
        phantom = phantom_module.generate_phantoms(Path(tmp) / "phantom", phantom_module.PhantomConfig(**PHANTOM))
        for p in phantom.patients:
            for modality, folder in sorted(p.folders.items()):
                series[f"p{p.index}/{modality}"] = files(Path(folder))
        for kind, path in sorted(phantom.extra_paths.items()):
            extras[f"phantom/{kind}"] = files(Path(path))
    for name, n in PYDICOM_STACKS.items():
        series[f"stack/{name}"] = _pydicom_stack(name, n)
    for name in PYDICOM_SINGLES:
        extras[f"pydicom/{name}"] = files(Path(get_testdata_file(name)))
    return {"series": series, "extras": extras}


def _zip(entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of ``entries`` (the same bytes every time: members carry a fixed date)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return buf.getvalue()


@st.composite
def _entries(draw) -> list[tuple[str, bytes]]:
    """The members of one good upload: one to three usable series (a patient's CT and MR, two
    patients, pydicom's stacks), perhaps with things to skip beside them, each series in its own
    folder or all flat, in a drawn order."""
    pool = dicom_pool()
    series = draw(st.lists(st.sampled_from(sorted(pool["series"])), min_size=1, max_size=3, unique=True))
    extras = draw(st.lists(st.sampled_from(sorted(pool["extras"])), max_size=2, unique=True))
    flat = draw(st.booleans())
    entries: dict[str, bytes] = {}
    for i, files in enumerate([pool["series"][k] for k in series] + [pool["extras"][k] for k in extras]):
        for name, data in files:
            entries[name if flat and name not in entries else f"s{i}/{name}"] = data
    return list(draw(st.permutations(sorted(entries.items()))))


@st.composite
def dicom_zip(draw) -> bytes:
    """A zip archive of real DICOM series (stored or deflated), as a client uploads them: the service
    answers it with predictions (200)."""
    return _zip(draw(_entries()), draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))


HOSTILE_KINDS = (
    "truncated",
    "corrupt_member",
    "corrupt_dicom",
    "wrong_content",
    "only_extras",
    "empty_zip",
    "bare_dicom",
    "unsafe_path",
    "random_bytes",
)


@st.composite
def hostile_upload(draw, kind: str | None = None) -> tuple[str, bytes]:
    """``(kind, body)``, ``kind`` one of :data:`HOSTILE_KINDS` (drawn unless given): an upload the
    service must refuse with a documented 4xx (400, 413, 422), never a 500 nor a 200."""
    pool = dicom_pool()
    kind = kind or draw(st.sampled_from(HOSTILE_KINDS))
    if kind == "truncated":  # cut anywhere: at least the end of the central directory is lost
        data = draw(dicom_zip())
        return kind, data[: draw(st.integers(0, len(data) - 1))]
    if kind == "corrupt_member":  # bytes of one member's stored data changed: a CRC or deflate error
        data = bytearray(draw(dicom_zip()))
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
            info = draw(st.sampled_from([i for i in zf.infolist() if i.compress_size > 0]))
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        for at in draw(st.lists(st.integers(0, info.compress_size - 1), min_size=1, max_size=4, unique=True)):
            data[start + at] ^= draw(st.integers(1, 255))
        return kind, bytes(data)
    if kind == "corrupt_dicom":  # a sound archive whose every DICOM file is cut short or overwritten
        tail = draw(st.sampled_from([b"", b"\x00" * 64, b"\xff" * 64]))
        return kind, _zip([(n, b[: draw(st.integers(0, 200))] + tail) for n, b in draw(_entries())])
    if kind == "wrong_content":  # an archive of other things
        from PIL import Image

        png = io.BytesIO()
        Image.new("L", (8, 8)).save(png, "PNG")
        members = [
            ("notes.txt", b"hello"),
            ("scan.png", png.getvalue()),
            ("empty.dcm", b""),
            ("fake.dcm", b"\x00" * 128 + b"DICM" + b"\x00" * 16),
            ("inner.zip", _zip([("a.txt", b"a")])),
        ]
        return kind, _zip(draw(st.lists(st.sampled_from(members), min_size=1, max_size=4, unique=True)))
    if kind == "only_extras":  # DICOM, but nothing usable: lone slices, an RT plan, a gap, a mixed series
        keys = draw(st.lists(st.sampled_from(sorted(pool["extras"])), min_size=1, max_size=3, unique=True))
        return kind, _zip([(f"s{i}/{n}", b) for i, k in enumerate(keys) for n, b in pool["extras"][k]])
    if kind == "empty_zip":
        return kind, _zip([])
    if kind == "bare_dicom":  # a DICOM file sent as it is, not zipped
        return kind, draw(st.sampled_from([f[0][1] for f in (*pool["series"].values(), *pool["extras"].values())]))
    if kind == "unsafe_path":  # a good upload with one member named outside the archive
        name = draw(st.sampled_from(["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm", "C:/evil.dcm", "a\\b.dcm"]))
        return kind, _zip([(name, pool["series"]["p0/CT"][0][1]), *draw(_entries())])
    return kind, draw(st.binary(min_size=0, max_size=256))


def hostile_zip() -> st.SearchStrategy[bytes]:
    """The body of :func:`hostile_upload`."""
    return hostile_upload().map(lambda kind_body: kind_body[1])


ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
HOSTILE_SHARE = 2
"""One positive zip-upload case in this many becomes a hostile (negative) one."""

schemathesis.openapi.media_type(ZIP_TYPES[0], dicom_zip(), aliases=ZIP_TYPES[1:])


def _as_hostile(case, kind: str, body: bytes):
    """``case`` with a hostile body, marked negative (so the negative checks judge it, not "positive
    data acceptance"), and described by what was done to the upload."""
    from schemathesis import GenerationMode
    from schemathesis.core.parameters import ParameterLocation
    from schemathesis.generation.meta import ComponentInfo, FuzzingPhaseData

    case.body = body
    meta = case.meta  # reading it revalidates the changed body before we set the mode
    meta.components[ParameterLocation.BODY] = ComponentInfo(mode=GenerationMode.NEGATIVE)
    meta.generation.mode = GenerationMode.NEGATIVE
    if isinstance(meta.phase.data, FuzzingPhaseData):
        meta.phase.data.description = f"Hostile zip-of-DICOM upload: {kind.replace('_', ' ')}"
        meta.phase.data.parameter_location = ParameterLocation.BODY
    return case


@schemathesis.hook
def flatmap_case(context, case):
    """Fuzzing a zip upload: about one positive case in :data:`HOSTILE_SHARE` gets a hostile body instead
    of its real DICOM series and goes out as a negative case. (Schemathesis cannot negate a body that a
    custom media-type strategy draws, so no negative case of its own reaches this operation.)"""
    meta = case.meta
    if case.media_type not in ZIP_TYPES or meta is None or not meta.generation.mode.is_positive:
        return st.just(case)
    return st.integers(0, HOSTILE_SHARE - 1).flatmap(
        lambda n: hostile_upload().map(lambda kind_body: _as_hostile(case, *kind_body)) if n == 0 else st.just(case)
    )
