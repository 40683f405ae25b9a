"""The embedding deployment: a CLIP model loaded once per replica, single texts and images batched
adaptively (:class:`raylens.serve.batching.AdaptiveBatcher`: concurrent requests are encoded together,
and a request that finds the replica idle is encoded at once, with no batching wait).

``serve run raylens_services.embedding:app`` serves it alone (handles only, no HTTP route);
:mod:`raylens_services.search` composes it behind the search ingress, and the index deployment
reaches it through :class:`EmbedderClient`, the search core's :class:`raylens.search.AsyncEncoder`
(and :class:`raylens.search.Encoder` for blocking callers).

``check_health`` (every ``health_check_period_s``) encodes one short text, so a replica whose model
no longer runs (a lost GPU context, say) is replaced; so is one whose encodes keep failing.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from raylens.search import ModelIdentity
from raylens.serve.batching import AdaptiveBatcher
from raylens.serve.observe import BATCH_BOUNDARIES, EMBED_BATCH_SIZE, FailureStreak, quiet_client_errors
from raylens.serve.ray_apps import data_plane
from raylens_services.retry import call_async, call_sync

__all__ = [
    "ClipEmbedder",
    "EmbedderClient",
    "load_model",
    "check_model",
    "CHECKPOINT_ENV",
    "MODEL_ENV",
    "DEFAULT_BATCH",
    "DEFAULT_WAIT_S",
    "DEFAULT_CONCURRENT",
    "ENCODE_TIMEOUT_S",
    "app",
]

CHECKPOINT_ENV = "RAYLENS_CHECKPOINT"
MODEL_ENV = "RAYLENS_MODEL"
DEFAULT_BATCH = 32
DEFAULT_WAIT_S = 0.0
"""How long a batch that would start while others still run may wait for more items (an idle
replica never waits: :mod:`raylens.serve.batching`)."""
DEFAULT_CONCURRENT = 2
"""Batches in flight at once per batcher (more queue up and leave together when one finishes)."""
ENCODE_TIMEOUT_S = 60.0
"""Longest the index deployment waits for one encode call (a stuck embedder then fails the batch)."""


def load_model(checkpoint: str | None = None, model: str | None = None, torch_threads: int = 1):
    """The CLIP model a replica serves: ``checkpoint`` (default ``RAYLENS_CHECKPOINT``) of ``model``
    (default ``RAYLENS_MODEL``, else ``clip-tiny``), on ``torch_threads`` threads for this process
    (one: a replica's calls are small, and its neighbours share the cores)."""
    import torch

    from raylens.models import create_model

    torch.set_num_threads(max(1, int(torch_threads)))
    checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV) or None
    return create_model(model or os.environ.get(MODEL_ENV) or "clip-tiny", pretrained=checkpoint)


async def check_model(model, who: str) -> None:
    """Health check of a served model: it still encodes, to finite numbers."""
    vector = await asyncio.to_thread(model.encode_texts, ["health"])
    if not np.isfinite(vector).all():
        raise RuntimeError(f"{who}: the model encodes to NaN or inf; restarting the replica may help")


