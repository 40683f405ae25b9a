"""Batch decode for captioned images: ``dict[str, ndarray]`` in, preprocessed batch plus skips out.

This is the plain function the Ray Data reader maps over blocks; it never raises on a bad row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raylens.data.images import BadImage, ClipPreprocess, decode_image
from raylens.data.report import SkippedRow

__all__ = ["decode_captioned_batch"]


def _read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def decode_captioned_batch(
    batch: dict[str, np.ndarray], preprocess: ClipPreprocess, *, require_caption: bool = True
) -> tuple[dict[str, np.ndarray], list[SkippedRow]]:
    """Decode and preprocess each row of ``batch``.

    Input columns: ``path`` and, optionally, ``image_bytes`` (used instead of reading ``path``) and
    ``caption``; every other column is carried through. Output adds ``image`` (N, 3, S, S) float32
    and drops ``image_bytes``. Rows that cannot be used are left out and returned as skips.
    """
    paths = [str(p) for p in batch["path"]]
    n = len(paths)
    raw = batch.get("image_bytes")
    captions = batch.get("caption")
    keep: list[int] = []
    images: list[np.ndarray] = []
    skipped: list[SkippedRow] = []
    for i, path in enumerate(paths):
        if require_caption and (captions is None or not str(captions[i] or "").strip()):
            skipped.append(SkippedRow(path, "missing caption"))
            continue
        try:
            data = raw[i] if raw is not None and raw[i] is not None else _read_bytes(path)
            images.append(preprocess(decode_image(bytes(data))))
        except FileNotFoundError:
            skipped.append(SkippedRow(path, "file not found"))
            continue
        except BadImage as e:
            skipped.append(SkippedRow(path, str(e)))
            continue
        except OSError as e:
            skipped.append(SkippedRow(path, f"unreadable file ({e.strerror or e})"))
            continue
        keep.append(i)
    out = {k: np.asarray(v)[keep] for k, v in batch.items() if k != "image_bytes" and len(v) == n}
    s = preprocess.image_size
    out["image"] = np.stack(images) if images else np.zeros((0, 3, s, s), np.float32)
    return out, skipped
