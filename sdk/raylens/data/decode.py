"""Batch decode for captioned images: ``dict[str, ndarray]`` in, preprocessed batch plus skips out.

This is the plain function the Ray Data reader maps over blocks; it never raises on a bad row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from raylens.data.images import BATCH_PIXELS, BadImage, decode_image, read_image_file
from raylens.data.report import SkippedRow

__all__ = ["ImageTransform", "decode_captioned_batch", "apply_transform"]


class ImageTransform(Protocol):
    """What readers accept as ``preprocess``: ``ClipPreprocess`` (eval) or ``TrainAugment`` (train).

    ``transform(image)`` maps one ``(H, W, 3)`` uint8 array to ``(3, S, S)`` float32. A transform with
    ``keyed = True`` is random and also takes ``key=`` (the row's path) and ``epoch=`` (how many times
    the row was read before), which seed its randomness.
    """

    image_size: int

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


def apply_transform(preprocess: ImageTransform, image: np.ndarray, key: str, epoch: int = 0) -> np.ndarray:
    """``preprocess(image)``, passing ``key`` and ``epoch`` to keyed (random) transforms."""
    if getattr(preprocess, "keyed", False):
        return preprocess(image, key=key, epoch=epoch)
    return preprocess(image)


def _unusable(e: Exception) -> str:
    return f"could not decode or preprocess ({type(e).__name__}: {e})"


_REMOTE_FIX = (
    "raylens reads local files and embedded bytes, never the network: download the images first, e.g. with img2dataset"
)


def decode_captioned_batch(
    batch: dict[str, np.ndarray],
    preprocess: ImageTransform,
    *,
    require_caption: bool = True,
    epochs: Sequence[int] | None = None,
    root: str | None = None,
) -> tuple[dict[str, np.ndarray], list[SkippedRow]]:
    """Decode and preprocess each row of ``batch``.

    Input columns: ``path`` (a local path; a remote URL is skipped unless the row embeds its
    image) and, optionally, ``image_bytes`` (used instead of reading ``path``) and
    ``caption``; every other column is carried through. Output adds ``image`` (N, 3, S, S) float32
    and drops ``image_bytes``. Rows that cannot be used are left out and returned as skips.
    ``epochs`` (one per row, default 0) is passed with the path to keyed transforms. ``root``: read
    image files only inside this directory (see :func:`~raylens.data.images.read_image_file`); a path
    outside it is a skipped row.
    """
    paths = [str(p) for p in batch["path"]]
    n = len(paths)
    raw = batch.get("image_bytes")
    captions = batch.get("caption")
    keep: list[int] = []
    images: list[np.ndarray | None] = []
    skipped: list[SkippedRow] = []
    batched = not getattr(preprocess, "keyed", False) and callable(getattr(preprocess, "batch", None))
    # position in `images` -> a small decoded image, preprocessed with the others below (keyed transforms: one by one)
    waiting: dict[int, np.ndarray] = {}
    for i, path in enumerate(paths):
        if require_caption and (captions is None or not str(captions[i] or "").strip()):
            skipped.append(SkippedRow(path, "missing caption"))
            continue
        embedded = raw is not None and raw[i] is not None
        if not embedded and "://" in path:
            skipped.append(SkippedRow(path, f"remote URL ({_REMOTE_FIX})"))
            continue
        try:
            data = raw[i] if embedded else read_image_file(path, root=root)
            image = decode_image(bytes(data))
            if batched and image.shape[0] * image.shape[1] <= BATCH_PIXELS:
                waiting[len(images)] = image
                images.append(None)
            else:
                images.append(apply_transform(preprocess, image, path, epochs[i] if epochs is not None else 0))
        except FileNotFoundError:
            skipped.append(SkippedRow(path, "file not found"))
            continue
        except BadImage as e:
            skipped.append(SkippedRow(path, str(e)))
            continue
        except OSError as e:
            skipped.append(SkippedRow(path, f"unreadable file ({e.strerror or e})"))
            continue
        except Exception as e:  # a transform or decoder failing on one odd row skips that row only
            skipped.append(SkippedRow(path, _unusable(e)))
            continue
        keep.append(i)
    if waiting:
        try:
            for pos, x in zip(waiting, preprocess.batch(list(waiting.values()))):
                images[pos] = x
        except Exception:  # one odd row spoiled the batch: one by one, skipping only that row
            for pos, image in waiting.items():
                try:
                    images[pos] = preprocess(image)
                except Exception as e:
                    skipped.append(SkippedRow(paths[keep[pos]], _unusable(e)))
        kept = [p for p, x in enumerate(images) if x is not None]
        keep, images = [keep[p] for p in kept], [images[p] for p in kept]
    out = {k: np.asarray(v)[keep] for k, v in batch.items() if k != "image_bytes" and len(v) == n}
    s = preprocess.image_size
    out["image"] = np.stack(images) if images else np.zeros((0, 3, s, s), np.float32)
    return out, skipped
