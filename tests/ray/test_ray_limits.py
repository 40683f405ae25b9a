"""raylens.data.ray_limits: a pipeline's first tasks run side by side from the start."""

import time

import pytest

pytestmark = pytest.mark.ray


def test_the_first_two_tasks_of_a_pipeline_start_together(ray_session):
    """Ray Data 2.60 starts each execution believing the cluster has no CPUs for its first second,
    so the second task of two waited that second (0.6 s tasks: it started after the first ended); with
    the workaround in effect (init_ray applies it) the two run side by side."""
    import ray

    from raylens.data.ray_limits import ask_again_while_empty

    def stamp(batch):  # defined here: Ray ships it by value (the tests folder is not importable in workers)
        start = time.time()
        time.sleep(0.6)
        return {"start": [start] * len(batch["id"]), "end": [time.time()] * len(batch["id"])}

    assert ask_again_while_empty()  # applied by init_ray already; a second call is a no-op
    for _ in range(2):  # the first run starts the 2 worker processes; the second is the one checked
        rows = ray.data.range(2, override_num_blocks=2).map_batches(stamp, batch_size=None, num_cpus=1).take_all()
    starts, ends = [r["start"] for r in rows], [r["end"] for r in rows]
    assert max(starts) < min(ends), f"the second task started {max(starts) - min(starts):.2f} s after the first"
