"""The ``raylens`` command line.

    raylens demo                      the whole text-to-image path on local Ray, in a few minutes
    raylens search INDEX "a red circle" -k 10 [--grid out.png]
    raylens bench embed --json out.json
    raylens models [PATTERN]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="raylens: multi-modal and 3D vision on Ray. Ingest images, train CLIP, build a FAISS index, search it.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console()


@app.command()
def demo(
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
    from raylens_domains.natural.demo import DemoOptions, run_demo

    run_demo(DemoOptions(workdir=workdir, n_train=n_train, n_heldout=n_heldout, steps=steps or None,
                         workers=workers, seed=seed, quick=quick), console=console)


@app.command()
def search(
    index: Path = typer.Argument(..., help="Index directory (holds manifest.json)."),
    query: str = typer.Argument(..., help='Text query, e.g. "a small red circle".'),
    k: int = typer.Option(10, "-k", help="How many results."),
    grid: Optional[Path] = typer.Option(None, help="Also write a PNG grid of the results here."),
    checkpoint: Optional[Path] = typer.Option(None, help="Model checkpoint (default: the one in the manifest)."),
):
    """Text-to-image search in a saved index; prints a table of hits."""
    from raylens.search import Searcher

    searcher = Searcher.open(index, checkpoint=checkpoint)
    hits = searcher.text(query, k=k)
    table = Table(title=f'"{query}" in {index}')
    for col in ("rank", "score", "id", "caption", "path"):
        table.add_column(col)
    for i, h in enumerate(hits, 1):
        table.add_row(str(i), f"{h.score:.4f}", str(h.id), h.caption or "", h.path or "")
    console.print(table)
    if grid:
        from raylens.viz import plot_search_grid

        console.print(f"grid: {plot_search_grid([query], [hits], grid)}")


@app.command()
def bench(
    name: str = typer.Argument(..., help="Benchmark name, or 'all'. See `raylens bench list`."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result JSON here."),
    quick: bool = typer.Option(False, help="Smaller sizes, for a fast look."),
):
    """Run a benchmark: us against a baseline measured in the same run; prints and writes JSON."""
    from raylens.bench import BENCHMARKS, _load_benchmarks, markdown_table, run_benchmark

    _load_benchmarks()
    if name == "list":
        for n in BENCHMARKS.names():
            console.print(f"[bold]{n}[/bold]  {BENCHMARKS.describe(n)}")
        return
    names = BENCHMARKS.names() if name == "all" else [name]
    results = []
    for n in names:
        console.print(f"[bold]bench {n}[/bold]{' (quick)' if quick else ''} ...")
        r = run_benchmark(n, quick=quick)
        results.append(r)
        console.print_json(json.dumps(r.to_dict(), default=str))
        if json_out and name != "all":
            r.save(json_out)
            console.print(f"wrote {json_out}")
    if name == "all":
        table = markdown_table(results)
        console.print(table)
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps([r.to_dict() for r in results], indent=2, default=str))
            json_out.with_suffix(".md").write_text(table)


@app.command()
def models(pattern: str = typer.Argument("*", help="Glob, e.g. 'clip-*' or 'ViT-B*'.")):
    """List model names: ours first, then every open_clip architecture."""
    from raylens.models import MODELS, list_models

    for n in list_models(pattern):
        doc = MODELS.describe(n) if n in MODELS else "open_clip architecture"
        console.print(f"[bold]{n}[/bold]  {doc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
