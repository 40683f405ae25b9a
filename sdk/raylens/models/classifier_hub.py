"""Where a classifier comes from, and the head contract every classifier keeps.

Every ``classifier``-kind model maps ``(N, 3, S, S)`` float images to ``(N, num_classes)`` logits.
Ours (:mod:`~raylens.models.cnn`, :mod:`~raylens.models.resnet`, :mod:`~raylens.models.vit`) also
have ``num_classes``, ``reset_head(n)``, ``get_classifier()`` and ``example_input()``; timm models
have ``num_classes``, ``reset_classifier(n)`` and ``get_classifier()``. The functions here work on
both: :func:`num_classes_of`, :func:`new_head` (calls ``reset_head``/``reset_classifier``), :func:`load_pretrained`.

:func:`create_classifier` resolves any of the four ways to name a classifier:

* a registered name: ``create_classifier("vit_tiny", num_classes=10)``;
* a timm name, with or without the ``timm/`` prefix: ``create_classifier("resnet18", num_classes=10)``;
* a transformers ViT folder (``save_pretrained`` files): ``create_classifier("hf/vit-dir", num_classes=10, reset_head=True)``;
* a raylens checkpoint directory (any classifier arch): ``create_classifier("runs/ckpt")``.

A checkpoint whose head has another number of classes than asked for is an error that says so,
unless ``reset_head=True`` (the other weights are kept, the head starts anew).

>>> m = create_classifier("small_cnn", num_classes=3)
>>> num_classes_of(m), tuple(m(m.example_input()).shape)
(3, (2, 3))
>>> num_classes_of(new_head(m, 5))
5
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raylens.errors import CheckpointError
from raylens.models.checkpoint import CONFIG_FILE, FORMAT, WEIGHTS_FILE, read_checkpoint
from raylens.models.registry import (
    ModelRecord,
    attach_record,
    create_model,
    list_models,
    model_info,
    model_record,
    unwrap_model,
)

__all__ = [
    "CLASSIFIER_KIND",
    "create_classifier",
    "load_classifier",
    "num_classes_of",
    "new_head",
    "classifier_head",
    "load_pretrained",
    "finish_classifier",
    "is_hf_folder",
]

CLASSIFIER_KIND = "classifier"
_NOT_ARCH = ("pretrained", "reset_head")
"""Factory arguments that say where weights come from, not what the architecture is."""


def finish_classifier(model: nn.Module, arch: str, config: dict[str, Any]) -> nn.Module:
    """Attach the record ``create_model(arch, **config)`` rebuilds from (weight sources left out)."""
    clean = {k: v for k, v in config.items() if k not in _NOT_ARCH and v is not None}
    return attach_record(model, ModelRecord(CLASSIFIER_KIND, arch, clean))


def num_classes_of(model: Any) -> int:
    """How many classes the model's head predicts (ours, timm's, a DDP-wrapped one)."""
    model = unwrap_model(model)
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    raise TypeError(
        f"{type(model).__name__} has no `num_classes`: a classifier must say how many classes its head predicts"
    )


def classifier_head(model: Any) -> nn.Module:
    """The final layer mapping features to logits (``get_classifier()``, as timm names it)."""
    model = unwrap_model(model)
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        raise TypeError(f"{type(model).__name__} has no get_classifier(): it does not follow the classifier contract")
    return get()


def new_head(model: Any, num_classes: int) -> Any:
    """Give ``model`` a new, freshly initialised head of ``num_classes`` outputs; returns the model.

    The model's record is updated, so :func:`raylens.models.save_model` saves the new shape.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    inner = unwrap_model(model)
    if callable(getattr(inner, "reset_head", None)):
        inner.reset_head(num_classes)
    elif callable(getattr(inner, "reset_classifier", None)):  # timm
        inner.reset_classifier(num_classes)
    else:
        raise TypeError(f"{type(inner).__name__} has neither reset_head(n) nor timm's reset_classifier(n)")
    rec = getattr(inner, "raylens_record", None)
    if isinstance(rec, ModelRecord):
        attach_record(inner, ModelRecord(rec.kind, rec.arch, {**rec.model_config, "num_classes": num_classes}))
    return model


def _weights_file(source: str | Path) -> Path:
    p = Path(source).expanduser()
    weights = p / WEIGHTS_FILE if p.is_dir() else p
    if not weights.is_file() or weights.suffix != ".safetensors":
        raise FileNotFoundError(
            f"pretrained={str(source)!r}: give a raylens checkpoint directory or a .safetensors file "
            "(weights are read from disk, never downloaded)"
        )
    return weights


