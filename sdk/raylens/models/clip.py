"""CLIP models: our small open_clip configs plus every open_clip architecture, behind one registry.

>>> from raylens.models import create_model, list_models
>>> "clip-tiny" in list_models("clip-*")
True
>>> m = create_model("clip-tiny")
>>> m.encode_texts(["a red circle"]).shape
(1, 128)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from raylens.data.images import OPENAI_MEAN, OPENAI_STD, ClipPreprocess
from raylens.errors import CheckpointError
from raylens.registry import Registry

__all__ = [
    "ClipModel",
    "ModelSpec",
    "MODELS",
    "register_model",
    "create_model",
    "list_models",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "file_sha256",
]

_CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(_CONFIG_DIR)  # so plain open_clip knows "raylens-clip-tiny" too

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODELS = Registry("model")
register_model = MODELS.register


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: enough to rebuild it and to preprocess its inputs."""

    name: str
    """Our registry name (``clip-tiny``) or an open_clip architecture (``ViT-B-32``)."""
    open_clip_name: str
    """The open_clip architecture the model is built from."""
    embed_dim: int
    image_size: int
    context_length: int
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClipModel:
    """An open_clip ``CLIP`` with its spec, tokenizer and preprocessing.

    ``model`` is the plain ``torch.nn.Module``: train it, wrap it in DDP, or save its state dict.
    ``encode_images``/``encode_texts`` give L2-normalised float32 numpy embeddings.
    """

    def __init__(self, spec: ModelSpec, model: torch.nn.Module, checkpoint_hash: str = "untrained"):
        self.spec = spec
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(spec.open_clip_name, context_length=spec.context_length)
        self.preprocess = ClipPreprocess(spec.image_size, spec.mean, spec.std)
        self.checkpoint_hash = checkpoint_hash

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"ClipModel({self.spec.name!r}, params={n / 1e6:.1f}M, embed_dim={self.spec.embed_dim}, checkpoint={self.checkpoint_hash})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(N, 3, S, S)`` preprocessed images -> ``(N, D)`` unit vectors."""
        x = torch.as_tensor(images, dtype=torch.float32, device=self.device)
        if x.ndim != 4 or x.shape[1:] != (3, self.spec.image_size, self.spec.image_size):
            s = self.spec.image_size
            raise ValueError(f"images must be preprocessed to (N, 3, {s}, {s}), got {tuple(x.shape)}")
        self.model.eval()
        return F.normalize(self.model.encode_image(x).float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> ``(N, D)`` unit vectors."""
        tokens = self.tokenize(texts).to(self.device)
        self.model.eval()
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()

    def to(self, device: str | torch.device) -> ClipModel:
        self.model.to(device)
        return self

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (spec + ``extra``) into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        self.checkpoint_hash = file_sha256(directory / WEIGHTS_FILE)
        oc_cfg = dict(open_clip.get_model_config(self.spec.open_clip_name) or {})
        if getattr(self.model, "logit_bias", None) is not None:
            oc_cfg.setdefault("init_logit_bias", float(self.model.logit_bias.detach().reshape(-1)[0]))
        config = {
            "model": self.spec.to_dict(),
            "open_clip": oc_cfg,
            "checkpoint_hash": self.checkpoint_hash,
            **(extra or {}),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
        return directory


def file_sha256(path: str | Path, n_hex: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n_hex]


def _spec_for(name: str, open_clip_name: str) -> ModelSpec:
    cfg = open_clip.get_model_config(open_clip_name)
    size = cfg["vision_cfg"].get("image_size", 224)
    pre = cfg.get("preprocess_cfg", {})
    return ModelSpec(
        name=name,
        open_clip_name=open_clip_name,
        embed_dim=cfg["embed_dim"],
        image_size=size if isinstance(size, int) else size[0],
        context_length=cfg.get("text_cfg", {}).get("context_length", 77),
        mean=tuple(pre.get("mean", OPENAI_MEAN)),
        std=tuple(pre.get("std", OPENAI_STD)),
    )


def _build(name: str, open_clip_name: str, pretrained: str | None, **overrides: Any) -> ClipModel:
    spec = _spec_for(name, open_clip_name)
    weights, digest = _resolve_weights(pretrained, spec)
    if (
        "init_logit_bias" not in overrides
        and _has_logit_bias(weights)
        and open_clip.get_model_config(open_clip_name).get("init_logit_bias") is None
    ):
        overrides["init_logit_bias"] = 0.0  # a SigLIP-trained checkpoint: the loaded value replaces it
    logging.getLogger("root").disabled = True  # open_clip warns at root level about random init
    try:
        model = open_clip.create_model(open_clip_name, pretrained=weights, output_dict=True, **overrides)
    finally:
        logging.getLogger("root").disabled = False
    return ClipModel(spec, model, digest)


def _has_logit_bias(weights: str | None) -> bool:
    if not weights or not weights.endswith(".safetensors") or not Path(weights).is_file():
        return False
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        return "logit_bias" in f.keys()


def _resolve_weights(pretrained: str | None, spec: ModelSpec) -> tuple[str | None, str]:
    """A raylens checkpoint dir -> its weights file; a file or open_clip tag passes through."""
    if pretrained is None:
        return None, "untrained"
    p = Path(pretrained)
    if p.is_dir():
        cfg_path, w = p / CONFIG_FILE, p / WEIGHTS_FILE
        if not w.is_file():
            raise CheckpointError(f"checkpoint dir {str(p)!r} has no {WEIGHTS_FILE}; point at a dir saved by raylens")
        if cfg_path.is_file():
            saved = json.loads(cfg_path.read_text()).get("model", {}).get("open_clip_name")
            if saved and saved != spec.open_clip_name:
                raise CheckpointError(
                    f"checkpoint {str(p)!r} holds a {saved!r} model, not {spec.open_clip_name!r}; "
                    f"call create_model({saved!r}, pretrained=...)"
                )
        return str(w), file_sha256(w)
    if p.suffix in (".safetensors", ".pt", ".bin", ".pth"):
        if not p.is_file():
            raise FileNotFoundError(f"pretrained weights {str(p)!r} do not exist")
        return str(p), file_sha256(p)
    return pretrained, f"open_clip:{pretrained}"  # an open_clip pretrained tag; open_clip resolves it


@register_model(
    "clip-tiny", doc="Tiny CLIP (timm test_resnet image tower at 32px, 2-layer text tower); trains on CPU in minutes."
)
def clip_tiny(pretrained: str | None = None, **overrides: Any) -> ClipModel:
    return _build("clip-tiny", "raylens-clip-tiny", pretrained, **overrides)


@register_model("clip-small", doc="Small CLIP (ViT at 64px, 4-layer text tower), for GPU or patient CPU runs.")
def clip_small(pretrained: str | None = None, **overrides: Any) -> ClipModel:
    return _build("clip-small", "raylens-clip-small", pretrained, **overrides)


@register_model("siglip-tiny", doc="clip-tiny with SigLIP's learnable logit bias: train it with loss='siglip'.")
def siglip_tiny(pretrained: str | None = None, **overrides: Any) -> ClipModel:
    return _build("siglip-tiny", "raylens-siglip-tiny", pretrained, **overrides)


def open_clip_arch(name: str) -> str:
    """The open_clip architecture a model name is built from (``clip-tiny`` -> ``raylens-clip-tiny``)."""
    return f"raylens-{name}" if name in MODELS else name


def list_models(pattern: str = "*") -> list[str]:
    """Our registered models plus every open_clip architecture, filtered by a glob pattern."""
    import fnmatch

    ours = MODELS.names(pattern)
    theirs = [n for n in open_clip.list_models() if fnmatch.fnmatch(n, pattern) and not n.startswith("raylens-")]
    return ours + theirs


def create_model(name: str, pretrained: str | None = None, **overrides: Any) -> ClipModel:
    """Build a model by name; ``pretrained`` is a raylens checkpoint dir, a weights file or an open_clip tag.

    Raises:
        KeyError: unknown name (the message lists the close matches).
        CheckpointError: the checkpoint is for another model or incomplete.
    """
    if name in MODELS:
        return MODELS.create(name, pretrained=pretrained, **overrides)
    if name in open_clip.list_models():
        return _build(name, name, pretrained, **overrides)
    import difflib

    close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown model {name!r}.{hint} See raylens.models.list_models() for all names.")
