"""scikit-learn's digits as a captioned dataset: split, captions, images."""

import numpy as np
import pytest

from raylens.data.digits import CAPTION_TEMPLATES, DIGIT_WORDS, load_digits_split
from raylens.models import create_model


def test_split_is_stratified_disjoint_and_seeded():
    train, held = load_digits_split("train"), load_digits_split("heldout")
    assert len(train) + len(held) == 1797 and not set(train.ids) & set(held.ids)
    counts = np.bincount(held.labels, minlength=10)
    assert counts.min() >= 40 and counts.max() <= 50  # ~25% of each of ~180 per class
    assert np.array_equal(load_digits_split("heldout", seed=0).ids, held.ids)
    assert not np.array_equal(load_digits_split("heldout", seed=1).ids, held.ids)


def test_captions_name_the_right_digit():
    train = load_digits_split("train")
    for cap, d in zip(train.captions[:200], train.labels[:200]):
        assert str(d) in cap.split() or DIGIT_WORDS[d] in cap.split(), cap
    assert len(set(train.captions)) > 10 * (len(CAPTION_TEMPLATES) - 1)  # varied wording
    held = load_digits_split("heldout")
    assert all(c == f"a photo of the digit {d}" for c, d in zip(held.captions, held.labels))


def test_images_are_rgb_and_preprocess_to_the_model_input():
    d = load_digits_split("heldout")
    assert d.images.dtype == np.uint8 and d.images.shape[1:] == (8, 8, 3) and d.images.max() == 255
    x = create_model("clip-tiny").preprocess(d.images[0])
    assert x.shape == (3, 32, 32) and x.dtype == np.float32


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="split"):
        load_digits_split("test")
    with pytest.raises(ValueError, match="heldout_fraction"):
        load_digits_split("train", heldout_fraction=1.5)
