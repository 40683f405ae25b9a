"""ONNX export (torch's dynamo exporter) and ONNX Runtime inference for classifiers.

:func:`export_onnx` writes one self-contained ``.onnx`` file (weights inside) with a dynamic batch
dimension; :class:`OnnxModel` runs it with ONNX Runtime on the CPU and is called like the torch
model (normalised ``(N, 3, S, S)`` images in, logits out), so evaluation and serving treat both alike.

:func:`save_onnx_classifier` writes an **ONNX checkpoint**: a ``raylens.checkpoint/1`` directory whose
weights file is ``model.onnx`` (``weights_file`` in ``config.json``) with ``runtime: "onnxruntime"``
and the serving keys (``classes``, ``image_size``, ``mean``, ``std``); :func:`raylens.serve.classify.load_classifier`
serves it like a PyTorch checkpoint.

>>> import tempfile, torch
>>> from raylens.models import create_model
>>> m = create_model("timm/test_resnet", num_classes=3).eval()
>>> path = export_onnx(m, tempfile.mkdtemp() + "/m.onnx", image_size=32)   # doctest: +SKIP
>>> OnnxModel(path)(torch.rand(5, 3, 32, 32)).shape                          # doctest: +SKIP
torch.Size([5, 3])
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylens.classify.common import logits_of

__all__ = [
    "ONNX_FILE",
    "RUNTIME_KEY",
    "ONNX_RUNTIME",
    "OnnxModel",
    "export_onnx",
    "save_onnx_classifier",
    "is_onnx_checkpoint",
]

ONNX_FILE = "model.onnx"
RUNTIME_KEY = "runtime"
"""The ``config.json`` key that marks a checkpoint served by a runtime other than PyTorch."""
ONNX_RUNTIME = "onnxruntime"


class _Logits(torch.nn.Module):
    """The model with a plain logits tensor as its output (transformers return an output object)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def export_onnx(model: torch.nn.Module, path: str | Path, *, image_size: int, opset: int | None = None) -> Path:
    """Export ``model`` to ``path`` with torch's dynamo exporter: input ``x`` ``(batch, 3, S, S)``, output ``logits``.

    Raises:
        ValueError: a bad ``image_size``, or a model the exporter cannot handle (its message attached).
    """
    if not isinstance(image_size, int) or not 8 <= image_size <= 1024:
        raise ValueError(f"`image_size` must be an int in [8, 1024], got {image_size!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was = model.training
    net = _Logits(model).eval()
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=True,
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                external_data=False,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; name the model and the cause
        raise ValueError(f"ONNX export of {type(model).__name__} failed: {type(e).__name__}: {e}") from e
    finally:
        model.train(was)
    return path


class OnnxModel:
    """An ONNX classifier on ONNX Runtime (CPU), called like the torch model: ``logits = m(x)``.

    ``threads`` sets ONNX Runtime's intra-op threads (1: one core, as a serving replica gets).
    """

    def __init__(self, path: str | Path, *, threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {str(path)!r}; export one with raylens.classify.export_onnx")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"`threads` must be an int >= 1, got {threads!r}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.training = False

    def eval(self) -> OnnxModel:
        return self

    def to(self, device: Any) -> OnnxModel:
        if str(device) != "cpu":
            raise ValueError(f"an OnnxModel runs on the CPU; got device {device!r}")
        return self

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 ``(N, 3, S, S)`` numpy batch."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return torch.from_numpy(self.run(arr))


def is_onnx_checkpoint(config: dict[str, Any]) -> bool:
    """Whether a checkpoint's ``config.json`` describes an ONNX Runtime model."""
    return config.get(RUNTIME_KEY) == ONNX_RUNTIME


def save_onnx_classifier(
    onnx_file: str | Path,
    directory: str | Path,
    *,
    arch: str,
    model_config: dict[str, Any],
    classes: Sequence[str],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Make ``directory`` an ONNX checkpoint: ``model.onnx`` (moved there) plus ``config.json``.

    ``arch``/``model_config`` record the architecture it was exported from (informational: the ONNX
    file is the model); ``extra`` adds keys (``source_checkpoint_hash``, ``quantization``, ...).
    """
    from raylens.models.checkpoint import write_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ONNX_FILE
    src = Path(onnx_file)
    if src.resolve() != target.resolve():
        target.write_bytes(src.read_bytes())
    if (directory / "model.safetensors").exists():
        (directory / "model.safetensors").unlink()  # one model per directory: the ONNX one
    keys = {
        RUNTIME_KEY: ONNX_RUNTIME,
        "classes": list(classes),
        "image_size": int(image_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        **(extra or {}),
    }
    write_config(directory, kind="classifier", arch=arch, model_config=model_config, extra=keys, weights_file=ONNX_FILE)
    return directory
