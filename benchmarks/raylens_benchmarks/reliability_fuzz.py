"""``raylens bench reliability-fuzz``: mutation fuzzing of images, DICOM files and tar shards.

Seeds: small valid files of every kind the readers take (Pillow-written PNG, JPEG, GIF, BMP, TIFF,
WebP; pydicom's own test files: CT, MR, RLE, JPEG 2000, a multi-frame RT dose, an RGB secondary
capture; WebDataset shards, plain and gzipped). Each case is one seed mutated by a seeded numpy RNG
(:func:`mutate`): bit flips, truncation, inserted, deleted, duplicated or overwritten byte runs
("interesting" values: 0, 0xFF, 0x7F, 0x80), and format-aware header edits (a PNG's IHDR width and
height with the chunk checksum fixed; DICOM Rows, Columns, NumberOfFrames, BitsAllocated,
PixelSpacing, SliceThickness, SamplesPerPixel, the transfer syntax, rewritten by pydicom; a tar
member's size, type or name with the header checksum fixed).

Each case goes to the plain decode functions the readers run (:func:`run_case`):

* images: :func:`raylens.data.images.decode_image`; documented error: ``BadImage``;
* DICOM: :func:`raylens_domains.medical.dicom_scan.read_header`, then
  :func:`raylens_domains.medical.volume.load_series` on its series; documented: ``DicomError``
  (and its subclasses);
* tar shards: :func:`raylens.data.webdataset.iter_shard` (documented: raises nothing; a bad sample
  or a broken archive is a ``SkippedRow``), then ``decode_image`` on each sample's image.

Outcomes: ``ok`` (decoded), ``reported`` (a documented error or skipped row, with a reason),
``crash`` (any other exception), ``hang`` (past the per-case time limit), ``memory`` (past the
per-case memory limit: ``MemoryError`` under ``RLIMIT_AS``, or the worker killed), ``unreported``
(a tar shard that lost samples without one skipped row saying so). Goal: no crash, hang, memory
or unreported case. The bench runs cases in worker processes with a memory limit (2 GiB of
address space above the worker's start) and a 10 s alarm each; the unit tests run a few hundred
in-process. ``--quick``: 300 cases per kind instead of 10,000.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import tarfile
import time
import traceback
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from raylens.bench import BenchResult, register_benchmark
from raylens_benchmarks.reliability_common import load_average

__all__ = ["KINDS", "seeds", "mutate", "case_bytes", "run_case", "warm", "fuzz", "bench_reliability_fuzz"]

KINDS = ("image", "dicom", "tar")
INTERESTING = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)
DICOM_TEST_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "rtdose.dcm",
    "SC_rgb_small_odd.dcm",
)
"""pydicom's own test files that ship inside the pydicom wheel (no download)."""
CASE_TIMEOUT_S = 10
WORKER_MEMORY_BYTES = 2 * 2**30


# ---- seeds ---------------------------------------------------------------------------------------


