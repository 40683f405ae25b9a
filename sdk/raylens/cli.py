"""The ``raylens`` command line.

raylens demo                      the whole text-to-image path on local Ray, in a few minutes
raylens demo NAME                 a domain pack's demo (`raylens demo --help` lists them)
raylens train clip digits --eval digits  CLIP with Ray Train, zero-shot + retrieval eval, curves
raylens train KIND ...            every training kind (`raylens train --help` lists them)
raylens search INDEX "a red circle" -k 10 [--grid out.png]
raylens bench embed --json out.json
raylens models [PATTERN]
raylens serve [CONFIG] --index runs/demo/index --port 8000
"""

from __future__ import annotations

import json
from pathlib import Path

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
train_app = typer.Typer(
    help="Train a model with Ray Train: one subcommand per model kind, the same options for where it runs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(train_app, name="train")
demo_app = typer.Typer(
    help="Run a demo end to end on local Ray with data it makes itself. With no NAME: the text-to-image search demo.",
    invoke_without_command=True,
    rich_markup_mode="rich",
)
app.add_typer(demo_app, name="demo")


@demo_app.callback()
def demo(
    ctx: typer.Context,
    workdir: Path | None = typer.Option(
        None, help="Where data, checkpoints and pictures go (default: the demo's own)."
    ),
    quick: bool = typer.Option(False, help="A much smaller run (a smoke test, lower quality)."),
):
    """Run a demo end to end on local Ray with data it generates itself; it prints what it found and
    says where the pictures are.

    With no NAME: the text-to-image search demo (`raylens demo search --help` shows all its options).
    `raylens demo NAME --help` shows another demo's options."""
    if ctx.invoked_subcommand is not None:
        return
    command = typer.main.get_command(demo_app).commands["search"]
    ctx.invoke(command, **({"workdir": workdir} if workdir else {}), quick=quick)


@app.command()
def search(
    index: Path = typer.Argument(..., help="Index directory (holds manifest.json)."),
    query: str = typer.Argument(..., help='Text query, e.g. "a small red circle".'),
    k: int = typer.Option(10, "-k", help="How many results."),
    grid: Path | None = typer.Option(None, help="Also write a PNG grid of the results here."),
    checkpoint: Path | None = typer.Option(None, help="Model checkpoint (default: the one in the manifest)."),
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
    json_out: Path | None = typer.Option(None, "--json", help="Write the result JSON here."),
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


@train_app.command("clip")
def train_clip(
    data: str = typer.Argument(
        ...,
        help="Training data: 'digits', captions .csv/.jsonl/.parquet, a class-folder root, or WebDataset .tar shards.",
    ),
    eval_data: str | None = typer.Option(
        None, "--eval", help="Held-out data for zero-shot + retrieval eval ('digits' = held-out digits)."
    ),
    model: str = typer.Option("clip-tiny", help="Registry or open_clip name (`raylens models`)."),
    pretrained: str | None = typer.Option(None, help="Start from a local checkpoint dir / weights file."),
    steps: int = typer.Option(600, help="Optimizer steps."),
    batch_size: int = typer.Option(64, help="Images per worker per micro-batch."),
    accum_steps: int = typer.Option(1, help="Micro-batches per optimizer step (features cached: all negatives count)."),
    lr: float = typer.Option(3e-3, help="Peak learning rate (cosine schedule after warm-up)."),
    warmup_steps: int = typer.Option(30, help="Linear warm-up steps."),
    loss: str = typer.Option("clip", help="clip (softmax, global negatives) or siglip (pairwise sigmoid)."),
    precision: str = typer.Option("fp32", help="fp32, amp (fp16 + GradScaler, CUDA) or amp_bf16."),
    grad_checkpointing: bool = typer.Option(False, help="Trade compute for activation memory."),
    augment: bool = typer.Option(False, help="Train-time RandomResizedCrop (open_clip's train transform), seeded."),
    hflip: bool = typer.Option(False, help="Also flip training images left-right at random."),
    randaugment: bool = typer.Option(False, help="Also apply RandAugment to training images."),
    lock_image: bool = typer.Option(False, help="Freeze the image tower (fine-tune text only)."),
    lock_text: bool = typer.Option(False, help="Freeze the text tower (fine-tune image only)."),
    classes: str | None = typer.Option(
        None, help="Comma-separated class names for zero-shot eval (default: from the eval data)."
    ),
    template: list[str] | None = typer.Option(
        None,
        help="Zero-shot prompt template with {} for the class; repeatable. Default: the eval data's own ('a photo of the digit {}' for digits) or 'a photo of a {}.'.",
    ),
    eval_every: int = typer.Option(0, help="Evaluate every N steps (0: at the end only)."),
    checkpoint_every: int = typer.Option(0, help="Checkpoint every N steps (0: at the end only)."),
    workers: int = typer.Option(2, help="Ray Train workers."),
    gpu: bool = typer.Option(False, help="One GPU per worker (NCCL)."),
    name: str | None = typer.Option(None, help="Run name: re-run with the same name + storage to resume."),
    storage: str | None = typer.Option(None, help="Checkpoint storage (shared on a cluster). Default ~/.raylens/runs."),
    max_failures: int = typer.Option(0, help="Worker-group restarts before the run fails."),
    keep: int = typer.Option(2, help="Checkpoints to keep."),
    workdir: Path = typer.Option(Path("raylens-train"), help="Where curves.png, history.csv and confusion.png go."),
    seed: int = typer.Option(0, help="Seed for weights, data order and splits."),
):
    """Train (or fine-tune) a CLIP model with Ray Train on CPU workers or GPUs.

    Examples:

      raylens train clip digits --eval digits    (>= 90% zero-shot on held-out digits)

      raylens train clip data/captions.parquet --eval data/val.csv --model ViT-B-32 --gpu --workers 8 --precision amp

      raylens train clip shards/{00000..00099}.tar --loss siglip --accum-steps 4 --name run1 --storage s3://bucket/runs
    """
    from raylens.train import ClipTrainConfig
    from raylens.train.ray_clip import RayTrainOptions
    from raylens.train.ray_recipe import TrainJob, run_train_job

    cfg = ClipTrainConfig(
        model=model,
        pretrained=pretrained,
        max_steps=steps,
        batch_size=batch_size,
        accum_steps=accum_steps,
        lr=lr,
        warmup_steps=min(warmup_steps, steps - 1),
        loss=loss,
        precision=precision,
        grad_checkpointing=grad_checkpointing,
        lock_image=lock_image,
        lock_text=lock_text,
        zeroshot_classes=classes.split(",") if classes else None,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        log_every=max(1, min(25, steps // 10)),
        seed=seed,
    )
    opts = RayTrainOptions(
        num_workers=workers, use_gpu=gpu, name=name, storage_path=storage, max_failures=max_failures, num_to_keep=keep
    )
    run_train_job(
        TrainJob(
            train=data,
            eval=eval_data,
            workdir=workdir,
            templates=template or None,
            augment=augment,
            hflip=hflip,
            randaugment=randaugment,
        ),
        cfg,
        opts,
        console=console,
    )


@app.command()
def serve(
    config: Path | None = typer.Argument(
        None, help="Serve config YAML (default: the packaged services/raylens_services/search.yaml)."
    ),
    index: str | None = typer.Option(None, help="Index dir, or name=dir,name2=dir2 (replaces the config's indices)."),
    checkpoint: Path | None = typer.Option(None, help="CLIP checkpoint (default: the one in the index manifest)."),
    host: str = typer.Option("127.0.0.1", help="Address the HTTP proxy binds."),
    port: int = typer.Option(8000, help="HTTP port."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
):
    """Start the search service on Ray Serve (autoscaled; the page is at http://HOST:PORT/).

    Runs Serve's own `serve run` on the config with paths made absolute, so `raylens serve` and
    `serve run services/raylens_services/search.yaml` start the same application."""
    import os
    import shutil
    import sys

    import yaml

    from raylens.serve.config import resolve_config
    from raylens.serve.ray_apps import load_config, packaged_config

    path = config or packaged_config()
    cfg = resolve_config(
        load_config(path),
        base_dir=Path.cwd(),
        host=host,
        port=port,
        indices=index,
        checkpoint=str(checkpoint) if checkpoint else None,
    )
    text = yaml.safe_dump(cfg, sort_keys=False)
    if dry_run:
        typer.echo(text)  # plain, unwrapped YAML
        return
    out = Path.home() / ".raylens" / f"serve-{port}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    serve_cli = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    if serve_cli is None:
        raise typer.BadParameter("Serve's `serve` command is not installed; pip install 'ray[serve]'")
    console.print(f"[bold]serve run {out}[/bold]  (page: http://{host}:{port}/)")
    os.execv(serve_cli, [serve_cli, "run", str(out)])


@app.command()
def models(pattern: str = typer.Argument("*", help="Glob, e.g. 'clip-*' or 'ViT-B*'.")):
    """List model names: ours first, then every open_clip architecture."""
    from raylens.models import MODELS, list_models

    for n in list_models(pattern):
        doc = MODELS.describe(n) if n in MODELS else "open_clip architecture"
        console.print(f"[bold]{n}[/bold]  {doc}")


def _add_plugin_commands() -> None:
    """Commands the domain packs register (``raylens.plugins``): training kinds, demos, top-level commands."""
    from raylens.plugins import COMMANDS, DEMOS, TRAIN_COMMANDS, load_plugins

    load_plugins()
    for registry, target in ((TRAIN_COMMANDS, train_app), (DEMOS, demo_app), (COMMANDS, app)):
        for name in registry.names():
            target.command(name, short_help=registry.describe(name) or None)(registry.get(name))


_add_plugin_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
