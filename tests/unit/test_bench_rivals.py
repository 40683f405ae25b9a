"""The rival machinery of the benchmarks, without any rival installed: the recall definition, the sweep,
the FLOP bound, and a failed install, a crash or a timeout becoming a Rival with its reason."""

import importlib.util
import sys
import textwrap

import numpy as np
import pytest

from raylens.bench import Rival
from raylens.index import recall_at_k
from raylens_benchmarks import index as bench_index
from raylens_benchmarks._rival_env import RIVAL_SCRIPTS, RivalFailed, ensure_env, measure_rival, run_script


def _script_module(name):
    sys.path.insert(0, str(RIVAL_SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(f"_rival_{name}", RIVAL_SCRIPTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(RIVAL_SCRIPTS))


ann = _script_module("ann_common")


def test_rival_scripts_recall_is_raylens_recall():
    rng = np.random.default_rng(0)
    truth = np.stack([rng.permutation(50)[:10] for _ in range(20)])
    found = truth.copy()
    found[:, 7:] = 99  # 3 of 10 wrong in every query
    found[0] = truth[0]
    truth[1, 9] = -1  # a padded truth row: 9 valid ids
    for f, t in [(found, truth), (truth, truth), (np.full_like(truth, 99), truth)]:
        assert ann.recall_at_k(f, t, 10) == pytest.approx(recall_at_k(f, t, 10))
    assert ann.recall_at_k(truth, truth, 10) == 1.0
    # per query: the fraction of the exact top-10 in the returned top-10
    assert ann.recall_at_k(found[2:], truth[2:], 10) == pytest.approx(0.7)


def test_sweep_stops_at_the_lowest_setting_reaching_the_target():
    truth = np.tile(np.arange(10), (4, 1))
    recall_of = {10: 0.5, 20: 0.9, 40: 0.95, 80: 1.0}
    tried = []

    def search(ef):
        tried.append(ef)
        hits = round(recall_of[ef] * 40)  # 40 truths in all
        out = np.full((4, 10), -7)
        flat = out.reshape(-1)
        flat[:hits] = truth.reshape(-1)[:hits]
        return out

    chosen, points = ann.sweep_lowest([80, 20, 40, 10], search, truth, 10, 0.95)
    assert chosen == 40 and tried == [10, 20, 40]  # ascending, and no setting above the first hit
    assert [p["recall"] for p in points] == [0.5, 0.9, 0.95]
    chosen, points = ann.sweep_lowest([10, 20], search, truth, 10, 0.95)
    assert chosen is None and len(points) == 2


def test_autofaiss_search_params_keep_hnsw_quantizer_wide_enough():
    af = _script_module("autofaiss_index")
    assert af.search_params("nprobe=16,efSearch=32,ht=2048", 64) == "nprobe=64,efSearch=128,ht=2048"
    assert af.search_params("nprobe=16", 4) == "nprobe=4"


def test_index_work_and_flop_bound():
    w = bench_index.index_work("IVF1024,PQ64x4fs,Refine(SQ6)", {"nprobe": 32, "k_factor": 16}, 10**6, 512, 10)
    assert w.flops == 2 * 512 * 1024 + 2 * 512 * 16 + 2 * 512 * 160
    assert w.code_bytes == pytest.approx(32 / 1024 * 10**6 * 32 + 160 * 512 * 6 / 8)
    assert bench_index.qps_bound(w, 1e11) == pytest.approx(1e11 / w.flops)
    exact = bench_index.index_work("Flat", {}, 1000, 512, 10)
    assert exact.flops == 2 * 1000 * 512  # any other factory: an exact scan


def _ann_result(**kw):
    res = {"build_s": 10.0, "index_bytes": 2**20, "search_s": 0.1, "qps": 10000.0, "sweep": []}
    res.update(kw)
    return res


def test_rival_from_ann_checks_recall_and_reports_why_not(tmp_path):
    truth = np.tile(np.arange(10), (5, 1))
    np.save(tmp_path / "ids.npy", truth)
    ok = bench_index.rival_from_ann("h", _ann_result(ef=24, recall_at_10=1.0), truth, tmp_path / "ids.npy", 2**22, "ef")
    assert ok.value == 10000.0 and ok.end_to_end_s == 10.1 and "ef=24" in ok.note and "0.25x flat" in ok.note
    none = bench_index.rival_from_ann(
        "a",
        _ann_result(nprobe=None, note="no nprobe up to 1024 reaches recall 0.95", sweep=[{"recall": 0.91}]),
        truth,
        tmp_path / "missing.npy",
        2**22,
        "nprobe",
    )
    assert none.value is None and "reaches recall 0.95" in none.note and "0.91" in none.note
    with pytest.raises(RivalFailed, match="recall mismatch"):  # the script's claim is checked
        bench_index.rival_from_ann("h", _ann_result(ef=24, recall_at_10=0.5), truth, tmp_path / "ids.npy", 1, "ef")


def test_a_rival_that_fails_is_a_result_with_its_reason(tmp_path):
    def boom():
        raise RivalFailed("pip install x failed in a bench env (exit 1): no matching distribution")

    r = measure_rival("x 1.0", boom)
    assert r == Rival("x 1.0", None, None, "pip install x failed in a bench env (exit 1): no matching distribution")
    bug = measure_rival("y", lambda: {}["missing"])
    assert bug.value is None and bug.note.startswith("KeyError")


def test_install_failure_is_rival_failed_and_leaves_no_env(tmp_path):
    with pytest.raises(RivalFailed, match="pip install .* failed in a bench env"):
        ensure_env("broken", [str(tmp_path / "no-such-package-1.0-py3-none-any.whl")], root=tmp_path / "envs")
    assert not (tmp_path / "envs" / "broken").exists()


def test_run_script_result_crash_and_timeout(tmp_path):
    ok = tmp_path / "ok.py"
    ok.write_text(
        textwrap.dedent("""
        import json, sys
        out = sys.argv[sys.argv.index("--out") + 1]
        json.dump({"qps": 5.0, "args": sys.argv[3:]}, open(out, "w"))
        """)
    )
    res = run_script(sys.executable, str(ok), ["--n", "3"], workdir=tmp_path, timeout_s=60)
    assert res == {"qps": 5.0, "args": ["--n", "3"]}

    crash = tmp_path / "crash.py"
    crash.write_text("raise SystemExit('autofaiss: numpy.dtype size changed')\n")
    with pytest.raises(RivalFailed, match="exited with code 1: autofaiss: numpy.dtype size changed"):
        run_script(sys.executable, str(crash), [], workdir=tmp_path, timeout_s=60)

    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(RivalFailed, match="did not finish within the 1 s timeout"):
        run_script(sys.executable, str(slow), [], workdir=tmp_path, timeout_s=1)
    assert (tmp_path / "slow.log").exists()  # the log stays for a post-mortem


def test_dicom_volume_comparison_counts_matches_and_says_which_differ():
    from raylens_benchmarks.dicom import compare_volumes

    a = np.zeros((4, 4, 4), np.float32)
    ours = {"p/ct": a, "p/mr": a, "q/ct": a}
    theirs = {"p/ct": a + 5e-4, "p/mr": a[::-1].copy() + np.arange(4)[:, None, None], "q/ct": np.zeros((4, 4, 3))}
    cmp = compare_volumes(ours, theirs)
    assert cmp == {"n": 3, "same": 1, "differ": ["p/mr", "q/ct"], "missing": []}
    assert compare_volumes(ours, {})["missing"] == ["p/ct", "p/mr", "q/ct"]


def test_pydicom_loop_keeps_volumes_by_series_folder_and_times_the_normalisation(tmp_path):
    from raylens_benchmarks.dicom import pydicom_loop
    from raylens_domains.medical import PhantomConfig, VolumeTransformConfig, generate_phantoms

    ph = generate_phantoms(tmp_path, PhantomConfig(n_patients=2, ct_size=12, ct_slices=6, mr_size=12, mr_slices=6))
    keep, timings = {}, {}
    n_series, n_slices = pydicom_loop(ph.root, VolumeTransformConfig(spatial_size=(8, 8, 8)), keep, timings)
    folders = {p.folders[m] for p in ph.patients for m in p.modalities}
    assert (n_series, n_slices) == (4, 24) and set(keep) == folders
    assert all(v.shape == (8, 8, 8) for v in keep.values())
    assert timings["normalize_s"] > 0 and timings["voxels"] == 24 * 12 * 12


FAKE_SERVED = """
import json, sys, time
mode = sys.argv[1]
if mode == "slow":
    time.sleep(60)
if mode == "crash":
    raise SystemExit("hnswlib: illegal instruction")
print("library chatter on stdout is ignored", flush=True)
print("@@rival " + json.dumps({"ef": 20, "build_s": 1.5}), flush=True)
for line in sys.stdin:
    if line.strip() == "time":
        print("@@rival " + json.dumps({"seconds": 0.25}), flush=True)
    elif line.strip() == "quit":
        break
print("@@rival " + json.dumps({"peak_rss_bytes": 123}), flush=True)
"""


def test_served_rival_answers_timed_rounds_and_fails_with_its_reason(tmp_path):
    from raylens_benchmarks._rival_env import RivalProcess

    script = tmp_path / "served.py"
    script.write_text(FAKE_SERVED)
    p = RivalProcess(sys.executable, str(script), ["ok"], workdir=tmp_path, timeout_s=60)
    assert p.ready == {"ef": 20, "build_s": 1.5}
    assert [p.time_once(), p.time_once()] == [0.25, 0.25]
    assert p.close() == {"peak_rss_bytes": 123} and p.proc.poll() is not None

    with pytest.raises(RivalFailed, match="did not finish building within the 1 s timeout"):
        RivalProcess(sys.executable, str(script), ["slow"], workdir=tmp_path, timeout_s=1)
    with pytest.raises(RivalFailed, match=r"exited with code 1 \(building\): hnswlib: illegal instruction"):
        RivalProcess(sys.executable, str(script), ["crash"], workdir=tmp_path, timeout_s=60)


def test_index_rival_glue_turns_a_failed_start_into_a_rival_with_its_reason(tmp_path, monkeypatch):
    def no_env(name, reqs, **kw):
        raise RivalFailed(f"pip install {' '.join(reqs)} failed in a bench env (exit 1): numpy<2 has no wheel")

    monkeypatch.setattr(bench_index, "ensure_env", no_env)
    live = bench_index.LiveRival("autofaiss 2.18.0", "nprobe", "autofaiss_ids.npy", {})
    bench_index._start(live, bench_index.AUTOFAISS_ENV, "autofaiss_index.py", [], tmp_path, 10)
    assert live.proc is None and live.times is None and "numpy<2 has no wheel" in live.failed
    rival = bench_index._finish(live, np.zeros((1, 10), np.int64), 1, tmp_path)
    assert rival.value is None and rival.name == "autofaiss 2.18.0" and "pip install autofaiss==2.18.0" in rival.note


def test_train_clip_steady_rate_counts_the_time_between_windows():
    from raylens_benchmarks.train_clip import _steady

    # windows of 10 steps; 1 s of a report sits between the 2nd and 3rd: it counts, the 1st window does not
    history = [{"step": 10, "elapsed_s": 5.0}, {"step": 20, "elapsed_s": 6.0}, {"step": 30, "elapsed_s": 8.0}]
    assert _steady(history, samples_per_step=64) == pytest.approx(20 * 64 / 3.0)
    assert _steady([{"step": 10, "elapsed_s": 2.0, "samples_per_s": 320.0}], 64) == 320.0


def test_nerf_accounting_samples_and_the_least_time_bound():
    from raylens.bench import BenchResult, Bound, BoundExceeded
    from raylens_benchmarks.nerf import samples_trained, seconds_bound

    hist = [{"step": 10, "samples_per_ray": 50.0}, {"step": 30, "samples_per_ray": 20.0}]
    assert samples_trained(hist, 100) == 10 * 100 * 50 + 20 * 100 * 20
    assert samples_trained([], 100) == 0
    peaks = {"flops": 1e11, "bytes_per_s": 1e10}
    assert seconds_bound(100, {"flops": 1e9, "bytes": 1e8}, peaks) == pytest.approx(1.0)  # FLOP-bound
    assert seconds_bound(100, {"flops": 1e8, "bytes": 1e9}, peaks) == pytest.approx(10.0)  # bandwidth-bound
    # a time to target below the least time is an accounting error, not a figure
    ok = BenchResult("nerf", "s", 12.0, "vanilla", 600.0, higher_is_better=False, bound=Bound(10.0, "peaks"))
    assert ok.check().fraction_of_bound == pytest.approx(10 / 12)
    with pytest.raises(BoundExceeded):
        BenchResult("nerf", "s", 8.0, "vanilla", 600.0, higher_is_better=False, bound=Bound(10.0, "peaks")).check()


@pytest.mark.slow
def test_train_clip_ddp_rival_and_ceiling_train_in_real_processes(tmp_path):
    from raylens.train import ClipTrainConfig
    from raylens_benchmarks.train_clip import _processes

    cfg = ClipTrainConfig(model="clip-tiny", max_steps=3, batch_size=8, warmup_steps=1, log_every=1)
    ddp = _processes(cfg, 2, together=True, workdir=tmp_path)
    apart = _processes(cfg, 2, together=False, workdir=tmp_path)
    assert ddp["samples_per_s"] > 0 and apart["samples_per_s"] > 0
    # the group's rank 0 saved the final checkpoint; apart, each process saved its own
    assert len(list(tmp_path.glob("processes-*/rank0/checkpoint_*"))) == 2
    assert len(list(tmp_path.glob("processes-*/rank1/checkpoint_*"))) == 1


def test_embed_steady_window_spans_whole_rounds():
    """Two tasks at a time, each delivering its block at its end: counting the partner of the block
    that opens the window reads 74 rows/s where 50 were made."""
    from raylens_benchmarks.embed import _windows

    rounds = [(1.0, 25), (1.01, 50), (2.0, 75), (2.01, 100)]
    assert _windows(rounds, 0.0)["steady_images_per_s"] > 70
    w = _windows(rounds, 0.0, rounds_of=2)
    assert w["steady_images_per_s"] == pytest.approx(50.0) and w["steady_share"] == 0.5
    even = [(0.1 * i, 10 * i) for i in range(1, 101)]  # one consumer's batches
    assert _windows(even, 0.0)["steady_images_per_s"] == pytest.approx(100.0)
    with pytest.raises(RuntimeError, match="too few batches"):
        _windows([(1.0, 50), (1.01, 100)], 0.0, rounds_of=2)