def load_pretrained(model: nn.Module, source: str | Path, *, reset_head: bool = False) -> nn.Module:
    """Load weights from a raylens checkpoint directory or ``.safetensors`` file into ``model``.

    When only the head differs in shape (another number of classes), this is an error naming both
    sizes, unless ``reset_head`` is true: then the head keeps its fresh initialisation and every
    other weight is loaded.

    Raises:
        FileNotFoundError: no weights at ``source``.
        ValueError: the head has another size and ``reset_head`` is false.
        CheckpointError: weights of another architecture.
    """
    from safetensors.torch import load_file

    weights = _weights_file(source)
    state = load_file(str(weights))
    own = model.state_dict()
    head_keys = _head_keys(model)
    wrong = {k for k in state if k in own and state[k].shape != own[k].shape}
    if wrong and wrong <= head_keys:
        if not reset_head:
            k = sorted(wrong)[0]
            raise ValueError(
                f"{str(source)!r} holds a {state[k].shape[0]}-class head but the model was asked for "
                f"{own[k].shape[0]} classes: pass reset_head=True to keep every other weight and train a new "
                f"{own[k].shape[0]}-class head, or num_classes={state[k].shape[0]} to keep the head"
            )
        state = {k: v for k, v in state.items() if k not in wrong}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{str(source)!r}: the weights do not fit {type(model).__name__} ({e})") from e
    missing = [k for k in missing if not (reset_head and k in wrong)]
    if missing or unexpected:
        raise CheckpointError(
            f"{str(source)!r}: the weights do not fit {type(model).__name__}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; was it saved from another architecture?"
        )
    return model


def _head_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the model's head."""
    head = classifier_head(model)
    for name, module in model.named_modules():
        if module is head:
            return {f"{name}.{p}" if name else p for p, _ in head.named_parameters()}
    return set()


def is_hf_folder(path: str | Path) -> bool:
    """Is ``path`` a transformers model folder (``config.json`` with a ``model_type``, no raylens format)?"""
    cfg = Path(path).expanduser() / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return isinstance(data, dict) and "model_type" in data and data.get("format") != FORMAT


def load_classifier(path: str | Path, device: str | torch.device = "cpu", *, ema: bool = False) -> nn.Module:
    """Load a ``classifier`` checkpoint (in eval mode); a checkpoint of another kind is an error.

    Args:
        path: a raylens checkpoint directory.
        device: where to put the model.
        ema: load the EMA weights (``ema.safetensors``, written by training with ``ema_decay``) when present.

    Raises:
        CheckpointError: no checkpoint there, or one of another kind (a CLIP or fusion model, say).
    """
    from raylens.models.save_load import load_model

    ck = read_checkpoint(path)
    if ck.kind != CLASSIFIER_KIND:
        raise CheckpointError(
            f"{str(ck.directory)!r} holds a {ck.kind} model ({ck.arch!r}), not a classifier: give a checkpoint "
            f"written by classifier training (raylens train classify), or load it with raylens.models.load_model"
        )
    model = load_model(ck.directory, device=device)
    ema_file = ck.directory / "ema.safetensors"
    if ema and ema_file.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ema_file), device=str(device)))
    return model


def _timm_name(name: str) -> str | None:
    """``timm/<name>`` when ``name`` (with or without the prefix) is a timm architecture, else None."""
    import timm

    bare = name.removeprefix("timm/")
    return f"timm/{bare}" if bare in set(timm.list_models()) else None


def create_classifier(
    source: str | Path, num_classes: int | None = None, *, reset_head: bool = False, **overrides: Any
) -> nn.Module:
    """A classifier from a registered name, a timm name, a transformers ViT folder or a raylens checkpoint.

    Args:
        source: ``vit_tiny``/``small_resnet``/... (``raylens models --kind classifier``), a timm
            architecture (``resnet18`` or ``timm/resnet18``), a ``save_pretrained`` ViT folder, or a
            raylens classifier checkpoint directory.
        num_classes: classes of the head. For a name, the model is built with it; for a folder or a
            checkpoint, None keeps the saved head and another number needs ``reset_head``.
        reset_head: start a new head of ``num_classes`` outputs when the saved one has another size.
        **overrides: more factory arguments (``image_size=32``, ``patch_size=8``, ...); for a name only.

    Raises:
        KeyError: an unknown name (close matches listed).
        ValueError: a saved head of another size without ``reset_head``.
        CheckpointError: a checkpoint of another kind (CLIP, fusion, ...).
    """
    src = str(source)
    path = Path(src).expanduser()
    if path.is_dir():
        if overrides:
            raise ValueError(
                f"{src!r} is a saved model: its architecture is fixed, so {sorted(overrides)} cannot be changed; "
                "pass only num_classes (and reset_head)"
            )
        if is_hf_folder(path):
            return create_model("vit", pretrained=str(path), num_classes=num_classes, reset_head=reset_head)
        model = load_classifier(path)
        if num_classes is not None and num_classes != num_classes_of(model):
            if not reset_head:
                raise ValueError(
                    f"{src!r} holds a {num_classes_of(model)}-class head but num_classes={num_classes} was asked "
                    f"for: pass reset_head=True to keep every other weight and train a new head"
                )
            new_head(model, num_classes)
        return model.train()
    kwargs = dict(overrides, num_classes=num_classes)
    try:
        info = model_info(src)
    except KeyError:
        timm_name = _timm_name(src)
        if timm_name is None:
            raise KeyError(
                f"{src!r} is not a classifier name, a timm architecture, nor a folder; registered classifiers: "
                f"{', '.join(list_models(kind=CLASSIFIER_KIND)[:12])}, ... (raylens models --kind classifier)"
            ) from None
        return create_model(timm_name, **kwargs)
    if info.kind != CLASSIFIER_KIND:
        raise ValueError(f"{src!r} is a {info.kind} model, not a classifier; see raylens models --kind classifier")
    model = create_model(src, **kwargs)
    model_record(model)  # every classifier carries its record
    return model
