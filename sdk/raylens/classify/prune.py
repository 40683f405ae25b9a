"""Structured L1 channel pruning that removes channels: smaller tensors, fewer FLOPs, a smaller file.

A convolution's output channels can be removed when they flow, through nothing but channel-wise
layers (BatchNorm, activations, pooling, dropout), into exactly one consumer: the next convolution
(its input channels go too) or, after a flatten, a linear layer (its input features go too). The
graph is read with ``torch.fx``; channels on a residual stream (summed with another branch) are left
alone, so a ResNet loses the inner channels of each block and a plain CNN loses channels everywhere
but its first input and its classes. The channels kept are the ones whose filters have the largest
L1 norm (Li et al., 2017, "Pruning Filters for Efficient ConvNets"); fine-tune afterwards
(:func:`raylens.classify.finetune.fine_tune`) to win back the accuracy.

A pruned model is the registered classifier ``pruned``: ``create_model("pruned", base=ARCH,
base_config={...}, channels={conv name: channels kept})`` rebuilds it (the base, shrunk), so
:func:`raylens.models.save_model` and :func:`raylens.models.load_model` work as for any model.

>>> from raylens.models import create_model, model_record
>>> m = create_model("timm/test_resnet", num_classes=3)
>>> r = prune_channels(m, amount=0.5)
>>> r.params_after < r.params_before, model_record(r.model).arch
(True, 'pruned')
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raylens.classify.common import count_parameters
from raylens.models.registry import ModelRecord, attach_record, create_model, model_record, register_model

__all__ = ["PrunableChain", "PruneResult", "find_prunable", "prune_channels", "shrink_to", "pruned"]

_CHANNEL_WISE_MODULES = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_CHANNEL_WISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.leaky_relu,
    F.elu,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
}
_CHANNEL_WISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}


@dataclass(frozen=True)
class PrunableChain:
    """A convolution whose output channels can go, and the layers that must shrink with it."""

    conv: str
    """The convolution whose output channels are pruned."""
    norms: tuple[str, ...]
    """BatchNorm layers on the way (their channels go too)."""
    consumer: str
    """The convolution or linear layer whose inputs shrink."""
    features_per_channel: int = 1
    """For a linear consumer after a flatten: input features per channel (the flattened H * W)."""


@dataclass
class PruneResult:
    """The pruned model and what was removed."""

    model: torch.nn.Module
    channels: dict[str, tuple[int, int]]
    """``{conv name: (channels before, channels after)}`` of every pruned convolution."""
    params_before: int
    params_after: int
    chains: list[PrunableChain] = field(default_factory=list)

    @property
    def param_ratio(self) -> float:
        """Parameters after / before."""
        return self.params_after / self.params_before


def _trace(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds on untraceable code
        raise ValueError(
            f"cannot prune {type(model).__name__}: torch.fx could not trace it ({type(e).__name__}: {e}). "
            "Channel pruning needs an fx-traceable CNN (timm CNNs and raylens' own CNNs are)"
        ) from e
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    finally:
        model.train(was)
    return gm


def _follow(node: torch.fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> PrunableChain | None:
    """The chain from a convolution's output to its one consumer, or None when the channels must stay."""
    norms: list[str] = []
    cur = node
    flat_features = 0
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None
        u = users[0]
        if not u.args or u.args[0] is not cur or any(a is cur for a in list(u.args[1:]) + list(u.kwargs.values())):
            return None
        if u.op == "call_module":
            m = modules[u.target]
            if calls.get(u.target, 0) != 1:
                return None
            if isinstance(m, nn.Conv2d) and not flat_features:
                return PrunableChain(node.target, tuple(norms), u.target) if m.groups == 1 else None
            if isinstance(m, nn.Linear):
                return PrunableChain(node.target, tuple(norms), u.target, flat_features) if flat_features else None
            if isinstance(m, nn.Flatten) and not flat_features and m.start_dim == 1 and m.end_dim == -1:
                flat_features = _spatial(cur)
            elif isinstance(m, nn.BatchNorm2d) and not flat_features:
                norms.append(u.target)
            elif not isinstance(m, _CHANNEL_WISE_MODULES) or (
                flat_features and not isinstance(m, (nn.Dropout, nn.Identity))
            ):
                return None
        elif u.op == "call_function" and u.target is torch.flatten and not flat_features:
            if (u.args[1] if len(u.args) > 1 else u.kwargs.get("start_dim", 0)) != 1:
                return None
            flat_features = _spatial(cur)
        elif u.op == "call_method" and u.target == "flatten" and not flat_features:
            if (u.args[1] if len(u.args) > 1 else u.kwargs.get("start_dim", 0)) != 1:
                return None
            flat_features = _spatial(cur)
        elif u.op == "call_function" and u.target in _CHANNEL_WISE_FUNCTIONS and not flat_features:
            pass
        elif u.op == "call_method" and u.target in _CHANNEL_WISE_METHODS and not flat_features:
            pass
        else:
            return None
        if flat_features == -1:
            return None
        cur = u


def _spatial(node: torch.fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[2] * shape[3]) if shape is not None and len(shape) == 4 else -1


def find_prunable(model: nn.Module, example: torch.Tensor | None = None) -> list[PrunableChain]:
    """Every :class:`PrunableChain` of ``model`` (traced on ``example``, default a 32 px image)."""
    example = torch.rand(1, 3, 32, 32) if example is None else example
    gm = _trace(model, example)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    chains = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d) and calls[n.target] == 1:
            chain = _follow(n, modules, calls)
            if chain is not None:
                chains.append(chain)
    return chains


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous())


