"""``save_model`` and ``load_model``: any model kind to a ``raylens.checkpoint/1`` directory and back.

A model is anything with ``state_dict()``/``load_state_dict()`` (a ``torch.nn.Module``, or a wrapper
such as :class:`~raylens.models.clip.ClipModel`) carrying a :class:`~raylens.models.registry.ModelRecord`
(:func:`~raylens.models.create_model` attaches one). Optional, on the model:

* ``checkpoint_extra() -> dict``: kind-specific ``config.json`` keys (CLIP writes its ``model`` spec
  and ``open_clip`` config there, so plain open_clip still loads the weights);
* ``checkpoint_hash``: updated by :func:`save_model` and set by :func:`load_model`.

A kind with a native format registers ``save=fn(model, directory) -> weights file name`` and
``load=fn(checkpoint, device) -> model`` with :func:`~raylens.models.register_model`; our keys are
merged into the native ``config.json``.

>>> import tempfile
>>> from raylens.models import create_model, load_model, save_model
>>> m = create_model("timm/test_resnet", num_classes=3)
>>> again = load_model(save_model(m, tempfile.mkdtemp()))
>>> type(again).__name__, again.raylens_record.model_config
('ResNet', {'num_classes': 3})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from raylens.errors import CheckpointError
from raylens.models.checkpoint import (
    WEIGHTS_FILE,
    Checkpoint,
    jsonable,
    read_checkpoint,
    save_weights,
    write_config,
)
from raylens.models.registry import (
    MODELS,
    ModelRecord,
    attach_record,
    create_model,
    model_info,
    model_record,
    unwrap_model,
)

__all__ = ["save_model", "load_model"]


def save_model(model: Any, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (any kind) as a format-1 checkpoint directory; returns the directory.

    Args:
        model: a model from :func:`~raylens.models.create_model` or :func:`load_model` (DDP- and
            ``torch.compile``-wrapped models are unwrapped).
        directory: created if needed; an existing ``config.json``/``model.safetensors`` is replaced.
        extra: more ``config.json`` keys (``train``, ``run``, ``step``, ``epoch``, ``classes``, ...).

    Raises:
        TypeError: the model carries no record (it was not built by ``create_model``).
        ValueError: its config or ``extra`` holds something JSON cannot (the message names the key).
    """
    model = unwrap_model(model)
    rec = model_record(model)
    directory = Path(directory)
    model_config = jsonable(dict(rec.model_config), "model_config")
    own = model.checkpoint_extra() if callable(getattr(model, "checkpoint_extra", None)) else {}
    merged = {**own, **(extra or {})}
    jsonable(merged, "extra")
    saver = MODELS.meta(rec.arch).get("save") if rec.arch in MODELS else None
    if saver is not None:
        directory.mkdir(parents=True, exist_ok=True)
        weights_file = saver(model, directory) or WEIGHTS_FILE
        keep = True
    else:
        save_weights(model.state_dict(), directory)
        weights_file, keep = WEIGHTS_FILE, False
    config = write_config(
        directory,
        kind=rec.kind,
        arch=rec.arch,
        model_config=model_config,
        extra=merged,
        weights_file=weights_file,
        keep_existing=keep,
    )
    _set_hash(model, config["checkpoint_hash"])
    return directory


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """Load a checkpoint directory of any kind (format 1, or an older layout) onto ``device``, in eval mode.

    The model is rebuilt with ``create_model(arch, **model_config)`` and its weights loaded strictly
    from ``model.safetensors`` (nothing is unpickled). It carries its record and ``checkpoint_hash``.

    Raises:
        CheckpointError: no checkpoint there, or weights that do not fit the architecture.
        KeyError: the architecture is not registered (is its domain pack installed?).
    """
    ck = read_checkpoint(path)
    if ck.config.get("runtime", "torch") != "torch":  # e.g. an exported ONNX classifier
        raise CheckpointError(
            f"{str(ck.directory)!r} holds a {ck.config['runtime']} model ({ck.weights.name}), not PyTorch weights; "
            "load it with raylens.serve.classify.load_classifier (PyTorch or ONNX Runtime) instead of load_model"
        )
    try:
        info = model_info(ck.arch)
    except KeyError as e:
        raise KeyError(
            f"{str(ck.directory)!r} holds a {ck.kind} model {ck.arch!r} that is not registered here "
            f"(is the pack that registers it installed?): {e.args[0]}"
        ) from None
    if info.kind != ck.kind:
        raise CheckpointError(
            f"{str(ck.directory)!r} says kind {ck.kind!r}, but {ck.arch!r} is registered as a {info.kind!r} model"
        )
    loader = MODELS.meta(ck.arch).get("load") if info.source == "registered" else None
    model = loader(ck, device) if loader is not None else _load_state(ck)
    if getattr(model, "raylens_record", None) is None:
        attach_record(model, ModelRecord(ck.kind, ck.arch, ck.model_config))
    model = model.to(device)
    if callable(getattr(model, "eval", None)):
        model.eval()
    _set_hash(model, ck.checkpoint_hash)
    return model


def _load_state(ck: Checkpoint) -> Any:
    from safetensors.torch import load_file

    try:
        model = create_model(ck.arch, **ck.model_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{str(ck.directory)!r}: model_config {ck.model_config} does not build {ck.arch!r} ({e})"
        ) from e
    try:
        model.load_state_dict(load_file(str(ck.weights)))
    except RuntimeError as e:
        raise CheckpointError(f"{str(ck.directory)!r}: the weights do not fit {ck.arch!r} ({e})") from e
    return model


def _set_hash(model: Any, digest: str) -> None:
    try:
        model.checkpoint_hash = digest
    except AttributeError:  # a model class with a read-only checkpoint_hash keeps its own
        pass
