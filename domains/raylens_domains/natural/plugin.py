"""The natural-images pack's plug-in (entry point ``raylens.plugins: natural``): the search demo."""

from __future__ import annotations

from pathlib import Path

import typer

from raylens.plugins import DEMOS

__all__ = ["demo_search"]


@DEMOS.register("search", doc="Shapes -> Ray Data -> CLIP on Ray Train -> FAISS -> text queries (the default demo).")
def demo_search(
    workdir: Path = typer.Option(Path("raylens-demo"), help="Where data, checkpoints, index and pictures go."),
    n_train: int = typer.Option(3000, help="Generated training images."),
    n_heldout: int = typer.Option(600, help="Generated held-out images (indexed and searched)."),
    steps: int = typer.Option(0, help="Training steps (0: the tuned default)."),
    workers: int = typer.Option(2, help="Ray Train workers."),
    seed: int = typer.Option(0, help="Seed for data and training."),
    quick: bool = typer.Option(False, help="A much smaller run (a smoke test, lower precision)."),
):
    """Generate the shapes dataset, ingest it with Ray Data, train a small CLIP with Ray Train on
    2 workers, embed the held-out images with an actor pool, index them with FAISS and answer text
    queries. Prints top-5 results and precision@5; writes a result grid and a loss curve (PNG)."""
    from rich.console import Console

    from raylens_domains.natural.demo import DemoOptions, run_demo

    options = DemoOptions(
        workdir=workdir,
        n_train=n_train,
        n_heldout=n_heldout,
        steps=steps or None,
        workers=workers,
        seed=seed,
        quick=quick,
    )
    run_demo(options, console=Console())
