"""`raylens demo`: the whole text-to-image path on local Ray, from generated pictures to answers.

shapes dataset (PNG + captions.csv) -> Ray Data ingest -> Ray Train (TorchTrainer, 2 workers,
open_clip contrastive loss with global negatives) -> Ray Data actor-pool embedding of held-out
images -> FAISS index (saved with manifest) -> text queries, precision@5, PNG grid + loss curve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from raylens_domains.natural.shapes import COLOURS, SHAPES, generate_shapes

__all__ = ["DemoOptions", "DemoResult", "run_demo", "colour_shape_queries", "DEMO_QUERIES"]

DEMO_QUERIES = ("a red circle", "a blue star", "a green triangle", "a yellow square", "a purple cross")


@dataclass
class DemoOptions:
    """What the demo runs; the defaults finish in a few minutes on 2 CPU cores."""

    workdir: Path = Path("raylens-demo")
    n_train: int = 3000
    n_heldout: int = 600
    steps: int | None = None
    """Training steps; None picks the tuned default (fewer with ``quick``)."""
    workers: int = 2
    seed: int = 0
    quick: bool = False
    """A smoke-test run: tiny data, few steps (precision will be low)."""
    model: str = "clip-tiny"
    batch_size: int = 64

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        if self.quick:
            self.n_train, self.n_heldout = min(self.n_train, 400), min(self.n_heldout, 120)
        if self.steps is None:
            self.steps = 20 if self.quick else 700
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.n_train < self.workers * self.batch_size:
            raise ValueError(
                f"n_train={self.n_train} is smaller than one batch per worker "
                f"({self.workers} x {self.batch_size}); generate more images"
            )


@dataclass
class DemoResult:
    precision_at_5: float
    chance: float
    seconds: float
    checkpoint: Path
    index_dir: Path
    grid_png: Path
    loss_png: Path
    timings: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, float] = field(default_factory=dict)


def colour_shape_queries() -> list[tuple[str, str, str]]:
    """Every colour+shape query: (text, colour, shape)."""
    return [(f"a {c} {s}", c, s) for s in SHAPES for c in COLOURS]


def _relevant(hits, colour: str, shape: str) -> list[bool]:
    return [h.metadata.get("colour") == colour and h.metadata.get("shape") == shape for h in hits]


def run_demo(opts: DemoOptions | None = None, console: Console | None = None) -> DemoResult:
    opts = opts or DemoOptions()
    console = console or Console()
    from raylens.data.ray_reader import read_captioned_images
    from raylens.embed.ray_embed import embed_images
    from raylens.index import VectorIndex
    from raylens.models import create_model
    from raylens.runtime import init_ray
    from raylens.search import Searcher
    from raylens.train import ClipTrainConfig
    from raylens.train.curves import plot_curves
    from raylens.train.ray_clip import RayTrainOptions, fit_clip
    from raylens.viz import plot_search_grid, write_history_csv

    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 1)
        return now

    work = opts.workdir.resolve()
    console.rule("[bold]raylens demo")
    init_ray()
    t = lap("ray_init", t0)

    with console.status("generating the shapes dataset ..."):
        data = generate_shapes(work / "data", opts.n_train, opts.n_heldout, seed=opts.seed)
    console.print(
        f"[green]data[/green]    {data.n_train} train + {data.n_heldout} held-out PNGs, captions in {data.captions_path}"
    )
    t = lap("generate", t)

    preprocess = create_model(opts.model).preprocess
    train = read_captioned_images(data.captions_path, preprocess, split="train")
    cfg = ClipTrainConfig(
        model=opts.model,
        max_steps=opts.steps,
        batch_size=opts.batch_size,
        lr=2e-3,  # tuned on the shapes (ClipTrainConfig's 3e-3 is tuned on digits)
        seed=opts.seed,
        warmup_steps=min(30, opts.steps // 5),
        log_every=max(1, min(25, opts.steps // 10)),
    )
    console.print(
        f"[green]train[/green]   {opts.model} for {cfg.max_steps} steps on {opts.workers} Ray Train workers, "
        f"global batch {cfg.batch_size * opts.workers} (open_clip ClipLoss, global negatives)"
    )
    result = fit_clip(
        train.dataset,
        cfg,
        RayTrainOptions(
            num_workers=opts.workers, storage_path=str(work / "runs"), name=f"demo-{int(time.time())}", num_to_keep=1
        ),
    )
    report = train.report()
    console.print(f"[green]ingest[/green]  {report.summary()}")
    console.print(
        f"[green]trained[/green] loss {result.history[0]['loss']:.3f} -> {result.final_loss:.3f}; "
        f"checkpoint {result.checkpoint}"
    )
    t = lap("train", t)

    heldout = read_captioned_images(data.captions_path, preprocess, split="heldout")
    emb = embed_images(heldout, opts.model, str(result.checkpoint), batch_size=128)
    cols: dict[str, list[Any]] = {}
    for batch in emb.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in batch.items():
            cols.setdefault(k, []).append(v)
    table = {k: np.concatenate(v) for k, v in cols.items()}
    vectors = table.pop("embedding").astype(np.float32)
    t = lap("embed", t)

    model = create_model(opts.model, pretrained=str(result.checkpoint))
    index = VectorIndex.build(
        vectors,
        {k: [str(x) for x in v] for k, v in table.items()},
        model=opts.model,
        checkpoint_hash=model.checkpoint_hash,
        checkpoint=str(result.checkpoint),
    )
    index_dir = work / "index"
    index.save(index_dir)
    console.print(f"[green]index[/green]   {len(index)} vectors x {index.dim} in {index_dir}")
    t = lap("index", t)

    searcher = Searcher(model, index)
    queries = colour_shape_queries()
    all_hits = searcher.texts([q for q, _, _ in queries], k=5)
    per_query = {q: float(np.mean(_relevant(h, c, s))) for (q, c, s), h in zip(queries, all_hits)}
    p5 = float(np.mean(list(per_query.values())))
    colours, shapes = table["colour"], table["shape"]
    chance = float(np.mean([np.mean((colours == c) & (shapes == s)) for _, c, s in queries]))
    t = lap("search", t)

    shown = [q for q in DEMO_QUERIES]
    shown_hits = [all_hits[[q for q, _, _ in queries].index(q)] for q in shown]
    for q, hits in zip(shown, shown_hits):
        tab = Table(title=f'"{q}"', title_justify="left", show_edge=False)
        for col in ("#", "score", "caption", "path"):
            tab.add_column(col)
        for i, h in enumerate(hits, 1):
            tab.add_row(str(i), f"{h.score:.3f}", h.caption or "", Path(h.path or "").name)
        console.print(tab)
    rel = [_relevant(h, *q.split()[1:]) for q, h in zip(shown, shown_hits)]
    grid = plot_search_grid(shown, shown_hits, work / "search_grid.png", relevant=rel)
    loss_png = plot_curves(
        result.history, work / "training_loss.png", title=f"{opts.model} on shapes (Ray Train, {opts.workers} workers)"
    )
    write_history_csv(result.history, work / "training_loss.csv")
    seconds = time.perf_counter() - t0
    console.rule("[bold]result")
    console.print(
        f"precision@5 on {len(queries)} colour+shape queries over {len(index)} held-out images: "
        f"[bold]{p5:.3f}[/bold]  (chance level {chance:.3f})"
    )
    console.print(f"time {seconds:.0f} s  ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})")
    console.print(f"pictures: {grid}\n          {loss_png}")
    return DemoResult(p5, chance, seconds, Path(result.checkpoint), index_dir, grid, loss_png, timings, per_query)
