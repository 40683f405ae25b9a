"""Mutation fuzzing of the plain decoders (no Ray): a few hundred seeded cases per kind through
``decode_image``, the DICOM header reader + ``load_series``, and the WebDataset tar reader. Every case
decodes or is reported with a documented error or a skipped row; none crashes, hangs or loses samples
silently. The full figure (thousands per kind, in worker processes with a memory limit) is
``raylens bench reliability-fuzz``."""

from __future__ import annotations

import warnings

import pytest

from raylens_benchmarks.reliability_fuzz import case_bytes, fuzz, seeds, warm

CASES = 300


@pytest.fixture(autouse=True)
def _quiet_decoder_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow and pydicom warn about the junk on purpose
        yield


@pytest.mark.parametrize("kind", ["image", "dicom", "tar"])
def test_seeds_are_valid_and_cases_are_reproducible(kind):
    results = warm(kind)
    assert len(results) >= 2
    assert all(r["outcome"] in ("ok", "reported") for r in results), results
    assert sum(r["outcome"] == "ok" for r in results) >= 2, results  # most seeds decode untouched
    seed_list = seeds(kind)
    assert case_bytes(kind, seed_list, 17) == case_bytes(kind, seed_list, 17)
    assert case_bytes(kind, seed_list, 17) != case_bytes(kind, seed_list, 18)


@pytest.mark.parametrize("kind", ["image", "dicom", "tar"])
def test_mutated_inputs_decode_or_are_reported(kind):
    result = fuzz(kind, CASES, base_seed=1)
    assert result["cases"] == CASES
    assert result["n_findings"] == 0, result["findings"][:5]
    # the mutations reach past the first check: both outcomes occur, and reports carry reasons
    assert result["outcomes"].get("reported", 0) > CASES // 10 and result["outcomes"].get("ok", 0) > 0
    assert all(reason for reason in result["top_reasons"]), result["top_reasons"]
