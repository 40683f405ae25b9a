"""A short soak: the search service on real Serve at a constant request rate (an open loop) with the
resident memory of every replica sampled. No request fails and every replica lives to the end;
memory growth is recorded, not asserted, over a run this short (the 10-minute figure is
``raylens bench reliability-soak``)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_constant_load_fails_no_request_and_keeps_every_replica(ray_session, tmp_path):
    from raylens_benchmarks.reliability_serve import run_soak

    soak = run_soak(tmp_path, warmup_s=5.0, measure_s=20.0, rate=10.0, window_s=5.0)
    assert soak["measured"]["requests"] >= 100, soak["measured"]
    assert soak["errors"] == 0, soak["measured"]
    assert soak["replicas_sampled"] == 3 and soak["replicas_restarted"] == [], soak
    assert len(soak["rss_timeline_mib"]) >= 4 and all(m["last_window_mib"] for m in soak["memory"].values()), soak
