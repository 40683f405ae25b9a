"""scikit-learn's handwritten digits as a captioned image dataset (ships inside scikit-learn: no download).

1797 grayscale 8x8 scans of the digits 0-9 (UCI optical recognition set) become RGB uint8 images with
captions, a label and a stratified, seeded train / held-out split. Training captions vary in wording
(``"a photo of the digit 7"``, ``"a handwritten seven"``, ``"the number 7"``, ...), so a CLIP trained
on them learns digits rather than one sentence, and zero-shot prompts can be any of them.

>>> d = load_digits_split("heldout")
>>> d.images.shape[1:], d.images.dtype, d.captions[0].startswith("a photo of the digit")
((8, 8, 3), dtype('uint8'), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DIGIT_CLASSES", "DIGIT_WORDS", "CAPTION_TEMPLATES", "ZEROSHOT_TEMPLATE", "DigitsSplit", "load_digits_split"]

DIGIT_CLASSES = [str(i) for i in range(10)]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ZEROSHOT_TEMPLATE = "a photo of the digit {}"
CAPTION_TEMPLATES = (
    "a photo of the digit {n}",
    "a handwritten {w}",
    "the number {n}",
    "a scan of a handwritten {n}",
    "the digit {w}",
    "{n}",
)
"""Training captions: {n} is the numeral, {w} the word."""


@dataclass
class DigitsSplit:
    images: np.ndarray
    """(N, 8, 8, 3) uint8 (upscaled by the model's preprocessing)."""
    labels: np.ndarray
    """(N,) int64 digit."""
    captions: np.ndarray
    """(N,) str."""
    ids: np.ndarray
    """(N,) int64 index into sklearn's ``load_digits()`` (stable row identity)."""

    def __len__(self) -> int:
        return len(self.labels)


def load_digits_split(
    split: str = "train", *, heldout_fraction: float = 0.25, seed: int = 0, varied_captions: bool | None = None
) -> DigitsSplit:
    """The ``train`` or ``heldout`` part of sklearn's digits, split per class (stratified) with ``seed``.

    ``varied_captions`` (default: True for train, False for heldout) draws each caption from
    :data:`CAPTION_TEMPLATES`; otherwise every caption is ``"a photo of the digit {n}"``.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.images, bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    heldout = np.zeros(len(y), bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        heldout[idx[: int(round(len(idx) * heldout_fraction))]] = True
    ids = np.flatnonzero(heldout if split == "heldout" else ~heldout)
    gray = np.clip(x[ids] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    labels = y[ids]
    varied = (split == "train") if varied_captions is None else varied_captions
    if varied:
        pick = np.random.default_rng(seed + 1).integers(0, len(CAPTION_TEMPLATES), len(ids))
        captions = [CAPTION_TEMPLATES[t].format(n=d, w=DIGIT_WORDS[d]) for t, d in zip(pick, labels)]
    else:
        captions = [ZEROSHOT_TEMPLATE.format(d) for d in labels]
    return DigitsSplit(images, labels, np.asarray(captions), ids.astype(np.int64))
