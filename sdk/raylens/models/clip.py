"""CLIP models (kind ``clip``): our small open_clip configs plus every open_clip architecture.

Our models are registered with :func:`~raylens.models.register_model`; every other open_clip
architecture is served by the ``open_clip`` :class:`~raylens.models.registry.ModelFamily`.

>>> from raylens.models import create_model, list_models
>>> "clip-tiny" in list_models("clip-*")
True
>>> m = create_model("clip-tiny")
>>> m.encode_texts(["a red circle"]).shape
(1, 128)
"""

from __future__ import annotations

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
from raylens.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, file_sha256, read_checkpoint
from raylens.models.registry import MODELS, ModelFamily, ModelRecord, register_family, register_model

__all__ = [
    "ClipModel",
    "ModelSpec",
    "OPEN_CLIP_FAMILY",
    "open_clip_arch",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "file_sha256",
]

_CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(_CONFIG_DIR)  # so plain open_clip knows "raylens-clip-tiny" too


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
    ``model_config`` holds the open_clip overrides it was built with (saved in its checkpoint).
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: torch.nn.Module,
        checkpoint_hash: str = "untrained",
        model_config: dict[str, Any] | None = None,
    ):
        self.spec = spec
        self.model = model
        self.model_config = dict(model_config or {})
        self.tokenizer = _tokenizer(spec)
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
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # Ray's object store hands out read-only views; torch wants writable memory
        x = torch.as_tensor(images, dtype=torch.float32, device=self.device)
        if x.ndim != 4 or x.shape[1:] != (3, self.spec.image_size, self.spec.image_size):
            s = self.spec.image_size
            raise ValueError(f"images must be preprocessed to (N, 3, {s}, {s}), got {tuple(x.shape)}")
        if self.model.training:  # eval() walks every module: not on every call
            self.model.eval()
        return F.normalize(self.model.encode_image(x).float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> ``(N, D)`` unit vectors."""
        tokens = self.tokenize(texts).to(self.device)
        if self.model.training:  # eval() walks every module: not on every call
            self.model.eval()
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()

    def to(self, device: str | torch.device) -> ClipModel:
        self.model.to(device)
        return self

    @property
    def raylens_record(self) -> ModelRecord:
        """Kind ``clip``, the registry name and the open_clip overrides (see :func:`raylens.models.save_model`)."""
        return ModelRecord("clip", self.spec.name, dict(self.model_config))

    def checkpoint_extra(self) -> dict[str, Any]:
        """The ``model`` spec and ``open_clip`` config keys: plain open_clip rebuilds the model from them."""
        oc_cfg = dict(open_clip.get_model_config(self.spec.open_clip_name) or {})
        if getattr(self.model, "logit_bias", None) is not None:
            oc_cfg.setdefault("init_logit_bias", float(self.model.logit_bias.detach().reshape(-1)[0]))
        return {"model": self.spec.to_dict(), "open_clip": oc_cfg}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        return self.model.load_state_dict(state, strict=strict)

    def eval(self) -> ClipModel:
        self.model.eval()
        return self

    def example_input(self, n: int = 2) -> dict[str, torch.Tensor]:
        """Random images and two captions' tokens: ``clip(clip.example_input())`` runs a forward pass."""
        s = self.spec.image_size
        gen = torch.Generator().manual_seed(0)
        image = torch.rand(n, 3, s, s, generator=gen).to(self.device)
        texts = [("a red circle", "a blue square")[i % 2] for i in range(n)]
        return {"image": image, "text": self.tokenize(texts).to(self.device)}

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """open_clip's forward: ``{"image", "text"}`` tensors -> ``image_features``, ``text_features``, ``logit_scale``."""
        return self.model(image=inputs.get("image"), text=inputs.get("text"))

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint (see :func:`raylens.models.save_model`): weights, config and ``extra``."""
        from raylens.models.save_load import save_model

        return save_model(self, directory, extra=extra)


def _tokenizer(spec: ModelSpec):
    """open_clip's tokenizer for the architecture; our configs use its SimpleTokenizer (CLIP's BPE).

    open_clip picks a SigLIP sentencepiece tokenizer (a download) for any name holding "siglip",
    which ``raylens-siglip-tiny`` does, though its text tower is sized for CLIP's BPE vocabulary.
    """
    if spec.open_clip_name.startswith("raylens-"):
        return open_clip.SimpleTokenizer(context_length=spec.context_length)
    return open_clip.get_tokenizer(spec.open_clip_name, context_length=spec.context_length)


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
    return ClipModel(spec, model, digest, model_config=overrides)


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
        w = p / WEIGHTS_FILE
        if not w.is_file():
            raise CheckpointError(f"checkpoint dir {str(p)!r} has no {WEIGHTS_FILE}; point at a dir saved by raylens")
        if not (p / CONFIG_FILE).is_file():
            return str(w), file_sha256(w)
        ck = read_checkpoint(p)
        if ck.kind != "clip":
            raise CheckpointError(
                f"checkpoint {str(p)!r} holds a {ck.kind} model ({ck.arch!r}), not a CLIP model; "
                "load it with raylens.models.load_model"
            )
        saved = ck.config.get("model", {}).get("open_clip_name")
        if saved and saved != spec.open_clip_name:
            raise CheckpointError(
                f"checkpoint {str(p)!r} holds a {saved!r} model, not {spec.open_clip_name!r}; "
                f"call create_model({ck.arch!r}, pretrained=...)"
            )
        return str(w), ck.checkpoint_hash
    if p.suffix in (".safetensors", ".pt", ".bin", ".pth"):
        if not p.is_file():
            raise FileNotFoundError(f"pretrained weights {str(p)!r} do not exist")
        return str(p), file_sha256(p)
    return pretrained, f"open_clip:{pretrained}"  # an open_clip pretrained tag; open_clip resolves it


@register_model(
    "clip-tiny",
    kind="clip",
    doc="Tiny CLIP (timm test_resnet image tower at 32px, 2-layer text tower); trains on CPU in minutes.",
)
def clip_tiny(pretrained: str | None = None, **overrides: Any) -> ClipModel:
    return _build("clip-tiny", "raylens-clip-tiny", pretrained, **overrides)


@register_model(
    "clip-small", kind="clip", doc="Small CLIP (ViT at 64px, 4-layer text tower), for GPU or patient CPU runs."
)
def clip_small(pretrained: str | None = None, **overrides: Any) -> ClipModel:
    return _build("clip-small", "raylens-clip-small", pretrained, **overrides)


@register_model(
    "siglip-tiny", kind="clip", doc="clip-tiny with SigLIP's learnable logit bias: train it with loss='siglip'."
)
def siglip_tiny(pretrained: str | None = None, **overrides: Any) -> ClipModel:
    return _build("siglip-tiny", "raylens-siglip-tiny", pretrained, **overrides)


def open_clip_arch(name: str) -> str:
    """The open_clip architecture a model name is built from (``clip-tiny`` -> ``raylens-clip-tiny``)."""
    return f"raylens-{name}" if name in MODELS and MODELS.meta(name)["kind"] == "clip" else name


def _open_clip_names() -> list[str]:
    return [n for n in open_clip.list_models() if not n.startswith("raylens-")]


OPEN_CLIP_FAMILY = register_family(
    ModelFamily(
        name="open_clip",
        kind="clip",
        names=_open_clip_names,
        create=lambda name, pretrained=None, **overrides: _build(name, name, pretrained, **overrides),
        doc="open_clip architecture (pretrained= an open_clip tag, a weights file or a raylens checkpoint)",
    )
)
