"""Class-folder listing: torchvision ImageFolder's labels, skipped non-images, clear layout errors."""

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from raylens.data.decode import decode_captioned_batch
from raylens.data.folders import caption_for, list_image_folder
from raylens.data.images import ClipPreprocess


def _png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(path)


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "train"
    for cls, names in {"golden_retriever": ["b.png", "a.JPG"], "Cat": ["x.png"], "ant": ["nested/deep.webp"]}.items():
        for n in names:
            _png(root / cls / n)
    (root / "Cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("a file at the top is not a class")
    return root


def test_labels_and_order_match_torchvision_image_folder(tree):
    listing = list_image_folder(tree)
    tv = ImageFolder(str(tree))
    assert listing.classes == tv.classes == ["Cat", "ant", "golden_retriever"]
    assert list(zip(listing.rows["path"], listing.rows["label"])) == [(p, y) for p, y in tv.samples]
    assert listing.rows["class_name"] == [listing.classes[y] for y in listing.rows["label"]]
    assert len(listing) == 4


def test_captions_from_template_and_skipped_non_images(tree):
    listing = list_image_folder(tree, caption_template="a {class_name} photo")
    by_class = dict(zip(listing.rows["class_name"], listing.rows["caption"]))
    assert by_class["golden_retriever"] == "a golden retriever photo"
    assert caption_for("sea_lion") == "a photo of a sea lion"
    assert [(s.path.rsplit("/", 1)[-1], s.reason) for s in listing.skipped] == [
        ("notes.txt", "not an image file (extension)")
    ]


def test_decode_skips_corrupt_image_in_folder(tree):
    (tree / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    listing = list_image_folder(tree)
    batch = {k: np.asarray(v) for k, v in listing.rows.items()}
    out, skipped = decode_captioned_batch(batch, ClipPreprocess(8))
    assert out["image"].shape == (4, 3, 8, 8) and out["label"].tolist() == [0, 1, 2, 2]
    assert [s.path.rsplit("/", 1)[-1] for s in skipped] == ["broken.png"]
    assert skipped[0].reason.startswith("not a readable image")


def test_missing_root_and_no_class_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; expected the layout root/<class_name>/"):
        list_image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match=r"'.*flat' has no class subfolders; expected the layout"):
        list_image_folder(tmp_path / "flat")


def test_class_folders_without_images(tmp_path):
    (tmp_path / "r" / "cat").mkdir(parents=True)
    (tmp_path / "r" / "cat" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folders \['cat'\] but no image files"):
        list_image_folder(tmp_path / "r")
    _png(tmp_path / "r" / "dog" / "d.png")
    with pytest.raises(ValueError, match=r"class folder\(s\) \['cat'\] hold no image files.*allow_empty=True"):
        list_image_folder(tmp_path / "r")
    listing = list_image_folder(tmp_path / "r", allow_empty=True)
    assert listing.classes == ["cat", "dog"] and listing.rows["label"] == [1]


def test_bad_template(tree):
    with pytest.raises(ValueError, match="must contain '{class_name}'"):
        list_image_folder(tree, caption_template="a photo")
