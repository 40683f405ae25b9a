"""CT + MR fusion classifiers built from MONAI networks: early, mid and late fusion, plus baselines.

Every model takes one input dict (a batch from :func:`~raylens_domains.medical.transforms.fusion_inputs`,
as tensors) and returns one logit per case:

* ``ct``: ``(B, S, S, S)`` windowed CT; ``mr_aligned``: the MR resampled onto the CT grid;
  ``mr``: the MR on its own grid; ``present``: ``(B, 2)`` with 1 where CT / MR exist.

The models:

* :class:`EarlyFusionNet`: CT and aligned MR stacked as 2 channels into one 3D MONAI ResNet (MONAI's
  own multi-modal pattern). A missing modality is a zero channel.
* :class:`MidFusionNet`: one encoder per modality up to ``fuse_stage``, then the feature maps are
  fused (``"concat"`` + a 1x1x1 conv, or ``"attention"``: softmax weights over the modalities that are
  present) and one shared trunk finishes. ``fuse_stage="pool"`` fuses the pooled feature vectors.
* :class:`LateFusionNet`: one classifier per modality; their probabilities are combined by the mean
  over present modalities, by learned weights (softmax over present modalities), or as learned
  weights on their log-odds (``combine="logit"``, a naive-Bayes product of experts).
* :class:`SingleModalityNet`: the CT-only / MR-only baselines.

Mid and late fusion predict from whichever modalities are present (the ``present`` mask); train
them with modality dropout (:class:`~raylens_domains.medical.train.FusionTrainConfig`). Every model
has ``embed(inputs)`` returning the pooled feature vector used for similar-case retrieval.

The models are registered as kind ``fusion`` in the one model registry (:mod:`raylens.models`), so
``create_model("mid", fuse="attention")``, ``list_models(kind="fusion")``, ``save_model`` and
``load_model`` serve them like every other model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from raylens.models import ModelRecord, register_model

__all__ = [
    "EncoderConfig",
    "StagedEncoder",
    "EarlyFusionNet",
    "MidFusionNet",
    "LateFusionNet",
    "SingleModalityNet",
    "FUSE_STAGES",
]

FUSE_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "pool")
"""Where mid fusion may join the modality branches: after this stage the trunk is shared."""


@dataclass(frozen=True)
class EncoderConfig:
    """A small MONAI ``ResNet`` (basic blocks), sized for 32^3 inputs on a CPU."""

    widths: tuple[int, int, int, int] = (8, 16, 32, 48)
    """Channels of layer1..layer4 (MONAI's ``block_inplanes``)."""
    layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    """Residual blocks per layer."""
    stem_stride: int = 2
    """Stride of the first conv (MONAI ``conv1_t_stride``); 2 halves the grid early."""
    stem_pool: bool = True
    """Max-pool after the first conv (MONAI's ``no_max_pool=False``): 4x cheaper, keeps small bright spots."""
    dropout: float = 0.1
    """Dropout before the classification head."""

    def __post_init__(self):
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths needs 4 positive channel counts, got {self.widths}")
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"layers needs 4 block counts >= 1, got {self.layers}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class StagedEncoder(nn.Module):
    """A MONAI 3D ResNet cut into stages (stem, layer1..4, pool) so fusion can join at any stage."""

    def __init__(self, in_channels: int, config: EncoderConfig = EncoderConfig()):
        super().__init__()
        from monai.networks.nets import ResNet

        net = ResNet(
            block="basic",
            layers=list(config.layers),
            block_inplanes=list(config.widths),
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=3,
            conv1_t_stride=config.stem_stride,
            no_max_pool=not config.stem_pool,
            feed_forward=False,
            num_classes=1,
        )
        self.stages = nn.ModuleDict(
            {
                "stem": nn.Sequential(net.conv1, net.bn1, net.act, *([net.maxpool] if config.stem_pool else [])),
                "layer1": net.layer1,
                "layer2": net.layer2,
                "layer3": net.layer3,
                "layer4": net.layer4,
            }
        )
        self.out_channels = {
            "stem": config.widths[0],
            "layer1": config.widths[0],
            "layer2": config.widths[1],
            "layer3": config.widths[2],
            "layer4": config.widths[3],
            "pool": config.widths[3],
        }

    def forward_range(self, x: torch.Tensor, start: str = "stem", stop: str = "pool") -> torch.Tensor:
        """Run stages from ``start`` (inclusive) to ``stop`` (inclusive); ``"pool"`` pools to (B, C)."""
        i0, i1 = FUSE_STAGES.index(start), FUSE_STAGES.index(stop)
        for name in FUSE_STAGES[i0 : i1 + 1]:
            x = _global_pool(x) if name == "pool" else self.stages[name](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_range(x)


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    """Average and max pooling, summed: keeps a small bright lesion visible after pooling."""
    if x.dim() == 2:
        return x
    return x.mean(dim=(2, 3, 4)) + x.amax(dim=(2, 3, 4))


def _channel(inputs: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    x = inputs[key]
    if x.dim() == 4:
        x = x.unsqueeze(1)
    return x.float()


def _present(inputs: dict[str, torch.Tensor], batch: int, device) -> torch.Tensor:
    p = inputs.get("present")
    if p is None:
        return torch.ones(batch, 2, device=device)
    return p.float().to(device)


class _FusionBase(nn.Module):
    """Shared bits: the config is kept for saving, and ``predict_proba`` gives probabilities."""

    kind: str = ""
    mr_key: str = "mr"

    def config_dict(self) -> dict:
        return dict(self._config)

    @property
    def raylens_record(self) -> ModelRecord:
        """Kind ``fusion``, the registry name and the resolved arguments (see ``raylens.models.save_model``)."""
        cfg = dict(self._config)
        return ModelRecord("fusion", cfg.pop("name"), cfg)

    def example_input(self, n: int = 2, size: int = 16) -> dict[str, torch.Tensor]:
        """A tiny batch (``n`` cases of ``size``^3 volumes, the second without MR) for ``model(x)``."""
        gen = torch.Generator().manual_seed(0)
        vol = {k: torch.rand(n, size, size, size, generator=gen) for k in ("ct", "mr_aligned", "mr")}
        present = torch.ones(n, 2)
        present[1:, 1] = 0
        return {**vol, "present": present}

    @torch.no_grad()
    def predict_proba(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        was = self.training
        self.eval()
        p = torch.sigmoid(self(inputs))
        self.train(was)
        return p


class EarlyFusionNet(_FusionBase):
    """Early fusion: ``[ct, mr_aligned]`` as two channels of one 3D ResNet."""

    kind = "early"
    mr_key = "mr_aligned"

    def __init__(self, encoder: EncoderConfig = EncoderConfig()):
        super().__init__()
        self._config = {"name": "early", "encoder": asdict(encoder)}
        self.encoder = StagedEncoder(2, encoder)
        self.head = nn.Sequential(nn.Dropout(encoder.dropout), nn.Linear(encoder.widths[-1], 1))

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        p = _present(inputs, inputs["ct"].shape[0], inputs["ct"].device)
        ct = _channel(inputs, "ct") * p[:, 0, None, None, None, None]
        mr = _channel(inputs, self.mr_key) * p[:, 1, None, None, None, None]
        return self.encoder(torch.cat([ct, mr], dim=1))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(inputs)).squeeze(-1)


class SingleModalityNet(_FusionBase):
    """Baseline: one 3D ResNet on one modality (``"ct"`` or ``"mr"``)."""

    def __init__(self, modality: str = "ct", encoder: EncoderConfig = EncoderConfig()):
        super().__init__()
        if modality not in ("ct", "mr"):
            raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
        self.kind = f"{modality}_only"
        self.modality = modality
        self._config = {"name": self.kind, "encoder": asdict(encoder)}
        self.encoder = StagedEncoder(1, encoder)
        self.head = nn.Sequential(nn.Dropout(encoder.dropout), nn.Linear(encoder.widths[-1], 1))

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(_channel(inputs, self.modality))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(inputs)).squeeze(-1)


class MidFusionNet(_FusionBase):
    """Mid fusion: per-modality encoders up to ``fuse_stage``, fused features, a shared trunk."""

    kind = "mid"

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(),
        *,
        fuse_stage: str = "layer3",
        fuse: str = "attention",
        aligned: bool = False,
    ):
        super().__init__()
        if fuse_stage not in FUSE_STAGES:
            raise ValueError(f"fuse_stage must be one of {FUSE_STAGES}, got {fuse_stage!r}")
        if fuse not in ("concat", "attention"):
            raise ValueError(f"fuse must be 'concat' or 'attention', got {fuse!r}")
        self._config = {
            "name": "mid",
            "encoder": asdict(encoder),
            "fuse_stage": fuse_stage,
            "fuse": fuse,
            "aligned": aligned,
        }
        self.fuse_stage, self.fuse = fuse_stage, fuse
        self.mr_key = "mr_aligned" if aligned else "mr"
        self.branches = nn.ModuleDict({"ct": StagedEncoder(1, encoder), "mr": StagedEncoder(1, encoder)})
        # the shared trunk reuses the CT branch's later stages (one set of weights after fusion)
        c = self.branches["ct"].out_channels[fuse_stage]
        spatial = fuse_stage != "pool"
        if fuse == "concat":
            self.fuser = nn.Conv3d(2 * c, c, kernel_size=1) if spatial else nn.Linear(2 * c, c)
        else:
            self.fuser = nn.Conv3d(c, 1, kernel_size=1) if spatial else nn.Linear(c, 1)
        self.head = nn.Sequential(nn.Dropout(encoder.dropout), nn.Linear(encoder.widths[-1], 1))

    def _fused(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ct_x = _channel(inputs, "ct")
        p = _present(inputs, ct_x.shape[0], ct_x.device)
        feats = [
            self.branches["ct"].forward_range(ct_x, "stem", self.fuse_stage),
            self.branches["mr"].forward_range(_channel(inputs, self.mr_key), "stem", self.fuse_stage),
        ]
        shape = (-1,) + (1,) * (feats[0].dim() - 1)
        if self.fuse == "concat":
            z = torch.cat([f * p[:, i].view(shape) for i, f in enumerate(feats)], dim=1)
            return torch.relu(self.fuser(z))
        scores = torch.stack([self.fuser(f) for f in feats], dim=1)  # (B, 2, 1, ...) or (B, 2, 1)
        mask = p.view((p.shape[0], 2) + (1,) * (scores.dim() - 2)) > 0
        scores = scores.masked_fill(~mask, -1e4)
        alpha = torch.softmax(scores, dim=1)
        return (alpha * torch.stack(feats, dim=1)).sum(dim=1)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self._fused(inputs)
        if self.fuse_stage == "pool":
            return z
        nxt = FUSE_STAGES[FUSE_STAGES.index(self.fuse_stage) + 1]
        return self.branches["ct"].forward_range(z, nxt, "pool")

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(inputs)).squeeze(-1)


class LateFusionNet(_FusionBase):
    """Late fusion: one classifier per modality, their outputs combined over the modalities present.

    ``combine``:

    * ``"mean"``: the mean of the members' probabilities;
    * ``"learned"``: a weighted mean of the probabilities, weights learned (softmax over modalities);
    * ``"logit"``: learned weights on the members' log-odds plus a bias, ``sigmoid(sum w_m l_m + b)``:
      the naive-Bayes product of experts, which expresses "positive only if both agree" (an AND of
      findings) where a mean of probabilities cannot.
    """

    kind = "late"
    COMBINES = ("mean", "learned", "logit")

    def __init__(self, encoder: EncoderConfig = EncoderConfig(), *, combine: str = "logit"):
        super().__init__()
        if combine not in self.COMBINES:
            raise ValueError(f"combine must be one of {self.COMBINES}, got {combine!r}")
        self._config = {"name": "late", "encoder": asdict(encoder), "combine": combine}
        self.combine = combine
        self.members = nn.ModuleDict({"ct": SingleModalityNet("ct", encoder), "mr": SingleModalityNet("mr", encoder)})
        init = torch.ones(2) if combine == "logit" else torch.zeros(2)
        self.weight_logits = nn.Parameter(init, requires_grad=combine != "mean")
        self.bias = nn.Parameter(torch.zeros(1), requires_grad=combine == "logit")

    def member_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, 2)`` logits of the CT and MR members (each computed even if absent)."""
        return torch.stack([self.members["ct"](inputs), self.members["mr"](inputs)], dim=1)

    def combine_logit(self, member_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The fused logit from member logits, using only the modalities marked present."""
        if self.combine == "logit":
            return (self.weight_logits * member_logits * (present > 0)).sum(dim=1) + self.bias
        probs = torch.sigmoid(member_logits)
        w = self.weight_logits.expand_as(probs).masked_fill(present <= 0, -1e4)
        prob = (torch.softmax(w, dim=1) * probs).sum(dim=1).clamp(1e-6, 1 - 1e-6)
        return torch.log(prob) - torch.log1p(-prob)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        p = _present(inputs, inputs["ct"].shape[0], inputs["ct"].device)
        e = [self.members[m].embed(inputs) * p[:, i, None] for i, m in enumerate(("ct", "mr"))]
        return torch.cat(e, dim=1)

    def forward(self, inputs: dict[str, torch.Tensor], return_members: bool = False):
        """The fused logit ``(B,)``; with ``return_members`` also the members' logits ``(B, 2)``."""
        p = _present(inputs, inputs["ct"].shape[0], inputs["ct"].device)
        members = self.member_logits(inputs)
        fused = self.combine_logit(members, p)
        return (fused, members) if return_members else fused


