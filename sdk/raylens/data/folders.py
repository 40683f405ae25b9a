"""List an image folder with one subfolder per class (``root/<class>/<image>``, ImageNet style).

Classes are the subfolder names sorted as torchvision's ``ImageFolder`` sorts them, so label ``i`` is
the ``i``-th class there too; images are found recursively below each class folder. Listing is cheap
(no image is opened) and happens before any decoding, so an empty or wrongly laid out root fails at
once; files whose extension is not an image's are returned as skipped rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from raylens.data.report import SkippedRow

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_TEMPLATE", "FolderListing", "list_image_folder", "caption_for"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS``, matched case-insensitively."""
DEFAULT_TEMPLATE = "a photo of a {class_name}"
_LAYOUT = "root/<class_name>/<image file>, e.g. root/cat/001.jpg and root/dog/002.png"


def caption_for(class_name: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The caption of a class: ``template`` with ``{class_name}`` filled in, ``_`` read as a space."""
    return template.format(class_name=class_name.replace("_", " "))


@dataclass(frozen=True)
class FolderListing:
    """The files of a class-folder tree: one row per image, plus the files skipped while listing."""

    root: str
    classes: list[str]
    """Class names; the label of ``classes[i]`` is ``i``."""
    rows: dict[str, list]
    """Columns ``path``, ``label``, ``class_name``, ``caption``, one entry per image file."""
    skipped: list[SkippedRow]

    def __len__(self) -> int:
        return len(self.rows["path"])


def list_image_folder(
    root: str | Path,
    *,
    caption_template: str = DEFAULT_TEMPLATE,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    allow_empty: bool = False,
) -> FolderListing:
    """List ``root/<class>/**/<image>`` without opening any image.

    Args:
        root: the folder holding one subfolder per class.
        caption_template: caption of each row; ``{class_name}`` is replaced (``_`` becomes a space).
        extensions: file endings counted as images (case-insensitive); other files are skipped.
        allow_empty: allow class folders without images (torchvision's ``allow_empty``).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders, a class folder without images, or no images at all.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist; expected the layout {_LAYOUT}")
    if "{class_name}" not in caption_template:
        raise ValueError(f"caption_template must contain '{{class_name}}', got {caption_template!r}")
    exts = tuple(e.lower() for e in extensions)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class subfolders; expected the layout {_LAYOUT}")
    rows: dict[str, list] = {"path": [], "label": [], "class_name": [], "caption": []}
    skipped: list[SkippedRow] = []
    empty = []
    for label, name in enumerate(classes):
        caption = caption_for(name, caption_template)
        n_before = len(rows["path"])
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            for fname in sorted(files):
                path = os.path.join(dirpath, fname)
                if not fname.lower().endswith(exts):
                    skipped.append(SkippedRow(path, "not an image file (extension)"))
                    continue
                rows["path"].append(path)
                rows["label"].append(label)
                rows["class_name"].append(name)
                rows["caption"].append(caption)
        if len(rows["path"]) == n_before:
            empty.append(name)
    if not rows["path"]:
        raise ValueError(
            f"image folder {str(root)!r} has class folders {classes[:5]} but no image files "
            f"({', '.join(exts)}); expected the layout {_LAYOUT}"
        )
    if empty and not allow_empty:
        raise ValueError(
            f"image folder {str(root)!r}: class folder(s) {empty[:5]} hold no image files; "
            "add images, remove the folders, or pass allow_empty=True"
        )
    return FolderListing(str(root), classes, rows, skipped)
