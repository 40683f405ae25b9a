"""INT8 post-training quantization of an ONNX classifier with ONNX Runtime.

Why ONNX Runtime: ``torch.ao.quantization`` is deprecated in torch 2.14, and torchao targets GPU
and LLM-style linear layers, while a CNN's cost is in its convolutions. ONNX Runtime's static
quantization turns them into INT8 kernels (VNNI/AMX on x86, dot-product on ARM) and runs the
result anywhere ONNX Runtime runs, which is also how :mod:`raylens.serve.classify` serves it.

* ``method="static"`` (the default, for CNNs): weights per channel (int8, symmetric) and activations
  (uint8) with ranges calibrated on a few hundred real images, QDQ format; the model is first
  pre-processed (shape inference, graph optimisation) as ONNX Runtime recommends.
* ``method="dynamic"``: weights only, activations quantized on the fly; suits MatMul-heavy models
  (ViT) and needs no calibration data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

__all__ = ["QUANT_METHODS", "quantize_onnx_int8"]

QUANT_METHODS = ("static", "dynamic")


def quantize_onnx_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray | None = None,
    *,
    method: str = "static",
    batch_size: int = 32,
    per_channel: bool = True,
) -> Path:
    """Write an INT8 copy of the ONNX model at ``onnx_path`` to ``out_path``.

    Args:
        calibration: normalised model inputs ``(N, 3, S, S)`` float32 (the static method needs them:
            a few hundred images of the deployment data; ignored by ``dynamic``).
        method: ``"static"`` or ``"dynamic"`` (see the module docstring).
        batch_size: calibration batch size.
        per_channel: per-output-channel weight scales (better accuracy for convolutions).

    Raises:
        ValueError: an unknown method, or static quantization without calibration data.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    if method not in QUANT_METHODS:
        raise ValueError(f"`method` must be one of {QUANT_METHODS}, got {method!r}")
    src, out = Path(onnx_path), Path(out_path)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model at {str(src)!r}; export one with raylens.classify.export_onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    if method == "dynamic":
        quantize_dynamic(str(src), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
        return out
    if calibration is None or np.ndim(calibration) != 4 or len(calibration) == 0:
        raise ValueError(
            "static INT8 quantization needs `calibration`: normalised model inputs (N, 3, S, S), a few hundred "
            "images like the ones it will serve; or use method='dynamic'"
        )
    calib = np.ascontiguousarray(calibration, dtype=np.float32)

    class _Reader(CalibrationDataReader):
        def __init__(self, input_name: str):
            self.batches = iter([{input_name: calib[i : i + batch_size]} for i in range(0, len(calib), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    import onnx

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="raylens-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            _Reader(input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out
