"""raylens: a multi-modal and 3D vision SDK on Ray.

The plain-Python core (models, transforms, decoding, the FAISS index) never imports Ray; the
``ray_*`` modules wrap it for Ray Data, Ray Train and Ray Serve. Importing ``raylens`` is cheap:
the names below load their modules (torch, open_clip) on first use.

>>> import raylens
>>> "clip-tiny" in raylens.list_models("clip-*")
True
"""

from importlib import import_module

from raylens.errors import IndexMismatchError, IndexNotFoundError, RaylensError

__version__ = "0.1.0"

_LAZY = {
    name: "raylens.models"
    for name in ("ClipModel", "create_model", "list_models", "load_model", "register_model", "save_model")
}

__all__ = [
    "ClipModel",
    "IndexMismatchError",
    "IndexNotFoundError",
    "RaylensError",
    "create_model",
    "list_models",
    "load_model",
    "register_model",
    "save_model",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raylens' has no attribute {name!r}")