def _apply(model: nn.Module, chain: PrunableChain, keep: torch.Tensor) -> None:
    """Remove every channel of ``chain`` not in ``keep`` (sorted indices) from the modules themselves."""
    modules = dict(model.named_modules())
    conv = modules[chain.conv]
    conv.weight = _param(conv.weight[keep])
    if conv.bias is not None:
        conv.bias = _param(conv.bias[keep])
    conv.out_channels = len(keep)
    for name in chain.norms:
        bn = modules[name]
        if bn.affine:
            bn.weight, bn.bias = _param(bn.weight[keep]), _param(bn.bias[keep])
        if bn.running_mean is not None:
            bn.running_mean = bn.running_mean[keep].clone()
            bn.running_var = bn.running_var[keep].clone()
        bn.num_features = len(keep)
    nxt = modules[chain.consumer]
    if isinstance(nxt, nn.Conv2d):
        nxt.weight = _param(nxt.weight[:, keep])
        nxt.in_channels = len(keep)
    else:
        k = chain.features_per_channel
        idx = (keep.view(-1, 1) * k + torch.arange(k).view(1, -1)).flatten()
        nxt.weight = _param(nxt.weight[:, idx])
        nxt.in_features = len(idx)


def _record_for(model: nn.Module, channels: dict[str, int], image_size: int) -> ModelRecord | None:
    try:
        rec = model_record(model)
    except TypeError:
        return None
    if rec.arch == "pruned":
        cfg = dict(rec.model_config)
        return ModelRecord("classifier", "pruned", {**cfg, "channels": {**cfg.get("channels", {}), **channels}})
    cfg = {"base": rec.arch, "base_config": dict(rec.model_config), "channels": channels, "image_size": image_size}
    return ModelRecord("classifier", "pruned", cfg)


def prune_channels(
    model: nn.Module,
    amount: float = 0.5,
    *,
    example_input: torch.Tensor | None = None,
    round_to: int = 1,
    inplace: bool = False,
) -> PruneResult:
    """Remove ``amount`` of the output channels of every prunable convolution, by filter L1 norm.

    Args:
        model: a classifier (a copy is pruned unless ``inplace``).
        amount: the share of channels removed in each prunable convolution, in [0, 1).
        example_input: an input the model takes (default ``(1, 3, 32, 32)``), for tracing shapes.
        round_to: keep a multiple of this many channels (8 suits SIMD kernels); at least one is kept.

    Raises:
        ValueError: ``amount`` out of range, or a model torch.fx cannot trace, or nothing to prune.
    """
    if not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"`amount` is the share of channels removed and must be in [0, 1), got {amount!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"`round_to` must be an int >= 1, got {round_to!r}")
    target = model if inplace else copy.deepcopy(model)
    before = count_parameters(target)
    chains = find_prunable(target, example_input)
    if not chains:
        raise ValueError(
            f"{type(model).__name__} has no convolution whose channels can be removed "
            "(each must feed exactly one convolution or flatten + linear through channel-wise layers)"
        )
    modules = dict(target.named_modules())
    channels: dict[str, tuple[int, int]] = {}
    keeps = {}
    for chain in chains:  # score every filter on the trained weights first, then cut
        w = modules[chain.conv].weight.detach()
        n = w.shape[0]
        k = max(1, int(round(n * (1 - amount))))
        k = min(n, max(round_to, (k + round_to - 1) // round_to * round_to)) if round_to > 1 else k
        keeps[chain.conv] = torch.sort(torch.topk(w.abs().flatten(1).sum(1), k).indices).values
        channels[chain.conv] = (n, k)
    for chain in chains:
        _apply(target, chain, keeps[chain.conv])
    size = int(example_input.shape[-1]) if example_input is not None else 32
    rec = _record_for(target, {name: after for name, (_, after) in channels.items()}, size)
    if rec is not None:
        attach_record(target, rec)
    return PruneResult(target, channels, before, count_parameters(target), chains)


def shrink_to(model: nn.Module, channels: dict[str, int], example_input: torch.Tensor | None = None) -> nn.Module:
    """Give ``model`` the shapes of a pruned model (``{conv name: channels}``) so its weights load."""
    chains = {c.conv: c for c in find_prunable(model, example_input)}
    unknown = sorted(set(channels) - set(chains))
    if unknown:
        raise ValueError(f"`channels` names convolutions that cannot be pruned in this model: {unknown}")
    for name, k in channels.items():
        n = dict(model.named_modules())[name].out_channels
        if not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"`channels[{name!r}]` must be an int in [1, {n}], got {k!r}")
        _apply(model, chains[name], torch.arange(k))
    return model


@register_model(
    "pruned",
    kind="classifier",
    doc="A classifier with channels removed by raylens.classify.prune_channels (base=ARCH, channels={...})",
    example_input=lambda model: torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
    test_overrides={"base": "timm/test_resnet", "base_config": {"num_classes": 3}, "channels": {"layer1.0.conv1": 4}},
)
def pruned(
    base: str = "timm/test_resnet",
    base_config: dict[str, Any] | None = None,
    channels: dict[str, int] | None = None,
    image_size: int = 32,
) -> nn.Module:
    """The architecture ``base`` (``create_model(base, **base_config)``) with ``channels`` kept per convolution."""
    model = create_model(base, **dict(base_config or {}))
    shrink_to(model, dict(channels or {}), torch.rand(1, 3, image_size, image_size))
    cfg = {
        "base": base,
        "base_config": dict(base_config or {}),
        "channels": dict(channels or {}),
        "image_size": image_size,
    }
    return attach_record(model, ModelRecord("classifier", "pruned", cfg))
