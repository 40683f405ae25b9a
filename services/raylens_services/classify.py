"""The classification deployment: one classifier checkpoint per replica, loaded by the one loader
(:func:`raylens.serve.classify.load_classifier`): a ``clip`` checkpoint as a zero-shot classifier, a
``classifier`` checkpoint on PyTorch, or an exported/INT8 one on ONNX Runtime.

Two versions of it sit behind the ingress's ``/classify`` route with a traffic split
(:mod:`raylens_services.search`), each calling :meth:`Classifier.predict` with a list of decoded images.

* **Warm before traffic**: a replica loads its checkpoint and runs it on dummy batches in its
  constructor (Serve routes nothing to a replica before that returns); :meth:`check_health` fails a
  replica whose model is not loaded and warm.
* **Promotion by config, no restart**: a new ``user_config`` (``{"checkpoint": dir, "classes": [...],
  "version": ...}``) makes each replica load and warm the new checkpoint beside the old one, then swap;
  requests in flight finish on the old model. Promoting v2 to v1 is giving ``Classifier_v1`` the
  ``user_config`` ``{"checkpoint": <v2's checkpoint>}`` (Serve reconfigures replicas in place when only
  ``user_config`` changes).
* **Per-version metrics**: ``raylens_classifier_images`` (counter) and ``raylens_classifier_latency_ms``
  (histogram), tagged ``version`` and ``backend``, through Ray's metrics export; :meth:`info` reports the
  replica's own counts, its load and warm-up times, and how many swaps it has done.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import numpy as np
from ray import serve

from raylens.serve.http import returns_bad_input

__all__ = ["Classifier", "app", "CLASSIFIER_IMAGES", "CLASSIFIER_LATENCY_MS"]

CLASSIFIER_IMAGES = "raylens_classifier_images"
"""Counter: images classified, tags ``version``, ``backend``."""
CLASSIFIER_LATENCY_MS = "raylens_classifier_latency_ms"
"""Histogram: model time per request in a classifier replica, tags ``version``, ``backend``."""
WARMUP_BATCHES = (1, 8)


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 0.25},
)
class Classifier:
    """Predicts class probabilities for decoded ``(H, W, 3)`` uint8 images."""

    def __init__(
        self,
        checkpoint: str | None = None,
        classes: list[str] | None = None,
        templates: list[str] | None = None,
        version: str = "v1",
        threads: int = 1,
    ):
        import torch
        from ray.serve.metrics import Counter, Histogram

        from raylens.serve.observe import LATENCY_BOUNDARIES_MS

        torch.set_num_threads(max(1, int(threads)))
        self.threads = max(1, int(threads))
        self.version = version
        self.clf = None
        self.checkpoint: str | None = None
        self.problem: str | None = "no checkpoint configured"
        self._lock = threading.Lock()
        self._started = time.time()
        self._stats = {"requests": 0, "images": 0, "errors": 0, "model_ms_total": 0.0, "swaps": 0}
        self._loaded: dict[str, Any] = {}
        self._images = Counter(CLASSIFIER_IMAGES, "images classified", tag_keys=("version", "backend"))
        self._latency = Histogram(
            CLASSIFIER_LATENCY_MS,
            "model time per request in a classifier replica",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("version", "backend"),
        )
        if checkpoint:
            self._load({"checkpoint": checkpoint, "classes": classes, "templates": templates})

    def _load(self, cfg: dict[str, Any]) -> None:
        """Load and warm the checkpoint of ``cfg`` beside the current model, then swap it in."""
        from raylens.serve.classify import load_classifier, warm_up

        t0 = time.perf_counter()
        clf = load_classifier(
            cfg["checkpoint"], classes=cfg.get("classes"), templates=cfg.get("templates"), threads=self.threads
        )
        load_s = time.perf_counter() - t0
        warm_s = warm_up(clf, WARMUP_BATCHES)
        with self._lock:
            swapped = self.clf is not None
            self.clf, self.problem, self.checkpoint = clf, None, str(cfg["checkpoint"])
            self.version = cfg.get("version") or self.version
            self._stats["swaps"] += int(swapped)
            self._loaded = {"load_s": round(load_s, 3), "warmup_s": round(warm_s, 3), "loaded_at": time.time()}

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config`` hook: load and warm ``config["checkpoint"]`` (+ classes/templates/version), then swap."""
        if config and config.get("checkpoint"):
            self._load(config)
        elif config and config.get("version"):
            self.version = config["version"]

    def check_health(self) -> None:
        """Serve's health check: a replica given a checkpoint must hold it loaded and warm."""
        if self.checkpoint is not None and self.clf is None:
            raise RuntimeError(f"classifier {self.version}: {self.problem or 'model not loaded'}")

    async def info(self) -> dict[str, Any]:
        clf = self.clf
        s = self._stats
        return {
            "version": self.version,
            "ready": clf is not None,
            "problem": self.problem,
            "kind": getattr(clf, "kind", None),
            "backend": getattr(clf, "backend", None),
            "classes": getattr(clf, "classes", None),
            "checkpoint_hash": getattr(clf, "checkpoint_hash", None),
            "checkpoint": self.checkpoint,
            "replica": {"pid": os.getpid(), "started_at": self._started, **self._loaded},
            "stats": {
                "requests": s["requests"],
                "images": s["images"],
                "errors": s["errors"],
                "swaps": s["swaps"],
                "mean_model_ms": round(s["model_ms_total"] / s["requests"], 3) if s["requests"] else None,
            },
        }

    @returns_bad_input
    async def predict(self, images: list[np.ndarray]) -> dict[str, Any]:
        """Per image: top label, its probability, the top 5 and (up to 100 classes) every probability."""
        from raylens.serve.limits import ServeError

        clf = self.clf
        if clf is None:
            raise ServeError(503, "not_ready", self.problem or "the classifier is not loaded")
        tags = {"version": self.version, "backend": clf.backend}
        t0 = time.perf_counter()
        try:
            preds = await asyncio.to_thread(clf.predict, images)
        except Exception:
            self._stats["errors"] += 1
            raise
        ms = (time.perf_counter() - t0) * 1000
        self._stats["requests"] += 1
        self._stats["images"] += len(images)
        self._stats["model_ms_total"] += ms
        if images:
            self._images.inc(len(images), tags=tags)
        self._latency.observe(ms, tags=tags)
        return {
            "version": self.version,
            "kind": clf.kind,
            "backend": clf.backend,
            "checkpoint_hash": clf.checkpoint_hash,
            "predictions": preds,
        }


app = Classifier.bind()
