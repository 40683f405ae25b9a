"""The one checkpoint format, ``raylens.checkpoint/1``: a directory any model kind is saved to.

A checkpoint directory holds:

* ``config.json``: ``{"format": "raylens.checkpoint/1", "kind", "arch", "model_config",
  "checkpoint_hash", ...}``. ``kind`` is the model kind (``clip``, ``classifier``, ``fusion``,
  ``nerf``, ``diffusion``), ``arch`` the registry name, ``model_config`` the resolved keyword
  arguments (``create_model(arch, **model_config)`` rebuilds the architecture) and
  ``checkpoint_hash`` the first 16 hex digits of the weights file's SHA-256. Everything else
  (``train``, ``run``, ``step``, ``epoch``, a CLIP model's ``open_clip`` config, a classifier's
  ``classes``) is extra, kept as written.
* ``model.safetensors``: the weights (never a pickle).
* optionally ``train_state.pt``, ``history.json``/``history.csv`` and ``curves.png``, written by
  the training code.

Where a native library has its own format (transformers and diffusers ``save_pretrained`` write
their own ``config.json``), :func:`write_config` with ``keep_existing=True`` merges our keys into it,
so both ``from_pretrained(dir)`` and :func:`read_checkpoint` read the same directory.

Checkpoints written before format 1 (CLIP, fusion, timm classifier) are recognised by
:func:`read_checkpoint` and converted in memory (``Checkpoint.legacy`` names the old layout).

>>> import tempfile, torch
>>> d = tempfile.mkdtemp()
>>> _ = write_checkpoint(d, kind="fusion", arch="early", model_config={}, state_dict={"w": torch.ones(2)})
>>> ck = read_checkpoint(d)
>>> ck.kind, ck.arch, ck.weights.name, ck.legacy
('fusion', 'early', 'model.safetensors', None)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from raylens.errors import CheckpointError

__all__ = [
    "FORMAT",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "MODEL_KINDS",
    "RESERVED_KEYS",
    "Checkpoint",
    "read_checkpoint",
    "write_checkpoint",
    "write_config",
    "save_weights",
    "file_sha256",
    "jsonable",
]

FORMAT = "raylens.checkpoint/1"
"""The value of ``config.json``'s ``format`` key."""
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_KINDS = ("clip", "classifier", "fusion", "nerf", "diffusion")
"""Every model kind the registry and the checkpoint format know."""
RESERVED_KEYS = ("format", "kind", "arch", "model_config", "checkpoint_hash", "weights_file")
"""``config.json`` keys the format owns; ``extra`` may not set them."""


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`read_checkpoint` found in a checkpoint directory."""

    directory: Path
    """The checkpoint directory."""
    kind: str
    """The model kind (one of :data:`MODEL_KINDS`)."""
    arch: str
    """The registry name: ``create_model(arch, **model_config)`` rebuilds the architecture."""
    model_config: dict[str, Any]
    """The resolved model keyword arguments."""
    config: dict[str, Any]
    """The whole ``config.json`` in format-1 shape (converted in memory for an older layout)."""
    weights: Path
    """The weights file (``model.safetensors`` unless a native format named another)."""
    checkpoint_hash: str
    """First 16 hex digits of the weights file's SHA-256."""
    legacy: str | None = None
    """``None`` for format 1; else the older layout it was converted from (``clip``, ``fusion``, ``timm``)."""


def file_sha256(path: str | Path, n_hex: int = 16) -> str:
    """The first ``n_hex`` hex digits of a file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n_hex]


def jsonable(value: Any, where: str = "value") -> Any:
    """``value`` as plain JSON types (dataclasses -> dicts, tuples -> lists, enums -> values).

    Raises:
        ValueError: something JSON cannot hold (a tensor, a module, NaN); the message names ``where``.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings to be saved in {CONFIG_FILE}, got {k!r}")
            out[k] = jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, str)):
        return value
    if type(value).__name__ in ("bool_", "bool") and type(value).__module__ == "numpy":  # numpy's bool
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise ValueError(
        f"{where} = {value!r} ({type(value).__name__}) cannot be saved in {CONFIG_FILE}; "
        "pass finite numbers, strings, lists, dicts or dataclasses as model arguments"
    )


