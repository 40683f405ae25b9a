"""ONNX export (torch's dynamo exporter) and ONNX Runtime: the outputs match torch at any batch size;
the INT8 model (ONNX Runtime static quantization) runs, is smaller and stays close to FP32; ONNX
checkpoints are served by the one loader like PyTorch ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raylens.classify import (
    FineTuneConfig,
    OnnxModel,
    export_onnx,
    fine_tune,
    load_labelled,
    quantize_onnx_int8,
    save_onnx_classifier,
)
from raylens.classify.common import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small CNN trained on 16 px digits, its ONNX export and an INT8 copy."""
    from raylens.models import create_model

    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    train = load_labelled("digits", image_size=16, limit=700)
    test = load_labelled("digits:heldout", image_size=16, limit=200, seed=1)
    model = create_model("small_cnn", num_classes=10, width=8)
    fine_tune(model, train.pixels, train.labels, FineTuneConfig(epochs=4, lr=5e-3))
    model.eval()
    fp32 = export_onnx(model, root / "fp32" / "model.onnx", image_size=16)
    calib = train.normalized(IMAGENET_MEAN, IMAGENET_STD)[:128]
    int8 = quantize_onnx_int8(fp32, root / "int8" / "model.onnx", calib)
    return {"root": root, "model": model, "fp32": fp32, "int8": int8, "train": train, "test": test}


def test_onnx_outputs_match_torch_at_any_batch_size(exported):
    model, onnx = exported["model"], OnnxModel(exported["fp32"])
    for n in (1, 7, 33):
        x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = model(x)
        got = onnx(x)
        assert got.shape == (n, 10)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_int8_runs_is_smaller_and_close_to_fp32(exported):
    test = exported["test"]
    x = test.normalized(IMAGENET_MEAN, IMAGENET_STD)
    y = test.labels.numpy()
    fp32, int8 = OnnxModel(exported["fp32"]), OnnxModel(exported["int8"])
    p32, p8 = fp32.run(x).argmax(1), int8.run(x).argmax(1)
    acc32, acc8 = float((p32 == y).mean()), float((p8 == y).mean())
    assert acc32 >= 0.75, f"the FP32 model did not learn digits ({acc32:.2f}); the test means nothing"
    assert acc8 >= acc32 - 0.03, f"INT8 {acc8:.3f} vs FP32 {acc32:.3f}"
    assert float((p32 == p8).mean()) >= 0.95
    assert exported["int8"].stat().st_size < 0.6 * exported["fp32"].stat().st_size
    import onnx

    ops = {n.op_type for n in onnx.load(str(exported["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized (QDQ), not a copy


def test_dynamic_int8_needs_no_calibration_and_static_does(exported, tmp_path):
    out = quantize_onnx_int8(exported["fp32"], tmp_path / "dyn.onnx", method="dynamic")
    assert OnnxModel(out)(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="static INT8 quantization needs `calibration`"):
        quantize_onnx_int8(exported["fp32"], tmp_path / "s.onnx")
    with pytest.raises(ValueError, match="`method` must be one of"):
        quantize_onnx_int8(exported["fp32"], tmp_path / "s.onnx", method="fp8")


def test_an_onnx_checkpoint_serves_like_the_torch_one(exported, tmp_path):
    from raylens.errors import CheckpointError
    from raylens.models import load_model, read_checkpoint
    from raylens.serve.classify import load_classifier, save_classifier

    classes = [str(i) for i in range(10)]
    keys = {"classes": classes, "image_size": 16, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    torch_dir = save_classifier(exported["model"], tmp_path / "torch", **keys)
    onnx_dir = save_onnx_classifier(
        exported["fp32"], tmp_path / "onnx", arch="small_cnn", model_config={"num_classes": 10}, **keys
    )
    ck = read_checkpoint(onnx_dir)
    assert ck.weights.name == "model.onnx" and ck.config["runtime"] == "onnxruntime"
    with pytest.raises(CheckpointError, match="onnxruntime model .*load_classifier"):
        load_model(onnx_dir)  # the PyTorch loader says where an ONNX checkpoint goes
    a, b = load_classifier(torch_dir), load_classifier(onnx_dir)
    assert (a.backend, b.backend) == ("torch", "onnxruntime")
    images = [
        np.ascontiguousarray(np.moveaxis((p.numpy() * 255).astype(np.uint8), 0, -1))
        for p in exported["test"].pixels[:5]
    ]
    pa, pb = a.predict(images), b.predict(images)
    assert [p["label"] for p in pa] == [p["label"] for p in pb]
    np.testing.assert_allclose([p["score"] for p in pa], [p["score"] for p in pb], rtol=1e-4, atol=1e-5)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="`image_size` must be an int"):
        export_onnx(torch.nn.Identity(), tmp_path / "x.onnx", image_size=3)
