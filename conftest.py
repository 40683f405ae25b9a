"""pytest setup for the docstring examples of sdk/, domains/ and services/ (tests/conftest.py is the tests').

pytest collects every ``>>>`` example there (``--doctest-modules``, pyproject.toml). Each example runs
in its own temporary directory, so whatever it writes lands in tmp, and collection (which imports
every module) must not start Ray.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _doctests_run_in_tmp(request: pytest.FixtureRequest) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))


def pytest_collection_finish(session: pytest.Session) -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        raise pytest.UsageError(
            "importing the modules for collection started Ray: a module calls ray.init() (or starts a "
            "Ray task/actor) at import time; move that into a function"
        )
