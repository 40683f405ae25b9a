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
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from raylens.cli_cluster import cluster_app
from raylens.cli_cluster import status as cluster_status
from raylens.cli_options import OptionGroup, config_options, ray_train_options

if TYPE_CHECKING:  # the configs config_options builds from the flags
    from raylens.train.config import ClipTrainConfig
    from raylens.train.options import RayTrainOptions

__all__ = ["app", "main"]

app = typer.Typer(
    help="raylens: multi-modal and 3D vision on Ray. Ingest images, train models, build FAISS indices, search "
    "and serve them.\n\n"
    "Start with `raylens demo` (the whole text-to-image path on local Ray, a few minutes on 2 cores), "
    "then `raylens train --help`. `raylens COMMAND --help` explains each command.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console()
train_app = typer.Typer(
    help="Train a model with Ray Train: one subcommand per model kind, the same options for where it runs "
    "(--workers, --gpu, --storage, --name: re-run with the same name and storage to resume).\n\n"
    "Each kind's training options are the fields of its config dataclass, with their defaults; "
    "`--config FILE.yaml` sets any of them from a file and `--dry-run` prints the resolved file. "
    "`raylens train KIND --help` lists them.",
    no_args_is_help=True,
    subcommand_metavar="KIND [ARGS]...",
    rich_markup_mode="rich",
)
app.add_typer(train_app, name="train")
demo_app = typer.Typer(
    help="Run a demo end to end on local Ray with data it makes itself; it prints what it found and says where "
    "the pictures are.\n\n"
    "`raylens demo` runs the text-to-image search demo (`raylens demo search --help` shows all its options); "
    "`raylens demo NAME` runs another one, listed below.",
    invoke_without_command=True,
    subcommand_metavar="[NAME] [ARGS]...",
    rich_markup_mode="rich",
)
app.add_typer(demo_app, name="demo")
app.add_typer(cluster_app, name="cluster")
app.command("status")(cluster_status)


@demo_app.callback()
def demo(
    ctx: typer.Context,
    workdir: Path | None = typer.Option(
        None, help="Where data, checkpoints and pictures go (default: the demo's own)."
    ),
    quick: bool = typer.Option(False, "--quick", help="A much smaller run (a smoke test, lower quality)."),
):
    """With no NAME: the text-to-image search demo, with these options."""
    if ctx.invoked_subcommand is not None:
        return
    command = typer.main.get_command(demo_app).commands["search"]
    args = [*(["--workdir", str(workdir)] if workdir else []), *(["--quick"] if quick else [])]
    with command.make_context("search", args, parent=ctx) as sub:
        command.invoke(sub)


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
    name: str = typer.Argument(
        ...,
        help="Benchmark name; 'all' (every speed benchmark, then the table and chart); 'list'; or 'report' "
        "(the table and chart from saved JSON: raylens bench report benchmarks/results/*.json --json out.json).",
    ),
    files: list[Path] | None = typer.Argument(None, help="With 'report': the result JSON files."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write the result JSON here (with 'all'/'report': also OUT.md and OUT.png)."
    ),
    quick: bool = typer.Option(False, help="Smaller sizes, for a fast look."),
):
    """Run a benchmark against the tools users would pick instead, measured in the same run.

    Each result holds raylens' figure, every rival's, end-to-end and steady-state windows and the
    machine's physical bound; a figure above its bound is an error, not a number. Examples:

      raylens bench list

      raylens bench embed --json embed.json

      raylens bench all --json results/all.json     (writes all.json, all.md and all.png)
    """
    from raylens.bench import BENCHMARKS, _load_benchmarks, load_results, run_benchmark

    _load_benchmarks()
    if name == "list":
        for n in BENCHMARKS.names():
            suite = BENCHMARKS.meta(n).get("suite", "speed")
            console.print(
                f"[bold]{n}[/bold]  {BENCHMARKS.describe(n)}" + (f"  [dim]({suite})[/dim]" if suite != "speed" else "")
            )
        return
    if name == "report":
        if not files:
            raise typer.BadParameter("name the result JSON files, e.g. benchmarks/results/*.json", param_hint="FILES")
        _bench_summary(load_results(files), json_out)
        return
    names = BENCHMARKS.names(suite="speed") if name == "all" else [name]
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
        _bench_summary(results, json_out)


