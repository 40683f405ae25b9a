import json

from typer.testing import CliRunner

from raylens.bench import BENCHMARKS, BenchResult, _load_benchmarks, markdown_table
from raylens.cli import app
from raylens.data.report import IngestReport, SkippedRow

runner = CliRunner()


def test_bench_result_json_format(tmp_path):
    r = BenchResult("x", "images_per_s", 200.0, "loop", 100.0, params={"n": 1})
    d = json.loads(r.save(tmp_path / "r.json").read_text())
    assert set(d) >= {
        "name",
        "metric",
        "value",
        "baseline_name",
        "baseline_value",
        "ratio",
        "higher_is_better",
        "machine",
        "params",
    }
    assert d["ratio"] == 2.0 and d["machine"]["cores"] >= 1
    assert BenchResult("x", "seconds", 2.0, "b", 4.0, higher_is_better=False).ratio == 2.0
    assert "| x | images_per_s |" in markdown_table([r])
    quick = BenchResult("x", "images_per_s", 2.0, "b", 1.0, params={"quick": True})
    assert "| x (--quick) | images_per_s |" in markdown_table([quick])  # beside a full run of the same bench


def test_benchmarks_are_registered():
    _load_benchmarks()
    assert {"embed", "index"} <= set(BENCHMARKS.names())


def test_cli_help_teaches():
    wide = {"COLUMNS": "200"}
    out = runner.invoke(app, ["--help"], env=wide).output
    for cmd in ("demo", "search", "bench", "models", "train", "serve"):
        assert cmd in out
    assert "Start with `raylens demo`" in out
    demo = runner.invoke(app, ["demo", "--help"], env=wide).output
    assert "--workdir" in demo and "search" in demo and "[NAME]" in demo
    search_demo = runner.invoke(app, ["demo", "search", "--help"], env=wide).output
    assert "--n-train" in search_demo and "precision@5" in search_demo
    train = runner.invoke(app, ["train", "--help"], env=wide).output
    assert "clip" in train and "KIND" in train and "--config FILE.yaml" in train
    clip = runner.invoke(app, ["train", "clip", "--help"], env=wide).output
    for text in ("raylens train clip digits --eval digits", "--steps", "--workers", "--gpu", "--storage", "--name"):
        assert text in clip, text
    assert "Training (ClipTrainConfig)" in clip and "Where it runs (Ray Train)" in clip and "--dry-run" in clip
    listing = runner.invoke(app, ["bench", "list"])
    assert listing.exit_code == 0 and "embed" in listing.output
    models = runner.invoke(app, ["models", "clip-*"])
    assert "clip-tiny" in models.output


def test_cli_search_missing_index_is_clear(tmp_path):
    res = runner.invoke(app, ["search", str(tmp_path / "nope"), "a red circle"])
    assert res.exit_code != 0 and "nope" in str(res.exception)


def test_ingest_report_summary(tmp_path):
    rep = IngestReport(
        "c.csv", 10, [SkippedRow("a.png", "file not found"), SkippedRow("b.png", "corrupt or truncated image (x)")]
    )
    assert rep.summary() == "ingest of c.csv: 10 rows read, 2 skipped (1 file not found, 1 corrupt or truncated image)"
    assert json.loads(rep.save(tmp_path / "r.json").read_text())["n_skipped"] == 2


def test_demo_without_a_name_runs_the_search_demo_with_the_given_options(monkeypatch, tmp_path):
    """`raylens demo --workdir W --quick` reaches the search demo with W and quick (dispatch only: the
    demo itself runs end to end in tests/ray/test_text_to_image_path.py and `make demo`)."""
    import raylens_domains.natural.demo as natural_demo

    seen = []
    monkeypatch.setattr(natural_demo, "run_demo", lambda options, console=None: seen.append(options))
    res = runner.invoke(app, ["demo", "--workdir", str(tmp_path / "w"), "--quick"])
    assert res.exit_code == 0, res.output
    assert len(seen) == 1 and seen[0].workdir == tmp_path / "w" and seen[0].quick and seen[0].n_train == 400


def test_a_figure_beyond_its_bound_is_an_error_not_a_number():
    import pytest

    from raylens.bench import Bound, BoundExceeded, Rival, Window

    ok = BenchResult(
        "x",
        "images_per_s",
        90.0,
        "loader",
        80.0,
        rivals=[Rival("loader", 80.0, 12.5), Rival("autofaiss", None, note="did not finish in 900 s")],
        end_to_end=Window(90.0, 11.1),
        steady_state=Window(95.0, 8.0, share=0.8),
        bound=Bound(100.0, "2 cores x 50 images/s"),
    )
    assert ok.check() is ok and ok.fraction_of_bound == 0.9
    assert ok.to_dict()["rival_ratios"] == {"loader": 1.125}
    over = BenchResult(
        "x", "images_per_s", 90.0, "b", 80.0, steady_state=Window(130.0, 3.0, 0.5), bound=Bound(100.0, "b")
    )
    with pytest.raises(BoundExceeded, match="130 images_per_s, beyond the physical bound 100"):
        over.check()
    # lower is better (latency): a figure under the floor is the error
    with pytest.raises(BoundExceeded, match="loop reports 0.5"):
        BenchResult("s", "p50_ms", 3.0, "loop", 0.5, higher_is_better=False, bound=Bound(1.0, "model work")).check()


def test_bench_report_writes_table_and_chart_from_saved_results(tmp_path):
    from raylens.bench import Bound, Rival, load_results

    a = BenchResult(
        "embed",
        "images_per_s",
        150.0,
        "DataLoader",
        100.0,
        rivals=[Rival("DataLoader", 100.0), Rival("loop", 50.0)],
        bound=Bound(300.0, "cores"),
    )
    b = BenchResult(
        "index",
        "qps",
        10.0,
        "hnswlib",
        20.0,
        rivals=[Rival("hnswlib", 20.0), Rival("autofaiss", None, note="numpy<2 pin")],
    )
    a.save(tmp_path / "a.json"), b.save(tmp_path / "b.json")
    assert [r.name for r in load_results([tmp_path / "a.json", tmp_path / "b.json"])] == ["embed", "index"]
    res = runner.invoke(
        app,
        ["bench", "report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json", str(tmp_path / "all.json")],
    )
    assert res.exit_code == 0, res.output
    md = (tmp_path / "all.md").read_text()
    assert "| embed | images_per_s | 150 | DataLoader | 100 | 1.50x | 300 (cores) | 0.50 |" in md
    assert "|  |  |  | loop | 50 | 3.00x |" in md
    assert "autofaiss (numpy<2 pin) | failed | — |" in md and "| 0.50x |" in md
    assert (tmp_path / "all.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "all.json").read_text())) == 2


def test_table_names_every_machine_its_rows_came_from():
    amd, xeon = {"cores": 2, "cpu": "AMD EPYC"}, {"cores": 2, "cpu": "Intel Xeon"}
    rows = [
        BenchResult(name=n, metric="qps", value=2.0, baseline_name="b", baseline_value=1.0, machine=m)
        for n, m in (("embed", amd), ("serve", xeon))
    ]
    assert markdown_table(rows).rstrip().endswith("Measured on: 2-core AMD EPYC (embed); 2-core Intel Xeon (serve).")
