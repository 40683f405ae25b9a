"""The DICOM reader's volume step builds several normalised series per call: same rows, same report."""

from __future__ import annotations

import numpy as np
import pytest

from raylens_domains.medical import (
    DeidConfig,
    DicomIngestConfig,
    PhantomConfig,
    VolumeTransformConfig,
    generate_phantoms,
)

pytestmark = pytest.mark.ray

SMALL = dict(ct_size=16, ct_slices=10, ct_pixel_mm=6.0, ct_slice_mm=8.0, mr_size=16, mr_slices=9, mr_pixel_mm=6.0)
TRANSFORM = VolumeTransformConfig(target_spacing=(6.0, 6.0, 6.0), spatial_size=(16, 16, 16))


def test_batched_normalised_series_match_one_per_call_and_keep_the_skips(ray_session, tmp_path):
    from raylens_domains.medical.ray_reader import read_dicom, series_batch_size

    # 8 good series and 2 bad ones (a missing slice, a mixed series) in 4 blocks: batches of 2 that
    # can hold a skipped series (a placeholder volume of another shape) beside a good one
    ph = generate_phantoms(tmp_path, PhantomConfig(n_patients=4, seed=5, extras=True, **SMALL))
    cfg = DicomIngestConfig(deid=DeidConfig(key="batch-test-key-000000000000000000"), labels=ph.labels())
    assert series_batch_size(10, 4, normalized=True) == 2
    batched = read_dicom(ph.root, cfg, transform=TRANSFORM)
    single = read_dicom(ph.root, cfg, transform=TRANSFORM, series_per_task=1)
    rb, rs = batched.report(), single.report()
    assert rb.n_ok == rs.n_ok == 8 and rb.n_skipped == rs.n_skipped >= 2
    assert sorted(s.reason for s in rb.skipped) == sorted(s.reason for s in rs.skipped)
    rows_b = {r["series_uid"]: r for r in batched.dataset.take_all()}
    rows_s = {r["series_uid"]: r for r in single.dataset.take_all()}
    assert rows_b.keys() == rows_s.keys() and len(rows_b) == 8
    for uid, r in rows_b.items():
        assert np.asarray(r["volume"]).shape == (16, 16, 16)
        np.testing.assert_array_equal(np.asarray(r["volume"]), np.asarray(rows_s[uid]["volume"]))
        assert r["normalization"] == TRANSFORM.fingerprint()