def _bench_summary(results, json_out: Path | None) -> None:
    """Print the markdown table; with ``json_out`` write OUT (all results), OUT.md and OUT.png."""
    from raylens.bench import markdown_table, plot_ratios

    table = markdown_table(results)
    typer.echo(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([r.to_dict() for r in results], indent=2, default=str) + "\n")
        json_out.with_suffix(".md").write_text(table)
        png = plot_ratios(results, json_out.with_suffix(".png"))
        console.print(f"wrote {json_out}, {json_out.with_suffix('.md')} and {png}")


def _clip_train_options() -> OptionGroup:
    """``ClipTrainConfig`` on the command line: every field but the loss internals and the templates
    (``--template`` sets those, after the eval data's own)."""
    from raylens.train.config import LOSSES, PRECISIONS, ClipTrainConfig

    return OptionGroup(
        ClipTrainConfig,
        param="cfg",
        section="train",
        flags={"max_steps": "--steps", "zeroshot_classes": "--classes"},
        hidden=("local_loss", "gather_with_grad", "zeroshot_templates"),
        split=("zeroshot_classes",),
        choices={"loss": LOSSES, "precision": PRECISIONS},
        panel="Training (ClipTrainConfig)",
        prepare=_short_run_defaults,
    )


def _short_run_defaults(values: dict) -> dict:
    """Defaults fit for a short run, where the user gave none: it logs about 10 times (never less often
    than the default) and, when no longer than the default warm-up, warms up for all but its last step."""
    from raylens.train.config import ClipTrainConfig

    steps = values.get("max_steps", ClipTrainConfig.max_steps)
    if not isinstance(steps, int) or steps < 1:
        return values  # the config's own validation names the problem
    if "log_every" not in values:
        values["log_every"] = min(ClipTrainConfig.log_every, max(1, steps // 10))
    if "warmup_steps" not in values and steps <= ClipTrainConfig.warmup_steps:
        values["warmup_steps"] = steps - 1
    return values


@train_app.command("clip")
@config_options(_clip_train_options(), ray_train_options())
def train_clip(
    data: str = typer.Argument(
        ...,
        help="Training data: 'digits', captions .csv/.jsonl/.parquet, a class-folder root, or WebDataset .tar shards.",
    ),
    eval_data: str | None = typer.Option(
        None, "--eval", help="Held-out data for zero-shot + retrieval eval ('digits' = held-out digits)."
    ),
    template: list[str] | None = typer.Option(
        None,
        metavar="<str>",
        help="Zero-shot prompt template with {} for the class; repeatable. Default: the eval data's own "
        "('a photo of the digit {}' for digits) or 'a photo of a {}.'.",
    ),
    augment: bool = typer.Option(
        False, "--augment", help="Train-time RandomResizedCrop (open_clip's train transform), seeded."
    ),
    hflip: bool = typer.Option(False, "--hflip", help="Also flip training images left-right at random."),
    randaugment: bool = typer.Option(False, "--randaugment", help="Also apply RandAugment to training images."),
    workdir: Path | None = typer.Option(
        None, help="Where curves.png, history.csv and confusion.png go (default: STORAGE/NAME/outputs)."
    ),
    *,
    cfg: ClipTrainConfig,
    opts: RayTrainOptions,
):
    """Train (or fine-tune) a CLIP model with Ray Train on CPU workers or GPUs.

    The training and Ray options are the fields of ClipTrainConfig and RayTrainOptions, with their defaults
    (a short run logs about 10 times, and one of 30 steps or fewer warms up for all but its last step,
    unless --log-every / --warmup-steps say otherwise).
    `--config run.yaml` sets any field from a file; `--dry-run` prints the resolved file to start from.

    Examples:

      raylens train clip digits --eval digits    (>= 90% zero-shot on held-out digits)

      raylens train clip data/captions.parquet --eval data/val.csv --model ViT-B-32 --gpu --workers 8 --precision amp

      raylens train clip shards/{00000..00099}.tar --loss siglip --accum-steps 4 --name run1 --storage s3://bucket/runs
    """
    from raylens.train.ray_recipe import TrainJob, run_train_job

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
    host: str = typer.Option("127.0.0.1", help="Address the HTTP proxy binds (any but loopback needs an API key)."),
    port: int = typer.Option(8000, help="HTTP port."),
    api_key_file: Path | None = typer.Option(
        None,
        "--api-key-file",
        help="File whose first line is the API key requests must carry (default: RAYLENS_API_KEY_FILE, "
        "or the key in RAYLENS_API_KEY).",
    ),
    open_: bool = typer.Option(
        False, "--open", help="Serve WITHOUT an API key even on a non-loopback --host (anyone who can reach it)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
):
    """Start the search service on Ray Serve (autoscaled; the page is at http://HOST:PORT/).

    Runs Serve's own `serve run` on the config with paths made absolute, so `raylens serve` and
    `serve run services/raylens_services/search.yaml` start the same application. The API key is
    resolved here and written into the config the service starts from (so every replica enforces
    it, on any node); without one, a non-loopback --host is refused unless --open says so."""
    import os
    import shutil
    import sys

    import yaml

    from raylens.serve.auth import API_KEY_ENV, API_KEY_FILE_ENV, resolve_auth
    from raylens.serve.config import resolve_config, search_app
    from raylens.serve.limits import ServeConfigError
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
    args = search_app(cfg)["args"]
    if api_key_file is not None:
        args["api_key_file"] = str(api_key_file.expanduser().resolve())
    if open_:
        args["open"] = True
    try:
        auth = resolve_auth(args.get("api_key"), args.get("api_key_file"), bool(args.get("open", False)))
        auth.check_bind(host)
    except ServeConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--api-key-file / --open") from None
    # the key travels in the config the app is built from, never in the replicas' environment
    if auth.source == API_KEY_ENV:
        args["api_key"] = auth.api_key
    elif auth.source == API_KEY_FILE_ENV:
        args["api_key_file"] = str(Path(os.environ[API_KEY_FILE_ENV]).expanduser().resolve())
    text = yaml.safe_dump(cfg, sort_keys=False)
    if dry_run:
        shown = yaml.safe_load(text)
        if "api_key" in args:
            search_app(shown)["args"]["api_key"] = "<hidden>"
        typer.echo(yaml.safe_dump(shown, sort_keys=False))  # plain, unwrapped YAML
        return
    out = Path.home() / ".raylens" / f"serve-{port}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the API key
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(out, 0o600)
    serve_cli = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    if serve_cli is None:
        raise typer.BadParameter("Serve's `serve` command is not installed; pip install 'ray[serve]'")
    access = f"API key from {auth.source}" if auth.required else "NO API key"
    console.print(f"[bold]serve run {out}[/bold]  (page: http://{host}:{port}/; {access})")
    os.execv(serve_cli, [serve_cli, "run", str(out)])


@app.command()
def models(
    pattern: str = typer.Argument("*", help="Glob, e.g. 'clip-*', 'ViT-B*' or 'timm/resnet*'."),
    kind: str = typer.Option(None, "--kind", help="Only this kind: clip, classifier, fusion, nerf or diffusion."),
):
    """List models of every kind with their kind and description: registered ones, then library families.

    With no PATTERN, each library family (open_clip, timm) is summed up in one line; give a pattern to list its names.
    """
    from raylens.models import MODEL_KINDS, model_infos

    if kind is not None and kind not in MODEL_KINDS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    families: dict[str, list] = {}
    for info in model_infos(pattern, kind=kind):
        if info.source != "registered" and pattern == "*":
            families.setdefault(info.source, []).append(info)
            continue
        console.print(f"[bold]{info.name}[/bold]  [cyan]{info.kind}[/cyan]  {info.doc}")
    for source, infos in families.items():
        console.print(
            f"[bold]+ {len(infos)} {source} models[/bold]  [cyan]{infos[0].kind}[/cyan]  {infos[0].doc}; "
            "give a PATTERN to list their names"
        )


def _add_plugin_commands() -> None:
    """Commands the domain packs register (``raylens.plugins``): training kinds, demos, top-level commands."""
    from raylens.plugins import COMMANDS, DEMOS, TRAIN_COMMANDS, load_plugins

    load_plugins()
    for registry, target in ((TRAIN_COMMANDS, train_app), (DEMOS, demo_app), (COMMANDS, app)):
        for name in registry.names():
            entry = registry.get(name)
            if isinstance(entry, typer.Typer):  # a group of subcommands, e.g. `raylens classify ...`
                target.add_typer(entry, name=name, short_help=registry.describe(name) or None)
            else:
                target.command(name, short_help=registry.describe(name) or None)(entry)


_add_plugin_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
