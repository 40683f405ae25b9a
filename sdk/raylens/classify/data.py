"""Labelled images in memory for the classification tools: scikit-learn's digits or a class folder.

A spec is ``digits`` (the training part of scikit-learn's digits), ``digits:heldout`` (its held-out
part), or a class folder ``root/<class>/<image>``. Images come back as ``[0, 1]`` pixel tensors at
the model's size (resized as the serving preprocessing does: short side, centre crop, bicubic).
A file that does not decode is skipped and listed in ``skipped`` (path and reason), never a crash;
a class folder that is not one of the model's classes is an error naming it.

>>> d = load_labelled("digits:heldout", image_size=32, limit=8)
>>> tuple(d.pixels.shape), d.classes[:3], len(d.skipped)
((8, 3, 32, 32), ['0', '1', '2'], 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from raylens.data.report import SkippedRow

__all__ = ["Labelled", "load_labelled", "to_pixels"]


@dataclass
class Labelled:
    """Images with labels, ready for the tools."""

    pixels: torch.Tensor
    """``(N, 3, S, S)`` float32 in [0, 1]."""
    labels: torch.Tensor
    """``(N,)`` int64 indices into ``classes``."""
    classes: list[str]
    source: str
    skipped: list[SkippedRow] = field(default_factory=list)
    """Files that could not be used, with the reason."""

    def __len__(self) -> int:
        return len(self.labels)

    def normalized(self, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        """The images as a model's normalised float32 input."""
        m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        return ((self.pixels.numpy() - m) / s).astype(np.float32)


def to_pixels(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 images as ``(N, 3, S, S)`` [0, 1] pixels (short side, centre crop, bicubic)."""
    from raylens.data.images import ClipPreprocess

    pre = ClipPreprocess(image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return torch.from_numpy(pre.batch(list(images))).clamp_(0, 1)


def load_labelled(
    spec: str,
    *,
    image_size: int,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> Labelled:
    """Load ``spec`` (``digits``, ``digits:heldout`` or a class folder) at ``image_size``.

    Args:
        classes: the model's classes; a folder's classes must be among them (labels follow this order).
        limit: keep at most this many images (a seeded random choice, stratified by nothing).

    Raises:
        ValueError: an unknown spec, a class the model does not know, or nothing left to use.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be an int >= 1 or None, got {limit!r}")
    if spec in ("digits", "digits:train", "digits:heldout"):
        from raylens.data.digits import DIGIT_CLASSES, load_digits_split

        d = load_digits_split("heldout" if spec.endswith("heldout") else "train", seed=seed)
        names = list(DIGIT_CLASSES)
        labels = d.labels
        if classes is not None:
            missing = [c for c in names if c not in classes]
            if missing:
                raise ValueError(f"the digits classes {missing} are not among the model's classes {list(classes)[:12]}")
            labels = np.asarray([list(classes).index(names[i]) for i in labels])
            names = list(classes)
        images, skipped = list(d.images), []
    else:
        images, labels, names, skipped = _folder(spec, classes)
    idx = np.arange(len(labels))
    if limit is not None and limit < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), limit, replace=False))
    if len(idx) == 0:
        raise ValueError(f"{spec!r} has no usable images ({len(skipped)} skipped: {[s.reason for s in skipped[:3]]})")
    return Labelled(
        to_pixels([images[i] for i in idx], image_size),
        torch.as_tensor(np.asarray(labels)[idx], dtype=torch.long),
        names,
        spec,
        skipped,
    )


def _folder(
    root: str, classes: Sequence[str] | None
) -> tuple[list[np.ndarray], list[int], list[str], list[SkippedRow]]:
    from raylens.data.folders import list_image_folder
    from raylens.data.images import BadImage, decode_image, read_image_file

    if not Path(root).is_dir():
        raise ValueError(f"data {root!r} is neither 'digits', 'digits:heldout' nor a class folder root/<class>/<image>")
    listing = list_image_folder(root)
    names = list(classes) if classes is not None else listing.classes
    unknown = [c for c in listing.classes if c not in names]
    if unknown:
        raise ValueError(
            f"{root!r} has class folder(s) {unknown[:5]} that are not among the model's classes {names[:12]}; "
            "remove them or evaluate a model trained on them"
        )
    images, labels, skipped = [], [], list(listing.skipped)
    for path, cname in zip(listing.rows["path"], listing.rows["class_name"]):
        try:
            images.append(decode_image(read_image_file(path)))
        except (BadImage, OSError) as e:
            skipped.append(SkippedRow(path, str(e)))
            continue
        labels.append(names.index(cname))
    return images, labels, names, skipped
