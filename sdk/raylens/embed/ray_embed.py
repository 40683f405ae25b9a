"""Embedding a Ray dataset with an actor pool: each actor loads the model once, then embeds batches."""

from __future__ import annotations

import numpy as np
import ray

from raylens.models import create_model

__all__ = ["EmbedImages", "embed_images"]


class EmbedImages:
    """``map_batches`` UDF: adds ``embedding`` (N, D) float32 unit vectors from ``image`` (N, 3, S, S)."""

    def __init__(self, model: str, checkpoint: str | None, drop_image: bool = True, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        from raylens.runtime import pick_device, quiet_logs

        quiet_logs()
        self.model = create_model(model, pretrained=checkpoint).to(pick_device())
        self.drop_image = drop_image

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if not (self.drop_image and k == "image")}
        out["embedding"] = self.model.encode_images(batch["image"])
        return out


def embed_images(
    ds: ray.data.Dataset,
    model: str,
    checkpoint: str | None,
    *,
    batch_size: int = 128,
    num_actors: int = 1,
    num_gpus: float = 0,
    drop_image: bool = True,
    cpus_per_actor: float | None = None,
) -> ray.data.Dataset:
    """Add an ``embedding`` column to a dataset of preprocessed ``image`` rows (lazy).

    ``num_actors`` model replicas run in an ``ActorPoolStrategy``. On CPU each reserves
    ``cpus_per_actor`` (default: leave one CPU to the decoding tasks upstream, see
    ``raylens.runtime.cpus_per_replica``), so decode and inference overlap instead of starving.
    """
    from raylens.runtime import cpus_per_replica

    if num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors}")
    cpus = 0 if num_gpus else (cpus_per_actor or cpus_per_replica(num_actors))
    return ds.map_batches(
        EmbedImages,
        fn_constructor_kwargs={
            "model": model,
            "checkpoint": checkpoint,
            "drop_image": drop_image,
            "threads": max(1, round(cpus)) if cpus else None,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=num_gpus,
        num_cpus=cpus,
    )
