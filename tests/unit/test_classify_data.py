"""Labelled data before decoding (label tables, class lists, the validation split, digits as folders)
and the evaluation metrics, checked against scikit-learn."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from raylens.data.labelled import (
    class_list,
    encode_labels,
    in_validation,
    inspect_label_table,
    is_label_table,
    read_label_columns,
)
from raylens.train.classify_eval import classification_metrics, evaluate_classifier


def _png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------- label tables


def test_csv_tsv_and_jsonl_tables_find_their_columns_and_resolve_paths(tmp_path):
    _png(tmp_path / "img" / "a.png")
    (tmp_path / "t.csv").write_text("filepath,species,notes\nimg/a.png,cat,x\n/abs/b.png,dog,y\n")
    layout = inspect_label_table(tmp_path / "t.csv", label_column="species")
    assert (layout.format, layout.path_column, layout.label_column) == ("csv", "filepath", "species")
    cols = read_label_columns(layout)
    assert cols == {"label": ["cat", "dog"], "path": [str(tmp_path / "img" / "a.png"), "/abs/b.png"]}
    (tmp_path / "t.tsv").write_text("image\tlabel\nimg/a.png\t3\n")
    assert inspect_label_table(tmp_path / "t.tsv").delimiter == "\t"
    (tmp_path / "t.jsonl").write_text(json.dumps({"path": "img/a.png", "label": 2}) + "\n")
    assert read_label_columns(inspect_label_table(tmp_path / "t.jsonl"))["label"] == ["2"]
    assert is_label_table(tmp_path / "t.csv") and not is_label_table(tmp_path / "img")


def test_parquet_tables_with_paths_or_embedded_bytes(tmp_path):
    pq.write_table(pa.table({"path": ["a.png", "b.png"], "label": [0, 1]}), tmp_path / "p.parquet")
    layout = inspect_label_table(tmp_path / "p.parquet")
    assert layout.bytes_column is None and read_label_columns(layout)["label"] == ["0", "1"]
    blob = (_png(tmp_path / "x.png")).read_bytes()
    pq.write_table(pa.table({"key": ["k0"], "jpg": [blob], "label": ["cat"]}), tmp_path / "b.parquet")
    layout = inspect_label_table(tmp_path / "b.parquet")
    assert (layout.bytes_column, layout.path_column) == ("jpg", "key")


def test_table_errors_name_the_columns_and_the_fix(tmp_path):
    (tmp_path / "t.csv").write_text("path,kind\na.png,cat\n")
    with pytest.raises(ValueError, match=r"no 'label' column; it has \['path', 'kind'\].*label_column="):
        inspect_label_table(tmp_path / "t.csv")
    (tmp_path / "u.csv").write_text("where,label\na.png,cat\n")
    with pytest.raises(ValueError, match="no image column.*path_column="):
        inspect_label_table(tmp_path / "u.csv")
    (tmp_path / "e.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match="no data rows"):
        inspect_label_table(tmp_path / "e.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inspect_label_table(tmp_path / "nothing.csv")


def test_class_lists_and_labels_outside_them():
    assert class_list(["b", "a", "b", ""]) == ["a", "b"]
    assert class_list(["1", "10", "2", "0"]) == ["0", "1", "2", "10"]
    assert class_list([], classes=["x", "y"]) == ["x", "y"]
    assert encode_labels(["y", "z", "x"], ["x", "y"]).tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="2 or more distinct"):
        class_list(["only"])
    with pytest.raises(ValueError, match="2 or more distinct"):
        class_list([], classes=["a", "a"])


def test_the_validation_split_is_stable_and_near_its_fraction():
    keys = [f"img/{i}.png" for i in range(4000)]
    val = in_validation(keys, 0.1, seed=0)
    assert abs(val.mean() - 0.1) < 0.015
    assert (in_validation(keys[::-1], 0.1)[::-1] == val).all()  # row order does not matter
    assert (in_validation(keys, 0.1, seed=1) != val).any()
    assert not in_validation(keys, 0.0).any()


# ----------------------------------------------------------------------------- metrics


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 7))
    labels = rng.integers(0, 6, 300)  # class 6 never occurs: macro averages as sklearn does
    logits[np.arange(300), labels] += 1.0
    m = classification_metrics(logits, labels, [f"c{i}" for i in range(7)])
    pred = logits.argmax(1)
    assert m.top1 == pytest.approx((pred == labels).mean())
    assert m.top5 == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=list(range(7))))
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(labels, pred, average=avg, zero_division=0)
        assert (getattr(m, f"precision_{avg}"), getattr(m, f"recall_{avg}"), getattr(m, f"f1_{avg}")) == pytest.approx(
            (p, r, f)
        )
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=list(range(7)), zero_division=0)
    assert [row["f1"] for row in m.per_class] == pytest.approx(f.tolist())
    assert [row["support"] for row in m.per_class] == s.tolist()
    assert (m.confusion == confusion_matrix(labels, pred, labels=list(range(7)))).all()
    assert m.loss == pytest.approx(
        float(torch.nn.functional.cross_entropy(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels))),
        rel=1e-5,
    )


def test_per_class_csv_and_confusion_png(tmp_path):
    m = classification_metrics(np.eye(3)[[0, 1, 2, 2]] * 5, [0, 1, 2, 1], ["cat", "dog", "cow"])
    rows = list(csv.DictReader(m.write_per_class_csv(tmp_path / "pc.csv").open()))
    assert [r["class"] for r in rows] == ["cat", "dog", "cow"] and rows[1]["recall"] == "0.5"
    png = m.write_confusion_png(tmp_path / "cm.png")
    assert png.stat().st_size > 1000 and Image.open(png).size[0] > 100
    assert m.to_dict("test_")["test_top1"] == 0.75


def test_evaluate_a_model_on_arrays_or_batches_and_bad_labels():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images = np.random.default_rng(0).normal(size=(10, 3, 2, 2)).astype(np.float32)
    labels = np.arange(10) % 3
    whole = evaluate_classifier(model, {"image": images, "label": labels}, batch_size=4)
    parts = evaluate_classifier(
        model, [{"image": images[:6], "label": labels[:6]}, {"image": images[6:], "label": labels[6:]}]
    )
    assert whole.top1 == parts.top1 and whole.n == parts.n == 10 and model.training
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        classification_metrics(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="2 class names for 3 model outputs"):
        classification_metrics(np.zeros((2, 3)), [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="needs `image` and `label`"):
        evaluate_classifier(model, {"image": images})
