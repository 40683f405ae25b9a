"""A Ray Train worker killed mid-run: 2 workers train CLIP on digits with ``max_failures=1``; once Ray
Train has registered a checkpoint, one RayTrainWorker process gets SIGKILL. The worker group
restarts, resumes from that checkpoint (the learning-rate schedule goes on, the history never
repeats a step) and finishes every step with held-out metrics. The comparison with clean runs of the
same config is ``raylens bench reliability-train-kill``."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_killed_worker_resumes_from_the_checkpoint_and_finishes(ray_session, tmp_path):
    from raylens_benchmarks.reliability_train import _run

    steps = 30
    run = _run(tmp_path, "killed", steps=steps, every=5, kill_after_step=10)
    assert run["kill"] and run["kill"]["workers_alive"] == 2, run
    resume = run["resume"]
    assert resume["from_step"] >= 10 and resume["first_step_after"] == resume["from_step"] + 5, resume
    assert resume["schedule_continued"], resume  # not back in warm-up: it resumed, it did not restart
    assert resume["loss_after"] < resume["loss_at_start"], resume
    assert run["steps"] == steps and run["history_steps_unique_and_sorted"], run
    assert 0.0 <= run["final"]["zeroshot_top1"] <= 1.0 and run["final"]["loss"] > 0, run["final"]
