"""An ingest with 1% corrupt files (every kind: truncated, random bytes, zero-length, header only, a
flipped byte in the image data, a text file under an image name) through both Ray readers: no valid
row lost, no row from a bad file, every bad file listed with its reason. The 10k-file figure is
``raylens bench reliability-ingest``."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray


def test_every_valid_file_is_a_row_and_every_bad_file_is_listed(ray_session, tmp_path):
    from raylens.data.images import ClipPreprocess
    from raylens_benchmarks.reliability_ingest import BAD_KINDS, make_corpus, run_readers

    corpus = make_corpus(tmp_path / "corpus", 600, bad_share=0.02)
    assert len(corpus["bad"]) == 12 and set(corpus["bad"].values()) == set(BAD_KINDS)
    readers = run_readers(corpus, tmp_path / "corpus", ClipPreprocess(16))
    for name, r in readers.items():
        c = r["check"]
        assert c["valid_rows_lost"] == 0, (name, c["lost_examples"])
        assert c["bad_files_not_listed"] == 0, (name, c["not_listed_examples"])
        assert c["rows_from_bad_files"] == 0 and c["duplicate_rows"] == 0 and c["good_files_listed_as_bad"] == 0, c
        assert c["rows"] == c["valid_files"] == c["report_n_ok"] == 588, c
        assert set(c["reasons_by_kind"]) == set(BAD_KINDS) and all(c["reasons_by_kind"].values()), c
