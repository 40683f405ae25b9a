"""The one model front door for every kind, and the one checkpoint format.

* :func:`create_model`, :func:`list_models`, :func:`model_kind`, :func:`register_model`
  (:mod:`raylens.models.registry`): CLIP (ours plus every open_clip architecture), classifiers
  (``timm/<name>``), and whatever the domain packs register (fusion nets, NeRF, diffusion).
* :func:`save_model`, :func:`load_model` (:mod:`raylens.models.save_load`) on the
  ``raylens.checkpoint/1`` directory format (:mod:`raylens.models.checkpoint`).

>>> from raylens.models import list_models
>>> list_models("clip-*", kind="clip")
['clip-small', 'clip-tiny']
"""

from raylens.models import classifiers as _classifiers  # noqa: F401 - registers the timm family
from raylens.models.checkpoint import Checkpoint, read_checkpoint
from raylens.models.clip import ClipModel, ModelSpec
from raylens.models.registry import (
    MODEL_KINDS,
    MODELS,
    ModelFamily,
    ModelInfo,
    ModelRecord,
    attach_record,
    create_model,
    example_input,
    list_models,
    model_info,
    model_infos,
    model_kind,
    model_record,
    register_family,
    register_model,
)
from raylens.models.save_load import load_model, save_model

__all__ = [
    "MODELS",
    "MODEL_KINDS",
    "Checkpoint",
    "ClipModel",
    "ModelFamily",
    "ModelInfo",
    "ModelRecord",
    "ModelSpec",
    "attach_record",
    "create_model",
    "example_input",
    "list_models",
    "load_model",
    "model_info",
    "model_infos",
    "model_kind",
    "model_record",
    "read_checkpoint",
    "register_family",
    "register_model",
    "save_model",
]
