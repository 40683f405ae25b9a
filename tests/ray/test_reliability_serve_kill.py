"""A Serve replica killed under load: the search service on real Serve over HTTP on 127.0.0.1, 32
clients in a closed loop, one of the 2 index replicas (which encode the queries) SIGKILLed mid-run.
Search batches whose replica died under them are sent again to the live replica
(raylens_services.retry): none fails. Latencies
are recorded, not asserted (the full figure, with the index replica killed too and the same run
without retries, is ``raylens bench reliability-serve-kill``)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_killing_an_index_replica_under_load_fails_no_search(ray_session, tmp_path):
    from raylens_benchmarks.reliability_serve import bench_reliability_serve_kill

    result = bench_reliability_serve_kill(quick=True, workdir=tmp_path)
    run = result.extra["with_retries"]
    (kill,) = run["kills"]
    assert kill["deployment"] == "IndexServer" and kill["pid"] > 0 and kill["replicas"] == 2, kill
    assert kill["window"]["requests"] > 0, kill  # searches were in flight while the replica was down
    assert kill["window"]["failed"] == 0, kill["window"]
    assert run["whole_run"]["failed"] == 0 and run["whole_run"]["requests"] > 100, run["whole_run"]
    assert result.value == 1.0
