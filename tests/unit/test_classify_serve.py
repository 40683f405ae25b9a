"""Serving compressed classifiers (no Ray started): ``compress_classifier`` writes PyTorch and ONNX
Runtime checkpoints that the one loader serves with the same ``predict``; a checkpoint of another
kind is refused by name; the deployment class warms up before it is ready, swaps a promoted
checkpoint in through ``reconfigure`` and counts per version."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from raylens.classify import CompressConfig, FineTuneConfig, compress_classifier, fine_tune, load_labelled
from raylens.errors import CheckpointError
from raylens.serve.classify import load_classifier, save_classifier, warm_up

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A small CNN trained on 16 px digits, saved, then compressed to INT8 (ONNX) and pruned (torch)."""
    from raylens.models import create_model

    root = tmp_path_factory.mktemp("compress")
    train = load_labelled("digits", image_size=16, limit=600)
    test = load_labelled("digits:heldout", image_size=16, limit=120)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, width=8)
    fine_tune(model, train.pixels, train.labels, FineTuneConfig(epochs=4, lr=1e-2, batch_size=32))
    original = save_classifier(model, root / "original", classes=train.classes, image_size=16, mean=MEAN, std=STD)
    cfg = CompressConfig(
        steps=("int8", "prune"), finetune=FineTuneConfig(epochs=1, lr=1e-3), calibration_images=64, latency_repeats=3
    )
    report = compress_classifier(original, train, test, root / "small", cfg)
    return {"root": root, "report": report, "test": test, "original": original}


def _images(test, n: int) -> list[np.ndarray]:
    return [
        np.ascontiguousarray(np.moveaxis((p.numpy() * 255).round().astype(np.uint8), 0, -1)) for p in test.pixels[:n]
    ]


def test_compress_writes_servable_checkpoints_and_one_table(compressed):
    report = compressed["report"]
    assert [r.variant for r in report.rows] == ["original", "onnx", "int8", "pruned"]
    assert set(report.directories) == {"original", "onnx", "int8", "pruned"}
    int8, pruned = report.row("int8"), report.row("pruned")
    assert int8.backend == "onnxruntime" and abs(int8.accuracy_delta_points) <= 3
    assert int8.file_ratio < 0.8 * report.row("onnx").file_ratio  # INT8 weights (a tiny model keeps its scales)
    assert pruned.backend == "torch" and pruned.param_ratio < 0.5 and pruned.file_ratio < 0.5
    saved = json.loads((compressed["root"] / "small" / "report.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == ["original", "onnx", "int8", "pruned"]
    assert (compressed["root"] / "small" / "report.md").read_text().startswith("| variant |")
    images = _images(compressed["test"], 6)
    labels = {}
    for name, directory in report.directories.items():
        clf = load_classifier(directory)
        assert clf.backend == ("onnxruntime" if name in ("onnx", "int8") else "torch")
        assert clf.classes == [str(i) for i in range(10)] and clf.image_size == 16
        preds = clf.predict(images)
        assert len(preds) == 6 and all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in preds)
        labels[name] = [p["label"] for p in preds]
    assert labels["onnx"] == labels["original"]  # the same model on another runtime


def test_a_checkpoint_of_another_kind_is_refused_by_name(tmp_path):
    from raylens.models.checkpoint import write_checkpoint

    d = write_checkpoint(
        tmp_path / "fusion", kind="fusion", arch="early", model_config={}, state_dict={"w": torch.ones(2)}
    )
    with pytest.raises(CheckpointError, match="holds a fusion model"):
        load_classifier(d)


def test_the_deployment_warms_up_swaps_on_promotion_and_counts(compressed):
    from raylens_services.classify import Classifier

    dirs = compressed["report"].directories
    replica = Classifier.func_or_class(str(dirs["original"]), version="v1")  # the class itself, no Ray
    info = asyncio.run(replica.info())
    assert info["ready"] and info["backend"] == "torch" and info["replica"]["warmup_s"] >= 0
    replica.check_health()
    images = _images(compressed["test"], 3)
    out = asyncio.run(replica.predict(images))
    assert out["version"] == "v1" and out["backend"] == "torch" and len(out["predictions"]) == 3

    replica.reconfigure({"checkpoint": str(dirs["int8"])})  # promote the INT8 model to v1, in place
    info = asyncio.run(replica.info())
    assert info["backend"] == "onnxruntime" and info["version"] == "v1" and info["stats"]["swaps"] == 1
    assert info["checkpoint"] == str(dirs["int8"])
    out = asyncio.run(replica.predict(images))
    assert out["backend"] == "onnxruntime" and out["checkpoint_hash"] == info["checkpoint_hash"]
    stats = asyncio.run(replica.info())["stats"]
    assert stats["requests"] == 2 and stats["images"] == 6 and stats["mean_model_ms"] > 0


def test_warm_up_runs_each_batch_size(compressed):
    clf = load_classifier(compressed["report"].directories["int8"])
    assert warm_up(clf, (1, 4)) > 0


def test_the_command_line_explains_and_attacks_and_names_mistakes(compressed, tmp_path):
    from typer.testing import CliRunner

    from raylens.cli_classify_tools import classify_app

    runner = CliRunner()

    def said(result) -> str:  # the error box's text on one line
        return " ".join(result.output.replace("│", " ").split())

    original, dirs = str(compressed["original"]), compressed["report"].directories
    r = runner.invoke(
        classify_app, ["explain", original, "digits:heldout", "--n", "4", "--out", str(tmp_path / "cam.png")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "attack.json"
    r = runner.invoke(
        classify_app,
        ["attack", original, "digits:heldout", "--eps", "0,8/255", "--steps", "2", "--limit", "16", "--json", str(out)],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [(x["attack"], round(x["eps"], 4)) for x in rows] == [
        ("fgsm", 0.0),
        ("fgsm", 0.0314),
        ("pgd", 0.0),
        ("pgd", 0.0314),
    ]
    r = runner.invoke(classify_app, ["attack", dirs["int8"], "digits"])
    assert r.exit_code != 0 and "ONNX Runtime model" in said(r)
    r = runner.invoke(classify_app, ["attack", original, "digits", "--eps", "8"])
    assert r.exit_code != 0 and "outside [0, 1]" in said(r)
    r = runner.invoke(classify_app, ["explain", original, str(tmp_path / "nowhere")])
    assert r.exit_code != 0 and "class folder" in said(r)
