"""TrainAugment: open_clip's train transform on numpy, seeded per (seed, epoch, key)."""

import pickle

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from raylens.data.augment import TrainAugment, random_resized_crop_box
from raylens.data.decode import decode_captioned_batch
from raylens.data.images import OPENAI_MEAN, OPENAI_STD, ClipPreprocess


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_same_shape_dtype_and_range_as_open_clip_train_transform(image):
    ref = open_clip.image_transform(32, is_train=True)(Image.fromarray(image)).numpy()
    ours = TrainAugment(32, hflip=True)(image, key="a.png")
    assert TrainAugment(32, randaugment=True)(image, key="a.png").shape == (3, 32, 32)
    assert ours.shape == ref.shape == (3, 32, 32) and ours.dtype == ref.dtype == np.float32
    lo = (0 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    hi = (1 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    for x in (ours, ref):
        assert np.all(x.min(axis=(1, 2)) >= lo - 1e-5) and np.all(x.max(axis=(1, 2)) <= hi + 1e-5)
    # open_clip's train crop keeps 90-100% of the area, ours too: the mean colour barely moves
    np.testing.assert_allclose(ours.mean(axis=(1, 2)), ref.mean(axis=(1, 2)), atol=0.15)


def test_without_randomness_it_is_the_eval_transform():
    square = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    aug = TrainAugment(24, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(aug(square, key="k"), ClipPreprocess(24)(square))
    flipped = TrainAugment(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=True)
    outs = {flipped(square, key=f"k{i}").tobytes() for i in range(12)}
    want = {ClipPreprocess(24)(square).tobytes(), ClipPreprocess(24)(square[:, ::-1].copy()).tobytes()}
    assert outs == want  # both orientations appear, nothing else


@pytest.mark.parametrize("randaugment", [False, True])
def test_seeded_per_seed_epoch_and_key(image, randaugment):
    aug = TrainAugment(32, hflip=True, randaugment=randaugment, seed=3)
    a = aug(image, key="x.jpg", epoch=0)
    np.testing.assert_array_equal(a, TrainAugment(32, hflip=True, randaugment=randaugment, seed=3)(image, key="x.jpg"))
    assert not np.array_equal(a, TrainAugment(32, hflip=True, randaugment=randaugment, seed=4)(image, key="x.jpg"))
    assert not np.array_equal(a, aug(image, key="x.jpg", epoch=1))
    assert not np.array_equal(a, aug(image, key="y.jpg", epoch=0))


def test_call_counter_without_key_and_pickling(image):
    aug = TrainAugment(32, seed=5)
    first, second = aug(image), aug(image)
    assert not np.array_equal(first, second)
    fresh = TrainAugment(32, seed=5)
    np.testing.assert_array_equal(fresh.batch([image, image]), np.stack([first, second]))
    clone = pickle.loads(pickle.dumps(TrainAugment(32, seed=5)))
    np.testing.assert_array_equal(clone(image, key="k"), aug(image, key="k"))


def test_randaugment_leaves_torch_global_rng_alone(image):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    TrainAugment(32, randaugment=True, num_ops=3)(image, key="k")
    torch.testing.assert_close(torch.rand(3), want)


def test_crop_box_follows_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(60, 80, (0.3, 0.6), (0.75, 1.333), rng)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.25 <= h * w / (60 * 80) <= 0.65 and 0.7 <= w / h <= 1.4
    # impossible ratio: falls back to a centre crop at the nearest allowed ratio
    assert random_resized_crop_box(10, 100, (0.99, 1.0), (1.0, 1.0), rng) == (0, 45, 10, 10)


def test_keyed_transform_gets_path_and_epoch_in_decode(tmp_path, image):
    Image.fromarray(image).save(tmp_path / "a.png")
    batch = {"path": np.array([str(tmp_path / "a.png")] * 4), "caption": np.array(["c"] * 4)}
    aug = TrainAugment(16, seed=1)
    out, skipped = decode_captioned_batch(batch, aug, epochs=[0, 1, 2, 3])
    assert not skipped and out["image"].shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(out["image"][0], aug(image, key=str(tmp_path / "a.png"), epoch=0))
    # a near-full crop with no flip and identity ops can repeat by chance for one pair of epochs, not for three
    assert any(not np.array_equal(out["image"][0], out["image"][e]) for e in (1, 2, 3))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"magnitude": 31}, "magnitude"),
        ({"seed": -1}, "seed"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainAugment(**{"image_size": 32, **kwargs})