@serve.deployment(
    max_ongoing_requests=64,
    max_queued_requests=256,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 0.25},
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 4,
        "upscale_delay_s": 3,
        "downscale_delay_s": 30,
    },
)
class ClipEmbedder:
    """Embeds texts and images with one CLIP model (L2-normalised float32 vectors)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        model: str | None = None,
        *,
        max_batch_size: int = DEFAULT_BATCH,
        batch_wait_timeout_s: float = DEFAULT_WAIT_S,
        max_concurrent_batches: int = DEFAULT_CONCURRENT,
        torch_threads: int = 1,
    ):
        from ray.serve.metrics import Histogram

        quiet_client_errors()
        checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV) or None
        self.model = load_model(checkpoint, model, torch_threads)
        self.checkpoint = checkpoint
        batch = {
            "max_batch_size": int(max_batch_size),
            "batch_wait_timeout_s": float(batch_wait_timeout_s),
            "max_concurrent_batches": int(max_concurrent_batches),
        }
        self._texts = AdaptiveBatcher.from_config(self.embed_texts, batch)
        self._images = AdaptiveBatcher.from_config(self.embed_images, batch)
        self._batch_sizes = Histogram(
            EMBED_BATCH_SIZE, "sizes of the batches the embedder ran", boundaries=BATCH_BOUNDARIES, tag_keys=("kind",)
        )
        self._failures = FailureStreak()

    async def check_health(self) -> None:
        """Serve's health check: the model still encodes, and encodes are not failing in a row."""
        self._failures.check("ClipEmbedder")
        await check_model(self.model, "ClipEmbedder")

    async def _encode(self, fn, items):
        try:
            out = await asyncio.to_thread(fn, items)
        except Exception as exc:
            self._failures.record(exc)
            raise
        self._failures.ok()
        return out

    async def info(self) -> dict[str, Any]:
        """Model name, checkpoint hash, embedding dim and image size."""
        s = self.model.spec
        return {
            "model": s.name,
            "checkpoint_hash": self.model.checkpoint_hash,
            "checkpoint": self.checkpoint,
            "dim": s.embed_dim,
            "image_size": s.image_size,
        }

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """A batch already formed by the caller (the search ingress batches its queries): (N, D)."""
        self._batch_sizes.observe(len(texts), tags={"kind": "text"})
        return await self._encode(self.model.encode_texts, list(texts))

    async def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """Decoded ``(H, W, 3)`` uint8 images, already batched by the caller: (N, D)."""
        self._batch_sizes.observe(len(images), tags={"kind": "image"})
        return await self._encode(lambda x: self.model.encode_images(self.model.preprocess.batch(x)), list(images))

    async def embed_text(self, text: str) -> np.ndarray:
        """One text in, one vector out; concurrent calls are encoded as one batch."""
        return await self._texts.submit(text)

    async def embed_image(self, image: np.ndarray) -> np.ndarray:
        """One decoded ``(H, W, 3)`` uint8 image in, one vector out; batched like :meth:`embed_text`."""
        return await self._images.submit(image)


class EmbedderClient:
    """The search core's encoder over a :class:`ClipEmbedder` deployment: awaitable
    (:class:`raylens.search.AsyncEncoder`, for :func:`raylens.search.search_batch_async` on a replica's
    event loop) and blocking (:class:`raylens.search.Encoder`, from a worker thread only).

    Each call waits at most ``ENCODE_TIMEOUT_S``; a call whose embedder replica dies under it is sent
    again to a live one (:mod:`raylens_services.retry`). Make one with ``await EmbedderClient.connect(handle)``.
    """

    def __init__(self, handle: DeploymentHandle, identity: ModelIdentity):
        self.handle = handle
        self._fast = data_plane(handle)
        self.identity = identity

    @classmethod
    async def connect(cls, handle: DeploymentHandle) -> EmbedderClient:
        """Ask the embedder which model it serves (the identity the indices are checked against)."""
        info = await call_async(lambda: handle.info.remote(), "embedder.info")
        return cls(handle, ModelIdentity(info["model"], info["checkpoint_hash"], int(info["dim"])))

    async def aencode_texts(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        return await asyncio.wait_for(
            call_async(lambda: self._fast.embed_texts.remote(texts), "embedder.embed_texts"), ENCODE_TIMEOUT_S
        )

    async def aencode_images(self, images: list[np.ndarray]) -> np.ndarray:
        images = list(images)
        return await asyncio.wait_for(
            call_async(lambda: self._fast.embed_images.remote(images), "embedder.embed_images"), ENCODE_TIMEOUT_S
        )

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        return call_sync(
            lambda: self.handle.embed_texts.remote(texts).result(timeout_s=ENCODE_TIMEOUT_S), "embedder.embed_texts"
        )

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        images = list(images)
        return call_sync(
            lambda: self.handle.embed_images.remote(images).result(timeout_s=ENCODE_TIMEOUT_S), "embedder.embed_images"
        )


app = ClipEmbedder.bind()
