"""`raylens bench embed`: images/s of the Ray Data embedding pipeline against a single-process loop.

Both decode the same PNG files, preprocess them as open_clip does and embed them with the same
model (the demo's ``clip-tiny``) and batch size, in the same run. The metric is end to end: all
images over the time from the pipeline's start (Ray itself already up; its actors starting and
loading the model included) to the last embedding, against the loop's whole run. ``extra`` gives the
serial decode and encode rates and, from them, the CPU-work bound of that window: all cores busy on
decode+encode with no overhead; a figure above it is an accounting error and fails the benchmark.
The rate after the first delivered batch is reported too, but not against the bound: Ray Data decodes
ahead while the actors start, so that window holds work done before it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from raylens.bench import BenchResult, register_benchmark


def _baseline(paths: list[str], model, batch_size: int) -> dict[str, float]:
    from raylens.data.images import decode_image

    t0 = time.perf_counter()
    t_first = None
    decode_s = encode_s = 0.0
    n = 0
    for i in range(0, len(paths), batch_size):
        a = time.perf_counter()
        batch = np.stack([model.preprocess(decode_image(Path(p).read_bytes())) for p in paths[i : i + batch_size]])
        b = time.perf_counter()
        model.encode_images(batch)
        c = time.perf_counter()
        decode_s += b - a
        encode_s += c - b
        n += len(batch)
        if t_first is None:
            t_first, n_first = c, n
    end = time.perf_counter()
    return {
        "images_per_s": n / (end - t0),
        "steady_images_per_s": (n - n_first) / (end - t_first),
        "total_s": end - t0,
        "decode_images_per_s": n / decode_s,
        "encode_images_per_s": n / encode_s,
    }


def _encode_rate_one_thread(paths: list[str], model, batch_size: int) -> float:
    import torch

    from raylens.data.images import decode_image

    x = np.stack([model.preprocess(decode_image(Path(p).read_bytes())) for p in paths])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.encode_images(x[:batch_size])  # warm-up
        t = time.perf_counter()
        for i in range(0, len(x), batch_size):
            model.encode_images(x[i : i + batch_size])
        return len(x) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)


def _ray_pipeline(captions: Path, model, batch_size: int, num_actors: int) -> dict[str, float]:
    from raylens.data.ray_reader import read_captioned_images
    from raylens.embed.ray_embed import embed_images

    t0 = time.perf_counter()
    ds = read_captioned_images(captions, model.preprocess, batch_size=batch_size)
    ds = embed_images(ds.dataset, model.spec.name, None, batch_size=batch_size, num_actors=num_actors)
    t_first = None
    n = n_first = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=4):
        n += len(batch["embedding"])
        if t_first is None:
            t_first, n_first = time.perf_counter(), n
    end = time.perf_counter()
    if n == n_first:
        raise RuntimeError("the pipeline delivered everything in one batch: no steady state to measure")
    return {
        "images_per_s": n / (end - t0),
        "after_first_batch_images_per_s": (n - n_first) / (end - t_first),
        "total_s": end - t0,
        "startup_s": t_first - t0,
        "rows": n,
    }


@register_benchmark("embed", doc="Ray Data decode+embed pipeline vs a single-process loop (images/s).")
def bench_embed(quick: bool, workdir: Path) -> BenchResult:
    import torch

    from raylens.models import create_model
    from raylens.runtime import init_ray
    from raylens_domains.natural.shapes import generate_shapes

    n, size, batch = (1500, 128, 128) if quick else (6000, 128, 128)
    data = generate_shapes(workdir / "shapes", n_train=n, n_heldout=0, image_size=size)
    paths = [str(p) for p in sorted((workdir / "shapes/images/train").glob("*.png"))]
    model = create_model("clip-tiny")
    threads = torch.get_num_threads()
    base = _baseline(paths, model, batch)
    init_ray()
    import ray

    actors = max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
    ours = _ray_pipeline(data.captions_path, model, batch, actors)
    assert ours["rows"] == len(paths), "the pipeline lost rows"
    # CPU work per image: decode and encode, each on one thread; a perfect pipeline spreads that
    # work over all cores with no idle time and no overhead.
    cores = os.cpu_count() or 1
    enc1 = _encode_rate_one_thread(paths[: 4 * batch], model, batch)
    bound = cores / (1 / base["decode_images_per_s"] + 1 / enc1)
    for who, rate in (("ray pipeline", ours["images_per_s"]), ("baseline loop", base["images_per_s"])):
        if rate > bound:
            raise RuntimeError(
                f"embed bench accounting error: the {who} reaches {rate:.1f} images/s end to end, above the "
                f"CPU-work bound {bound:.1f} images/s ({cores} cores, one-thread decode and encode rates)"
            )
    return BenchResult(
        name="embed",
        metric="images_per_s end to end",
        value=round(ours["images_per_s"], 1),
        baseline_name="single-process decode+preprocess+embed loop",
        baseline_value=round(base["images_per_s"], 1),
        params={
            "images": n,
            "png_size": size,
            "model": "clip-tiny",
            "model_input": model.spec.image_size,
            "batch_size": batch,
            "embed_actors": actors,
            "baseline_torch_threads": threads,
        },
        extra={
            "ray_startup_s": round(ours["startup_s"], 2),
            "ray_total_s": round(ours["total_s"], 2),
            "baseline_total_s": round(base["total_s"], 2),
            "ray_after_first_batch_images_per_s": round(ours["after_first_batch_images_per_s"], 1),
            "baseline_after_first_batch_images_per_s": round(base["steady_images_per_s"], 1),
            "serial_decode_images_per_s": round(base["decode_images_per_s"], 1),
            "serial_encode_images_per_s": round(base["encode_images_per_s"], 1),
            "encode_images_per_s_one_thread": round(enc1, 1),
            "overlap_bound_images_per_s": round(bound, 1),
            "fraction_of_bound": round(ours["images_per_s"] / bound, 3),
        },
    )