def save_weights(state_dict: dict[str, Any], directory: str | Path, name: str = WEIGHTS_FILE) -> Path:
    """Write a state dict as safetensors (contiguous CPU copies; shared tensors are copied apart)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    path = directory / name
    save_file(state, str(path))
    return path


def write_config(
    directory: str | Path,
    *,
    kind: str,
    arch: str,
    model_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    weights_file: str = WEIGHTS_FILE,
    keep_existing: bool = False,
) -> dict[str, Any]:
    """Write ``config.json`` for the weights already in ``directory``; returns the config written.

    Args:
        directory: the checkpoint directory; ``weights_file`` must be in it.
        kind: the model kind (one of :data:`MODEL_KINDS`).
        arch: the registry name of the architecture.
        model_config: the resolved model arguments (JSON-able; dataclasses and tuples are converted).
        extra: more keys to keep (train config, run options, classes, ...); none of :data:`RESERVED_KEYS`.
        weights_file: the weights file name, for a native format that names it (diffusers:
            ``diffusion_pytorch_model.safetensors``); recorded when it is not ``model.safetensors``.
        keep_existing: merge into the ``config.json`` already there (a native library's, written by
            ``save_pretrained``) instead of replacing it; our keys win.
    """
    directory = Path(directory)
    _check_head(kind, arch, model_config, extra)
    weights = directory / weights_file
    if not weights.is_file():
        raise CheckpointError(f"{str(directory)!r} has no {weights_file}; save the weights before the config")
    ours: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "arch": arch,
        "model_config": jsonable(dict(model_config), "model_config"),
        "checkpoint_hash": file_sha256(weights),
    }
    if weights_file != WEIGHTS_FILE:
        ours["weights_file"] = weights_file
    config: dict[str, Any] = {}
    cfg_path = directory / CONFIG_FILE
    if keep_existing and cfg_path.is_file():
        config = json.loads(cfg_path.read_text())
    config.update(ours)
    config.update(jsonable(dict(extra or {}), "extra") if extra else {})
    cfg_path.write_text(json.dumps(config, indent=2))
    return config


def write_checkpoint(
    directory: str | Path,
    *,
    kind: str,
    arch: str,
    model_config: dict[str, Any],
    state_dict: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json``: a whole format-1 checkpoint. Returns ``directory``."""
    _check_head(kind, arch, model_config, extra)  # refuse before writing anything
    save_weights(state_dict, directory)
    write_config(directory, kind=kind, arch=arch, model_config=model_config, extra=extra)
    return Path(directory)


def _check_head(kind: str, arch: str, model_config: dict[str, Any], extra: dict[str, Any] | None) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be the model's registry name, got {arch!r}")
    clash = sorted(set(extra or {}) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra may not set the format's own keys {clash}; rename them")
    jsonable(dict(model_config), "model_config")
    jsonable(dict(extra or {}), "extra")


def read_checkpoint(directory: str | Path) -> Checkpoint:
    """Read a checkpoint directory's ``config.json`` (format 1, or an older layout converted in memory).

    Raises:
        CheckpointError: no such directory, no config or weights, or a config that is no raylens checkpoint.
    """
    d = Path(directory)
    cfg_path = d / CONFIG_FILE
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {str(d)!r} does not exist")
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{str(d)!r} has no {CONFIG_FILE}; point at a directory saved by raylens.models.save_model"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(cfg_path)!r} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(cfg_path)!r} must hold a JSON object")
    legacy = None
    fmt = config.get("format")
    if fmt is None:
        config, legacy = _convert_legacy(config, d)
    elif fmt != FORMAT:
        raise CheckpointError(
            f"{str(cfg_path)!r} has format {fmt!r}; this raylens reads {FORMAT!r}: upgrade raylens to load it"
        )
    kind, arch, model_config = config.get("kind"), config.get("arch"), config.get("model_config")
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{str(cfg_path)!r}: `kind` must be one of {MODEL_KINDS}, got {kind!r}")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{str(cfg_path)!r}: `arch` must be the model's registry name, got {arch!r}")
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{str(cfg_path)!r}: `model_config` must be an object, got {model_config!r}")
    weights = d / config.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise CheckpointError(f"{str(d)!r} has no {weights.name}; the checkpoint is incomplete")
    digest = config.get("checkpoint_hash") or file_sha256(weights)
    config["checkpoint_hash"] = digest
    return Checkpoint(
        directory=d,
        kind=kind,
        arch=arch,
        model_config=dict(model_config),
        config=config,
        weights=weights,
        checkpoint_hash=digest,
        legacy=legacy,
    )


_LAYOUTS = (
    "format 1 (`format`: 'raylens.checkpoint/1' with `kind`, `arch`, `model_config`); "
    "or an older layout: CLIP (`model` with `open_clip_name`, and `open_clip`), "
    "fusion (`model` with `name`), timm classifier (`arch`, `classes`, `image_size`)"
)


def _convert_legacy(config: dict[str, Any], directory: Path) -> tuple[dict[str, Any], str]:
    """An older (pre format 1) config as a format-1 config; the second value names the layout."""
    model = config.get("model")
    if isinstance(model, dict) and "open_clip_name" in model and "open_clip" in config:
        oc = config.get("open_clip") or {}
        model_config = {"init_logit_bias": oc["init_logit_bias"]} if "init_logit_bias" in oc else {}
        head = {"kind": "clip", "arch": model.get("name") or model["open_clip_name"], "model_config": model_config}
        return {"format": FORMAT, **head, **config}, "clip"
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        model_config = {k: v for k, v in model.items() if k != "name"}
        rest = {k: v for k, v in config.items() if k != "model"}
        head = {"kind": "fusion", "arch": model["name"], "model_config": model_config}
        return {"format": FORMAT, **head, **rest}, "fusion"
    if isinstance(config.get("arch"), str) and "classes" in config and "image_size" in config:
        classes = config["classes"]
        if not isinstance(classes, list) or not classes:
            raise CheckpointError(f"{str(directory)!r}: old timm classifier config needs a non-empty `classes` list")
        arch = config["arch"] if config["arch"].startswith("timm/") else f"timm/{config['arch']}"
        head = {"kind": "classifier", "arch": arch, "model_config": {"num_classes": len(classes)}}
        rest = {k: v for k, v in config.items() if k != "arch"}
        return {"format": FORMAT, **head, **rest}, "timm"
    raise CheckpointError(
        f"{str(directory / CONFIG_FILE)!r} is no raylens checkpoint config: expected {_LAYOUTS}. "
        f"To convert another checkpoint, add the keys format={FORMAT!r}, kind, arch and model_config "
        "to its config.json (arch and model_config as for raylens.models.create_model)."
    )