def _encoder(encoder: EncoderConfig | dict | None) -> EncoderConfig:
    if encoder is None:
        return EncoderConfig()
    if isinstance(encoder, dict):
        return EncoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in encoder.items()})
    return encoder


@register_model("early", kind="fusion")
def early(encoder=None) -> EarlyFusionNet:
    """Early fusion: CT + aligned MR as 2 channels of one 3D ResNet."""
    return EarlyFusionNet(_encoder(encoder))


@register_model("mid", kind="fusion")
def mid(encoder=None, fuse_stage: str = "layer3", fuse: str = "attention", aligned: bool = False) -> MidFusionNet:
    """Mid fusion: per-modality encoders, features fused at ``fuse_stage`` (concat or attention)."""
    return MidFusionNet(_encoder(encoder), fuse_stage=fuse_stage, fuse=fuse, aligned=aligned)


@register_model("late", kind="fusion")
def late(encoder=None, combine: str = "logit") -> LateFusionNet:
    """Late fusion: per-modality classifiers, outputs combined (mean, learned weights, or learned log-odds)."""
    return LateFusionNet(_encoder(encoder), combine=combine)


@register_model("ct_only", kind="fusion")
def ct_only(encoder=None) -> SingleModalityNet:
    """Baseline: CT alone."""
    return SingleModalityNet("ct", _encoder(encoder))


@register_model("mr_only", kind="fusion")
def mr_only(encoder=None) -> SingleModalityNet:
    """Baseline: MR alone."""
    return SingleModalityNet("mr", _encoder(encoder))
