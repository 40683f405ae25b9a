"""Every Serve deployment of every raylens service has a health check and a bounded queue in its code
defaults, not only in the packaged YAML (``serve run module:build_app`` uses the code's)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _deployments():
    from raylens_services.classify import Classifier
    from raylens_services.embedding import ClipEmbedder
    from raylens_services.indices import IndexServer
    from raylens_services.medical import MedicalFusionService
    from raylens_services.render import NerfRenderer, RenderIngress
    from raylens_services.search import SearchIngress

    return [SearchIngress, ClipEmbedder, IndexServer, Classifier, MedicalFusionService, RenderIngress, NerfRenderer]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d.name)
def test_health_check_and_bounded_queue(deployment):
    cls = deployment.func_or_class
    assert callable(getattr(cls, "check_health", None)), f"{deployment.name} has no check_health"
    cfg = deployment._deployment_config
    assert 0 < cfg.max_queued_requests <= 4096, deployment.name
    assert cfg.health_check_period_s <= 10 and cfg.health_check_timeout_s <= 30, deployment.name
