"""``raylens bench reliability-ingest``: a 10k-file ingest with 1% corrupt files loses no valid row and
lists every bad file.

The corpus (:func:`make_corpus`, seeded): 10,000 small PNGs (24-40 px, random content) in 10 class
folders, of which 1% are broken, an equal share of each kind: ``truncated`` (cut at a random point
inside the image data), ``random_bytes`` (noise under a ``.png`` name), ``zero_length``,
``header_only`` (the PNG signature and IHDR, no data), ``bad_crc`` (one byte of the image data
flipped: zlib or the chunk checksum refuses it) and ``wrong_extension`` (a text file named ``.jpg``).
Both Ray readers run over it: the class-folder reader (:func:`raylens.data.ray_folders.read_image_folder`)
and the captions reader (:func:`raylens.data.ray_reader.read_captioned_images`, a CSV naming every
file). Figures for each: valid rows lost (goal 0: every good file comes out as a row, by path),
bad files not listed in the report (goal 0), rows that came out of a bad file (goal 0), and the
reasons. The baseline: a plain loop over the same files (``decode_image`` + the same preprocess,
any exception a skip), in this process. ``--quick``: 1,000 files.
"""

from __future__ import annotations

import csv
import io
import struct
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from raylens.bench import BenchResult, register_benchmark
from raylens_benchmarks.reliability_common import load_average

__all__ = ["BAD_KINDS", "make_corpus", "check_ingest", "bench_reliability_ingest"]

BAD_KINDS = ("truncated", "random_bytes", "zero_length", "header_only", "bad_crc", "wrong_extension")
CLASSES = 10


def _png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    h, w = (int(v) for v in rng.integers(24, 41, size=2))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _chunks(png: bytes) -> list[tuple[int, bytes, int]]:
    """``(offset, type, length)`` of each chunk of a PNG."""
    out, pos = [], 8
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        out.append((pos, png[pos + 4 : pos + 8], length))
        pos += 12 + length
    return out


