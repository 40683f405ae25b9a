"""raylens: a multi-modal and 3D vision SDK on Ray.

The plain-Python core (models, transforms, decoding, the FAISS index) never imports Ray; the
``ray_*`` modules wrap it for Ray Data, Ray Train and Ray Serve.

>>> import raylens
>>> "clip-tiny" in raylens.list_models("clip-*")
True
"""

from raylens.errors import IndexMismatchError, IndexNotFoundError, RaylensError
from raylens.models import ClipModel, create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "ClipModel",
    "IndexMismatchError",
    "IndexNotFoundError",
    "RaylensError",
    "create_model",
    "list_models",
    "register_model",
    "__version__",
]
