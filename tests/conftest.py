"""Shared fixtures. Ray tests use one local Ray for the whole session (``ray_session``)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray started once per test session (2 CPUs, no dashboard), shut down at the end."""
    from raylens.runtime import init_ray

    import ray

    init_ray(num_cpus=int(os.environ.get("RAYLENS_TEST_CPUS", "4")))
    yield ray
    ray.shutdown()
