"""The embedding deployment: a CLIP model loaded once per replica, text and image queries batched with
``@serve.batch`` (dynamic batching: concurrent requests are encoded together).

``serve run raylens_services.embedding:app`` serves it alone (handles only, no HTTP route);
:mod:`raylens_services.search` composes it behind the search ingress.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
from ray import serve

from raylens.serve.observe import BATCH_BOUNDARIES, EMBED_BATCH_SIZE

__all__ = ["ClipEmbedder", "CHECKPOINT_ENV", "MODEL_ENV", "app"]

CHECKPOINT_ENV = "RAYLENS_CHECKPOINT"
MODEL_ENV = "RAYLENS_MODEL"
DEFAULT_BATCH = 32
DEFAULT_WAIT_S = 0.005


@serve.deployment(
    max_ongoing_requests=64,
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
        torch_threads: int = 1,
    ):
        import torch
        from ray.serve.metrics import Histogram

        from raylens.models import create_model

        torch.set_num_threads(max(1, int(torch_threads)))
        checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV) or None
        self.model = create_model(model or os.environ.get(MODEL_ENV) or "clip-tiny", pretrained=checkpoint)
        self.checkpoint = checkpoint
        for method in (self.embed_text, self.embed_image):
            method.set_max_batch_size(int(max_batch_size))
            method.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        self._batch_sizes = Histogram(
            EMBED_BATCH_SIZE, "sizes of the batches the embedder ran", boundaries=BATCH_BOUNDARIES, tag_keys=("kind",)
        )

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
        return await asyncio.to_thread(self.model.encode_texts, list(texts))

    async def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """Decoded ``(H, W, 3)`` uint8 images, already batched by the caller: (N, D)."""
        self._batch_sizes.observe(len(images), tags={"kind": "image"})
        return await asyncio.to_thread(lambda: self.model.encode_images(self.model.preprocess.batch(images)))

    @serve.batch(max_batch_size=DEFAULT_BATCH, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def embed_text(self, texts: list[str]) -> list[np.ndarray]:
        """One text in, one vector out; concurrent calls are encoded as one batch."""
        self._batch_sizes.observe(len(texts), tags={"kind": "text"})
        vectors = await asyncio.to_thread(self.model.encode_texts, list(texts))
        return list(vectors)

    @serve.batch(max_batch_size=DEFAULT_BATCH, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def embed_image(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One decoded ``(H, W, 3)`` uint8 image in, one vector out; batched like :meth:`embed_text`."""
        return list(await self.embed_images(images))


app = ClipEmbedder.bind()
