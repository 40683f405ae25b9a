"""Model registry and builders: ``create_model``, ``list_models``, ``register_model``."""

from raylens.models.clip import (
    MODELS,
    ClipModel,
    ModelSpec,
    create_model,
    list_models,
    register_model,
)

__all__ = ["MODELS", "ClipModel", "ModelSpec", "create_model", "list_models", "register_model"]
