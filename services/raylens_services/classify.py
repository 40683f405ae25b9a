"""The classification deployment: one classifier checkpoint per replica (a raylens CLIP checkpoint as a
zero-shot classifier, or a timm classifier directory; see :mod:`raylens.serve.classify`).

Two versions of it sit behind the ingress's ``/classify`` route with a traffic split
(:mod:`raylens_services.search`). A new ``user_config`` (``{"checkpoint": dir, "classes": [...]}``)
loads the new checkpoint first and then swaps it in: requests in flight are not dropped.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from ray import serve

from raylens.serve.http import returns_bad_input

__all__ = ["Classifier", "app"]


@serve.deployment(num_replicas=1, max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25})
class Classifier:
    """Predicts class probabilities for decoded ``(H, W, 3)`` uint8 images."""

    def __init__(
        self,
        checkpoint: str | None = None,
        classes: list[str] | None = None,
        templates: list[str] | None = None,
        version: str = "v1",
    ):
        import torch

        torch.set_num_threads(1)
        self.version = version
        self.clf = None
        self.problem: str | None = "no checkpoint configured"
        self._lock = threading.Lock()
        if checkpoint:
            self._load({"checkpoint": checkpoint, "classes": classes, "templates": templates})

    def _load(self, cfg: dict[str, Any]) -> None:
        from raylens.serve.classify import load_classifier

        clf = load_classifier(cfg["checkpoint"], classes=cfg.get("classes"), templates=cfg.get("templates"))
        with self._lock:
            self.clf, self.problem = clf, None
            self.version = cfg.get("version", self.version)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config`` hook: load ``config["checkpoint"]`` (+ classes/templates/version), then swap."""
        if config and config.get("checkpoint"):
            self._load(config)

    async def info(self) -> dict[str, Any]:
        clf = self.clf
        return {
            "version": self.version,
            "ready": clf is not None,
            "problem": self.problem,
            "kind": getattr(clf, "kind", None),
            "classes": getattr(clf, "classes", None),
            "checkpoint_hash": getattr(clf, "checkpoint_hash", None),
        }

    @returns_bad_input
    async def predict(self, images: list[np.ndarray]) -> dict[str, Any]:
        """Per image: top label, its probability, the top 5 and (up to 100 classes) every probability."""
        from raylens.serve.limits import ServeError

        clf = self.clf
        if clf is None:
            raise ServeError(503, "not_ready", self.problem or "the classifier is not loaded")
        preds = await asyncio.to_thread(clf.predict, images)
        return {"version": self.version, "kind": clf.kind, "checkpoint_hash": clf.checkpoint_hash, "predictions": preds}


app = Classifier.bind()