def _broken(kind: str, good: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A broken file of ``kind`` made from a good PNG, and its file extension."""
    idat = next(c for c in _chunks(good) if c[1] == b"IDAT")
    data_start, data_len = idat[0] + 8, idat[2]
    if kind == "truncated":
        return good[: data_start + int(rng.integers(1, max(2, data_len - 1)))], ".png"
    if kind == "random_bytes":
        return rng.integers(0, 256, size=int(rng.integers(16, 4096)), dtype=np.uint8).tobytes(), ".png"
    if kind == "zero_length":
        return b"", ".png"
    if kind == "header_only":
        return good[: idat[0]], ".png"
    if kind == "bad_crc":
        b = bytearray(good)
        i = data_start + int(rng.integers(0, data_len))
        b[i] ^= 0xFF
        crc = zlib.crc32(bytes(b[idat[0] + 4 : data_start + data_len])) & 0xFFFFFFFF
        if rng.random() < 0.5:  # half keep a stale checksum, half a fixed one (zlib alone must refuse them)
            b[data_start + data_len : data_start + data_len + 4] = struct.pack(">I", crc)
        return bytes(b), ".png"
    if kind == "wrong_extension":
        return b"id,caption\n1,not an image at all\n", ".jpg"
    raise ValueError(f"unknown broken-file kind {kind!r}; one of {BAD_KINDS}")


def make_corpus(root: Path, n: int, bad_share: float = 0.01, seed: int = 0) -> dict[str, Any]:
    """Write ``n`` files under ``root/<class>/`` (``bad_share`` of them broken, every kind alike) and a
    ``captions.csv`` naming them all. Returns ``{"good": [paths], "bad": {path: kind}, "captions": path}``."""
    rng = np.random.default_rng(seed)
    n_bad = max(len(BAD_KINDS), round(n * bad_share))
    bad_at = set(rng.choice(n, size=n_bad, replace=False).tolist())
    kinds = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_bad)]
    good: list[str] = []
    bad: dict[str, str] = {}
    rows = []
    for i in range(n):
        cls = f"class_{i % CLASSES}"
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        data = _png(rng)
        if i in bad_at:
            kind = kinds.pop()
            data, ext = _broken(kind, data, rng)
            path = folder / f"img_{i:05d}{ext}"
            bad[str(path.resolve())] = kind
        else:
            path = folder / f"img_{i:05d}.png"
            good.append(str(path.resolve()))
        path.write_bytes(data)
        rows.append({"path": str(path.relative_to(root)), "caption": f"a picture of {cls.replace('_', ' ')}"})
    captions = root / "captions.csv"
    with captions.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "caption"])
        w.writeheader()
        w.writerows(rows)
    return {"good": good, "bad": bad, "captions": captions}


def check_ingest(corpus: dict[str, Any], row_paths: list[str], skipped: list[tuple[str, str]]) -> dict[str, Any]:
    """Compare an ingest's rows and report with the corpus: lost valid rows, unlisted bad files, rows
    made from bad files, duplicates, the reasons by kind."""
    rows = Counter(str(Path(p).resolve()) for p in row_paths)
    listed = {str(Path(p).resolve()): r for p, r in skipped}
    good, bad = set(corpus["good"]), corpus["bad"]
    by_kind: dict[str, Counter] = {}
    for path, kind in bad.items():
        if path in listed:
            by_kind.setdefault(kind, Counter())[listed[path].split(" (")[0]] += 1
    return {
        "valid_files": len(good),
        "bad_files": len(bad),
        "rows": sum(rows.values()),
        "valid_rows_lost": len(good - set(rows)),
        "lost_examples": sorted(good - set(rows))[:5],
        "bad_files_not_listed": len(set(bad) - set(listed)),
        "not_listed_examples": sorted(set(bad) - set(listed))[:5],
        "rows_from_bad_files": sum(1 for p in rows if p in bad),
        "duplicate_rows": sum(c - 1 for c in rows.values() if c > 1),
        "good_files_listed_as_bad": len(good & set(listed)),
        "reasons_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
    }


def _plain_loop(corpus: dict[str, Any], preprocess) -> dict[str, Any]:
    from raylens.data.images import decode_image

    t = time.perf_counter()
    kept, skipped = [], []
    for path in sorted([*corpus["good"], *corpus["bad"]]):
        try:
            preprocess(decode_image(Path(path).read_bytes()))
            kept.append(path)
        except Exception as exc:  # noqa: BLE001 - the rival skips on anything
            skipped.append((path, f"{type(exc).__name__}"))
    seconds = time.perf_counter() - t
    return {"check": check_ingest(corpus, kept, skipped), "seconds": round(seconds, 2)}


def run_readers(corpus: dict[str, Any], root: Path, preprocess) -> dict[str, Any]:
    """Both Ray readers over the corpus: their rows (paths only) and reports, checked."""
    from raylens.data.ray_folders import read_image_folder
    from raylens.data.ray_reader import read_captioned_images

    out = {}
    for name, read in (
        ("class_folders", lambda: read_image_folder(root, preprocess, batch_size=256)),
        ("captions_csv", lambda: read_captioned_images(corpus["captions"], preprocess, batch_size=256)),
    ):
        t = time.perf_counter()
        data = read()
        paths: list[str] = []
        for batch in data.dataset.select_columns(["path"]).iter_batches(batch_size=1024, batch_format="numpy"):
            paths.extend(str(p) for p in batch["path"])
        report = data.report()
        seconds = time.perf_counter() - t
        check = check_ingest(corpus, paths, [(s.path, s.reason) for s in report.skipped])
        check["report_n_ok"] = report.n_ok
        check["report_reasons"] = report.reasons()
        out[name] = {"check": check, "seconds": round(seconds, 2), "rows_per_s": round(len(paths) / seconds, 1)}
    return out


@register_benchmark(
    "reliability-ingest",
    suite="reliability",
    doc="10k-file ingest with 1% corrupt files through both Ray readers: valid rows lost, bad files not listed.",
)
def bench_reliability_ingest(quick: bool, workdir: Path) -> BenchResult:
    from raylens.data.images import ClipPreprocess
    from raylens.runtime import init_ray

    load_before = load_average()
    n = 1_000 if quick else 10_000
    t = time.perf_counter()
    root = workdir / "corpus"
    corpus = make_corpus(root, n)
    make_s = time.perf_counter() - t
    preprocess = ClipPreprocess(32)
    init_ray()
    readers = run_readers(corpus, root, preprocess)
    plain = _plain_loop(corpus, preprocess)

    def kept(check: dict[str, Any]) -> float:
        return round(1 - check["valid_rows_lost"] / check["valid_files"], 6)

    worst = min(kept(r["check"]) for r in readers.values())
    return BenchResult(
        name="reliability-ingest",
        metric="share_of_valid_files_that_came_out_as_rows (worst of the two Ray readers)",
        value=worst,
        baseline_name="a plain loop in this process: decode_image + the same preprocess, any exception a skip",
        baseline_value=kept(plain["check"]),
        params={
            "files": n,
            "bad_share": 0.01,
            "bad_kinds": list(BAD_KINDS),
            "image_sizes": "24-40 px, random content, PNG",
            "classes": CLASSES,
            "preprocess": "ClipPreprocess(32)",
            "readers": ["raylens.data.ray_folders.read_image_folder", "raylens.data.ray_reader.read_captioned_images"],
            "quick": quick,
        },
        extra={
            "goal": {"valid_rows_lost": 0, "bad_files_not_listed": 0},
            "readers": readers,
            "plain_loop": plain,
            "corpus_write_s": round(make_s, 1),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
    )