def _image_seeds() -> list[tuple[str, bytes]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for fmt, mode, size in (
        ("PNG", "RGB", (23, 17)),
        ("PNG", "L", (16, 16)),
        ("PNG", "RGBA", (9, 30)),
        ("JPEG", "RGB", (32, 24)),
        ("GIF", "P", (20, 20)),
        ("BMP", "RGB", (15, 11)),
        ("TIFF", "RGB", (12, 12)),
        ("WEBP", "RGB", (16, 20)),
    ):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        im = Image.fromarray(arr).convert(mode)
        buf = io.BytesIO()
        im.save(buf, fmt)
        out.append((f"{fmt.lower()}-{mode}", buf.getvalue()))
    return out


def _dicom_seeds() -> list[tuple[str, bytes]]:
    from pydicom.data import get_testdata_file

    out = []
    for name in DICOM_TEST_FILES:
        path = get_testdata_file(name, download=False)
        if path:
            out.append((name, Path(path).read_bytes()))
    return out


def _tar_seeds() -> list[tuple[str, bytes]]:
    from PIL import Image

    rng = np.random.default_rng(1)

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(8 + i, 10, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    members = []
    for i in range(4):
        members.append((f"{i:06d}.png", png(i)))
        members.append((f"{i:06d}.txt", f"a sample number {i}".encode()))
    members.append(("000004.jpg", _image_seeds()[3][1]))
    members.append(("000004.json", b'{"caption": "a json caption"}'))
    out = []
    for name, mode in (("plain", "w"), ("gzip", "w:gz")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode, format=tarfile.USTAR_FORMAT) as tf:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                info.mtime = 0
                tf.addfile(info, io.BytesIO(data))
        out.append((f"shard-{name}", buf.getvalue()))
    return out


def seeds(kind: str) -> list[tuple[str, bytes]]:
    """``[(name, bytes)]``: the valid files the mutations of ``kind`` start from."""
    if kind == "image":
        return _image_seeds()
    if kind == "dicom":
        return _dicom_seeds()
    if kind == "tar":
        return _tar_seeds()
    raise ValueError(f"unknown fuzz kind {kind!r}; one of {KINDS}")


# ---- mutations -----------------------------------------------------------------------------------


def _png_header(data: bytes, rng: np.random.Generator) -> bytes | None:
    if not data.startswith(b"\x89PNG") or len(data) < 33:
        return None
    b = bytearray(data)
    w, h = (int(rng.choice([0, 1, 2**16, 2**24, 2**31 - 1, 2**32 - 1, int(rng.integers(1, 5000))])) for _ in range(2))
    b[16:24] = struct.pack(">II", w, h)
    if rng.random() < 0.5:
        b[24] = int(rng.choice([0, 1, 2, 4, 8, 16, 3, 255]))  # bit depth
    if rng.random() < 0.5:
        b[25] = int(rng.choice([0, 2, 3, 4, 6, 7, 255]))  # colour type
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


_DICOM_EDITS = (
    ("Rows", "US", (0, 1, 65535, 3)),
    ("Columns", "US", (0, 1, 65535, 7)),
    ("NumberOfFrames", "IS", ("0", "-1", "2147483647", "1000000", "abc", "")),
    ("BitsAllocated", "US", (0, 1, 7, 12, 64, 65535)),
    ("BitsStored", "US", (0, 17, 65535)),
    ("SamplesPerPixel", "US", (0, 2, 4, 65535)),
    ("PixelSpacing", "DS", (["0", "0"], ["-1", "1"], ["1e308", "1"], ["nan", "1"], ["1"])),
    ("SliceThickness", "DS", ("0", "-5", "inf", "1e308")),
    ("PixelRepresentation", "US", (2, 65535)),
    ("PhotometricInterpretation", "CS", ("", "PALETTE COLOR", "YBR_FULL", "XYZ")),
    ("ImageOrientationPatient", "DS", (["1", "0", "0", "0", "0", "0"], ["0"] * 6, ["1", "0"])),
    ("ImagePositionPatient", "DS", (["nan", "0", "0"], ["1e308", "0", "0"], ["0"])),
    ("RescaleSlope", "DS", ("0", "nan", "1e308")),
)


def _dicom_header(data: bytes, rng: np.random.Generator) -> bytes | None:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # noqa: BLE001 - a seed pydicom cannot rewrite: byte mutations only
        return None
    for _ in range(int(rng.integers(1, 4))):
        keyword, vr, values = _DICOM_EDITS[int(rng.integers(len(_DICOM_EDITS)))]
        value = values[int(rng.integers(len(values)))]
        if rng.random() < 0.15:
            if keyword in ds:
                delattr(ds, keyword)
            continue
        try:
            ds.add_new(keyword, vr, value)
        except Exception:  # noqa: BLE001 - pydicom refused the value itself
            continue
    if rng.random() < 0.2 and getattr(ds, "file_meta", None) is not None:
        ds.file_meta.TransferSyntaxUID = str(
            rng.choice(["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"])
        )
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
    except Exception:  # noqa: BLE001
        return None
    return buf.getvalue()


def _tar_header(data: bytes, rng: np.random.Generator) -> bytes | None:
    if data[:2] == b"\x1f\x8b":  # a gzipped shard: edit the tar inside, then gzip it again
        import gzip

        try:
            inner = gzip.decompress(data)
        except Exception:  # noqa: BLE001
            return None
        edited = _tar_header(inner, rng)
        return None if edited is None else gzip.compress(edited, mtime=0)
    headers = [i for i in range(0, len(data) - 512, 512) if data[i + 257 : i + 262] == b"ustar"]
    if not headers:
        return None
    b = bytearray(data)
    h = headers[int(rng.integers(len(headers)))]
    field = int(rng.integers(4))
    if field == 0:  # size (octal, 12 bytes)
        size = int(rng.choice([0, 1, 2**33 - 1, 10**10, int(rng.integers(0, 5000))]))
        b[h + 124 : h + 136] = f"{size:011o}".encode()[-11:] + b"\0"
    elif field == 1:  # type flag: directory, link, a long-name header, junk
        b[h + 156] = ord(rng.choice(list("0125LKxg")))
    elif field == 2:  # the name: another sample's key, an extension nobody asked for, a path out
        name = str(rng.choice(["000000.png", "000001.txt", "../../etc/passwd", "x.bin", "", "a/b/c.png"]))
        b[h : h + 100] = name.encode().ljust(100, b"\0")
    else:  # the mode/uid fields with junk (the parser must not care)
        b[h + 100 : h + 108] = bytes(rng.integers(0, 256, size=8, dtype=np.uint8))
    if rng.random() < 0.85:  # mostly a valid checksum, so the parser takes the edited header
        b[h + 148 : h + 156] = b" " * 8
        b[h + 148 : h + 156] = f"{sum(b[h : h + 512]):06o}\0 ".encode()
    return bytes(b)


def mutate(kind: str, data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation of ``data`` (a valid file of ``kind``): ``(mutated bytes, what was done)``."""
    op = str(rng.choice(["flip", "truncate", "insert", "delete", "overwrite", "duplicate", "header", "stack"]))
    if op == "header":
        edit = {"image": _png_header, "dicom": _dicom_header, "tar": _tar_header}[kind](data, rng)
        if edit is not None:
            return edit, "header"
        op = "flip"
    if op == "stack":  # several byte mutations at once
        out = data
        for _ in range(int(rng.integers(2, 6))):
            out, _ = mutate(kind, out, rng) if rng.random() < 0.2 else _bytes_op(out, rng)
        return out, "stack"
    return _bytes_op(data, rng, op)


def _bytes_op(data: bytes, rng: np.random.Generator, op: str | None = None) -> tuple[bytes, str]:
    b = bytearray(data)
    n = max(1, len(b))
    op = op or str(rng.choice(["flip", "truncate", "insert", "delete", "overwrite", "duplicate"]))
    # positions favour the header (where the structure is): half of them in the first 512 bytes
    pos = int(rng.integers(0, min(n, 512))) if rng.random() < 0.5 else int(rng.integers(0, n))
    if op == "flip" and b:
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(b))) if rng.random() < 0.5 else min(len(b) - 1, pos)
            b[i] ^= 1 << int(rng.integers(8))
    elif op == "truncate":
        b = b[: int(rng.integers(0, n))]
    elif op == "insert":
        k = int(rng.choice([1, 2, 4, 16, 256, 4096]))
        b[pos:pos] = rng.integers(0, 256, size=k, dtype=np.uint8).tobytes()
    elif op == "delete":
        del b[pos : pos + int(rng.choice([1, 2, 4, 16, 256]))]
    elif op == "overwrite":
        k = int(rng.choice([1, 2, 4, 8]))
        b[pos : pos + k] = bytes([int(rng.choice(INTERESTING))] * k)
    elif op == "duplicate":
        k = int(rng.choice([4, 64, 512]))
        b[pos:pos] = b[pos : pos + k]
    return bytes(b), op


def case_bytes(kind: str, seed_list: list[tuple[str, bytes]], case: int, base_seed: int = 0) -> tuple[bytes, str]:
    """Case number ``case`` of ``kind``: the same bytes for the same arguments, in any process."""
    rng = np.random.default_rng([base_seed, KINDS.index(kind), case])
    name, data = seed_list[case % len(seed_list)]
    mutated, op = mutate(kind, data, rng)
    return mutated, f"{name}/{op}"


# ---- running one case ----------------------------------------------------------------------------


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Hang()


def _image_case(data: bytes) -> tuple[str, str]:
    from raylens.data.images import BadImage, decode_image

    try:
        img = decode_image(data)
    except BadImage as e:
        return "reported", str(e)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        return "crash", f"decode_image returned shape {img.shape} {img.dtype}"
    return "ok", ""


def _dicom_case(data: bytes) -> tuple[str, str]:
    from raylens_domains.medical.deid import Pseudonymizer
    from raylens_domains.medical.dicom_scan import group_series, read_header
    from raylens_domains.medical.errors import DicomError
    from raylens_domains.medical.volume import load_series

    def opener(_name: str):
        return io.BytesIO(data)

    try:
        headers = read_header("case.dcm", Pseudonymizer("fuzz-key-0123456789abcdef"), opener=opener)
        for series in group_series(headers).values():
            vol = load_series(series, opener=opener)
            if not np.isfinite(vol.volume).all() and vol.volume.size:
                pass  # NaN/inf pixels from a NaN slope are data, not a crash
    except DicomError as e:
        return "reported", str(e)
    return "ok", ""


def _tar_case(data: bytes, n_samples: int | None) -> tuple[str, str]:
    import tempfile

    from raylens.data.images import BadImage, decode_image
    from raylens.data.report import SkippedRow
    from raylens.data.webdataset import iter_shard

    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(data)
        f.flush()
        items = list(iter_shard(f.name))
    skipped = [i for i in items if isinstance(i, SkippedRow)]
    samples = [i for i in items if not isinstance(i, SkippedRow)]
    bad_images = []
    for s in samples:
        try:
            decode_image(s.image_bytes)
        except BadImage as e:
            bad_images.append(f"{s.path}: {e}")
    if any(not s.reason for s in skipped):
        return "unreported", "a skipped row without a reason"
    if n_samples is not None and len(samples) < n_samples and not skipped:
        return "unreported", f"{len(samples)} of {n_samples} samples came out and no row was skipped"
    reasons = [s.reason for s in skipped] + bad_images
    return ("reported" if reasons else "ok"), "; ".join(reasons[:3])


def run_case(kind: str, data: bytes, *, timeout_s: float = CASE_TIMEOUT_S, n_samples: int | None = None) -> dict:
    """Run one case in this process: ``{"outcome", "detail", "seconds"}`` (see the module docstring).
    ``n_samples``: for a tar shard, how many samples its seed holds."""
    old = signal.signal(signal.SIGALRM, _alarm) if timeout_s else None
    if timeout_s:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    t = time.perf_counter()
    try:
        if kind == "image":
            outcome, detail = _image_case(data)
        elif kind == "dicom":
            outcome, detail = _dicom_case(data)
        elif kind == "tar":
            outcome, detail = _tar_case(data, n_samples)
        else:
            raise ValueError(f"unknown fuzz kind {kind!r}; one of {KINDS}")
    except _Hang:
        outcome, detail = "hang", f"over {timeout_s} s"
    except MemoryError:
        outcome, detail = "memory", "MemoryError"
    except Exception as e:  # noqa: BLE001 - anything undocumented is the finding
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{Path(fr.filename).name}:{fr.lineno}" for fr in reversed(tb) if "raylens" in fr.filename), "")
        outcome, detail = "crash", f"{type(e).__name__}: {str(e)[:200]} (last raylens frame {where})"
    finally:
        if timeout_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return {"outcome": outcome, "detail": detail, "seconds": round(time.perf_counter() - t, 4)}


# ---- many cases ----------------------------------------------------------------------------------

_WORKER_SEEDS: dict[str, list[tuple[str, bytes]]] = {}
_WARM: dict[str, list[dict]] = {}


def _worker_init(memory_bytes: int | None) -> None:
    import resource

    if memory_bytes:
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (vm + memory_bytes, resource.RLIM_INFINITY))
    for kind in KINDS:
        _WORKER_SEEDS[kind] = seeds(kind)


def _tar_samples(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        return len({m.name.split(".", 1)[0] for m in tf if m.isfile()})


def warm(kind: str, seed_list: list[tuple[str, bytes]] | None = None) -> list[dict]:
    """Run every seed unmutated, without a time limit: the lazy imports happen here, not inside the
    first case's time limit; every seed should come out ``ok``."""
    seed_list = seed_list or seeds(kind)
    return [
        {"seed": name, **run_case(kind, data, timeout_s=0, n_samples=_tar_samples(data) if kind == "tar" else None)}
        for name, data in seed_list
    ]


def _run_chunk(kind: str, cases: list[int], base_seed: int) -> list[dict]:
    import resource

    out = []
    seed_list = _WORKER_SEEDS.get(kind) or seeds(kind)
    if kind not in _WARM:
        _WARM[kind] = warm(kind, seed_list)
    for case in cases:
        data, what = case_bytes(kind, seed_list, case, base_seed)
        n = _tar_samples(seed_list[case % len(seed_list)][1]) if kind == "tar" else None
        r = run_case(kind, data, n_samples=n)
        r.update(case=case, mutation=what, size=len(data))
        r["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out.append(r)
    return out


def fuzz(
    kind: str,
    n_cases: int,
    *,
    base_seed: int = 0,
    workers: int = 0,
    memory_bytes: int | None = WORKER_MEMORY_BYTES,
    chunk: int = 50,
) -> dict[str, Any]:
    """Run ``n_cases`` cases of ``kind``: in this process (``workers=0``) or in worker processes with a
    memory limit. Returns outcome counts, the findings (every case that is not ok or reported), and
    examples of the reasons given."""
    results: list[dict] = []
    t = time.perf_counter()
    if workers <= 0:
        results = _run_chunk(kind, list(range(n_cases)), base_seed)
    else:
        chunks = [list(range(i, min(n_cases, i + chunk))) for i in range(0, n_cases, chunk)]
        pending = list(chunks)
        while pending:
            with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(memory_bytes,)) as pool:
                futures = {pool.submit(_run_chunk, kind, c, base_seed): c for c in pending}
                pending = []
                for fut, c in futures.items():
                    try:
                        results.extend(fut.result())
                    except BrokenProcessPool:
                        if len(c) == 1:  # the worker died on this one case: killed for memory, or a segfault
                            results.append({"case": c[0], "outcome": "memory", "detail": "worker process died"})
                        else:
                            pending.extend([x] for x in c)
    outcomes = Counter(r["outcome"] for r in results)
    findings = [r for r in results if r["outcome"] not in ("ok", "reported")]
    reasons = Counter(r["detail"].split(" (")[0][:80] for r in results if r["outcome"] == "reported")
    return {
        "kind": kind,
        "cases": len(results),
        "seeds": [name for name, _ in seeds(kind)],
        "outcomes": dict(outcomes),
        "findings": findings[:50],
        "n_findings": len(findings),
        "top_reasons": dict(reasons.most_common(12)),
        "slowest_case_s": max((r.get("seconds", 0) for r in results), default=0),
        "max_worker_rss_mib": max((r.get("max_rss_mib", 0) for r in results), default=0),
        "seconds": round(time.perf_counter() - t, 1),
    }


@register_benchmark(
    "reliability-fuzz",
    suite="reliability",
    doc="Mutation fuzzing of images, DICOM files and tar shards through the plain decoders: crashes, hangs, "
    "memory blow-ups and unreported bad cases.",
)
def bench_reliability_fuzz(quick: bool, workdir: Path) -> BenchResult:  # noqa: ARG001
    load_before = load_average()
    n = 300 if quick else 10_000
    workers = max(1, min(2, os.cpu_count() or 1))
    runs = {kind: fuzz(kind, n, workers=workers) for kind in KINDS}
    total = sum(r["cases"] for r in runs.values())
    findings = sum(r["n_findings"] for r in runs.values())
    return BenchResult(
        name="reliability-fuzz",
        metric="share_of_cases_decoded_or_reported (no crash, hang, memory blow-up or silent loss)",
        value=round(1 - findings / total, 6) if total else float("nan"),
        baseline_name="goal: every case",
        baseline_value=1.0,
        params={
            "cases_per_kind": n,
            "kinds": list(KINDS),
            "workers": workers,
            "case_timeout_s": CASE_TIMEOUT_S,
            "worker_memory_limit_gib": WORKER_MEMORY_BYTES / 2**30,
            "rng": "numpy default_rng([0, kind, case])",
            "quick": quick,
        },
        extra={
            "goal": {"crash": 0, "hang": 0, "memory": 0, "unreported": 0},
            "total_cases": total,
            "findings": findings,
            "runs": runs,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
    )
