"""`raylens bench nerf-scaling --quick` runs end to end: nerf-fast on 1 and then 2 Ray Train workers, on
the same budget, next to the in-process loop, against the one-thread bound measured in the same run
(no timing is asserted)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_nerf_scaling_quick_reports_both_runs_under_the_core_bound(ray_session, tmp_path):
    from raylens_benchmarks.nerf_scaling import bench_nerf_scaling

    result = bench_nerf_scaling(quick=True, workdir=tmp_path).check()  # nothing above the core bound
    runs = result.extra["runs"]
    assert set(runs) == {"1_workers", "2_workers"}
    for run in runs.values():
        assert run["steps"] > 0 and run["rays_per_s"] > 0
        assert 0 < run["share_of_core_bound"] <= 1
        assert run["final_psnr"] > 10  # it learned something in the budget
    assert result.value == runs["2_workers"]["samples_per_s"]
    assert result.baseline_value == runs["1_workers"]["samples_per_s"]
    # rivals: the 1-worker run and the plain in-process loop, each with its wall time
    assert len(result.rivals) == 2 and all(r.value > 0 and r.end_to_end_s > 0 for r in result.rivals)
    assert "no Ray" in result.rivals[1].name
    # both windows measured, under the bound (check() above); end to end spans the whole job
    assert result.end_to_end.value > 0 and result.steady_state.value > 0 and result.bound.value > 0
    assert result.end_to_end.seconds == runs["2_workers"]["job_s"]
    assert result.params["cpus_per_worker"] == {
        "1": result.extra["bound"]["cores"],
        "2": result.extra["bound"]["cores"] / 2,
    }
