"""transformers' ViT as a raylens classifier: ``forward(x)`` returns the logits tensor.

:class:`ViTClassifier` *is* ``ViTForImageClassification`` (same modules, same state-dict keys, same
``save_pretrained`` files), with the raylens classifier contract added: ``forward(x) -> logits``,
``num_classes``, ``reset_head(n)``, ``get_classifier()`` and ``example_input()``. A checkpoint
directory holds transformers' own ``config.json`` + ``model.safetensors`` with our keys merged in,
so ``ViTForImageClassification.from_pretrained(dir)`` and :func:`raylens.models.load_model` both read it.

The registered names (``vit``, ``vit_tiny``, ...) live in :mod:`raylens.models.vit`, which imports
this module (and transformers) only when a ViT is built.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification
from transformers.utils import logging as hf_logging

__all__ = ["ViTClassifier", "vit_config", "config_from_folder", "architecture_of", "quiet_transformers", "ARCH_KEYS"]

ARCH_KEYS = ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_ratio", "dropout", "in_chans")
"""Our names of the architecture arguments (``model_config`` keys of a ViT checkpoint)."""


@contextlib.contextmanager
def quiet_transformers():
    """No "Loading weights" / "Writing model shards" progress bars while saving or loading."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def vit_config(
    *,
    num_classes: int,
    image_size: int,
    patch_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
    in_chans: int = 3,
) -> ViTConfig:
    """A ``ViTConfig`` from our argument names, checked (the message names the argument and the fix)."""
    for name, value in (
        ("num_classes", num_classes),
        ("image_size", image_size),
        ("patch_size", patch_size),
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("in_chans", in_chans),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if image_size % patch_size:
        raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size})")
    if hidden_size % num_heads:
        raise ValueError(f"`hidden_size` ({hidden_size}) must be a multiple of `num_heads` ({num_heads})")
    if not mlp_ratio > 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"`mlp_ratio` must be > 0 and `dropout` in [0, 1), got {mlp_ratio} and {dropout}")
    return ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=in_chans,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=int(round(hidden_size * mlp_ratio)),
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,
        num_labels=num_classes,
    )


def architecture_of(config: ViTConfig) -> dict[str, Any]:
    """Our architecture arguments (:data:`ARCH_KEYS` + ``num_classes``) of a ``ViTConfig``."""
    return {
        "num_classes": int(config.num_labels),
        "image_size": int(config.image_size),
        "patch_size": int(config.patch_size),
        "hidden_size": int(config.hidden_size),
        "num_layers": int(config.num_hidden_layers),
        "num_heads": int(config.num_attention_heads),
        "mlp_ratio": float(config.intermediate_size) / float(config.hidden_size),
        "dropout": float(config.hidden_dropout_prob),
        "in_chans": int(config.num_channels),
    }


def config_from_folder(folder: str | Path) -> ViTConfig:
    """The ``ViTConfig`` of a ``save_pretrained`` folder, without the raylens keys merged into its file.

    Raises:
        ValueError: the folder holds another transformers model type (DeiT, Swin: use their timm names).
    """
    path = Path(folder).expanduser() / "config.json"
    data = json.loads(path.read_text())
    if data.get("model_type") != "vit":
        raise ValueError(
            f"{str(folder)!r} holds a transformers {data.get('model_type')!r} model; only ViT folders "
            "(model_type 'vit') load here; for DeiT or Swin use their timm names (timm/deit_tiny_patch16_224, ...)"
        )
    known = set(ViTConfig().to_dict())
    return ViTConfig(
        **{k: v for k, v in data.items() if k in known and k not in ("model_type", "transformers_version")}
    )


class ViTClassifier(ViTForImageClassification):
    """``ViTForImageClassification`` whose ``forward(x)`` returns ``(N, num_classes)`` logits."""

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        return super().forward(pixel_values=pixel_values, **kwargs).logits

    @property
    def num_classes(self) -> int:
        return int(self.config.num_labels)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_head(self, num_classes: int) -> None:
        """A new head of ``num_classes`` outputs (initialised as transformers initialises it)."""
        old = self.classifier
        device = next(self.parameters()).device
        self.config.num_labels = num_classes
        self.classifier = nn.Linear(self.config.hidden_size, num_classes).to(device)
        self._init_weights(self.classifier)
        del old

    def example_input(self, n: int = 2) -> torch.Tensor:
        s, c = int(self.config.image_size), int(self.config.num_channels)
        return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0))

    @classmethod
    def from_folder(cls, folder: str | Path) -> ViTClassifier:
        """Load a ``save_pretrained`` ViT folder (ours or transformers')."""
        with quiet_transformers():
            return cls.from_pretrained(str(folder), config=config_from_folder(folder))

    def save_folder(self, directory: str | Path) -> str:
        """``save_pretrained`` into ``directory`` (config.json cleaned of extra keys); returns the weights file name."""
        directory = Path(directory)
        with quiet_transformers():
            self.save_pretrained(str(directory))
        cfg_path = directory / "config.json"
        data = json.loads(cfg_path.read_text())
        known = set(ViTConfig().to_dict()) | {"architectures", "transformers_version", "dtype"}
        clean = {k: v for k, v in data.items() if k in known}
        clean["architectures"] = ["ViTForImageClassification"]  # what plain transformers builds from it
        cfg_path.write_text(json.dumps(clean, indent=2))
        return "model.safetensors"
