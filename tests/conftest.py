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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: small convs and MONAI resampling run faster that way, and far
    faster when other processes share the cores. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray started once per test session (2 CPUs, no dashboard), shut down at the end."""
    import ray

    from raylens.runtime import init_ray

    init_ray(num_cpus=int(os.environ.get("RAYLENS_TEST_CPUS", "4")))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def serve_port(ray_session):
    """Serve's HTTP proxy on a free 127.0.0.1 port for one module; Serve is shut down after it, so the
    next module's proxy really listens on the port it asked for (Serve ignores a new port otherwise)."""
    from ray import serve

    from raylens.serve.ray_apps import start_http

    serve.shutdown()  # a module that failed half-way may have left one behind
    port = start_http("127.0.0.1", drain_s=1.0)  # no test sends to an ingress while it stops
    yield port
    serve.shutdown()
