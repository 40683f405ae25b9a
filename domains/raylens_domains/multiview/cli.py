"""The multiview pack's commands: ``raylens train nerf``, ``raylens render`` and ``raylens demo 3d``.

    raylens train nerf CAPTURE [--model nerf-fast] [--steps 3000] [--workers 2] [--name run1]
    raylens train nerf CAPTURE --backend nerfstudio        (ns-train nerfacto as a Ray job)
    raylens render CHECKPOINT --turntable [--frames 60] [--out spin.mp4]
    raylens render CHECKPOINT --look-at 0,-4,2 0,0,0 [--width 400]
    raylens render CHECKPOINT --pose "1 0 0 0 0 1 0 0 0 0 1 4 0 0 0 1" --out view.png

``train nerf`` writes the checkpoint (a ``raylens.checkpoint/1`` directory with the scene record),
and under ``STORAGE/NAME/outputs`` (or ``--workdir``): ``curves.png``, ``psnr_vs_time.png``, ``history.csv``, ``test_views.png``
(renders next to ground truth) and ``turntable.mp4``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from raylens.cli_options import OptionGroup, config_options, ray_train_options
from raylens.plugins import COMMANDS, DEMOS, TRAIN_COMMANDS
from raylens.train.options import RayTrainOptions
from raylens.train.result import TrainResult
from raylens_domains.multiview.train import NerfDataOptions, NerfTrainConfig

__all__ = [
    "BACKENDS",
    "NerfOutputs",
    "parse_model_args",
    "write_outputs",
    "train_nerf_command",
    "render_command",
    "demo_3d",
]

BACKENDS = ("raylens", "nerfstudio")
"""``raylens``: our models on Ray Train; ``nerfstudio``: ``ns-train nerfacto`` submitted as a Ray job."""


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``["resolution=128", "sh_degree=0"]`` -> ``{"resolution": 128, "sh_degree": 0}`` (values as JSON
    when they parse, else strings).

    >>> parse_model_args(["resolution=128", "upsample_steps=[100,200]", "background=black"])
    {'resolution': 128, 'upsample_steps': [100, 200], 'background': 'black'}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"--model-arg takes NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


@dataclass
class NerfOutputs:
    """What :func:`write_outputs` made."""

    test_grid: Path | None
    """Held-out views rendered next to ground truth (PNG)."""
    video: Path | None
    """The turntable (MP4, or GIF when no MP4 writer is available)."""
    curves: list[Path]
    """Training curves copied from the checkpoint."""
    psnr: float | None
    """Mean PSNR (dB) over the held-out views rendered for the grid."""
    ssim: float | None
    """Mean SSIM over the same views."""


def write_outputs(
    checkpoint: Path,
    data: str | Path,
    workdir: Path,
    data_opts: NerfDataOptions | None = None,
    *,
    grid_views: int = 6,
    turntable_frames: int = 48,
    turntable_size: int | None = None,
) -> NerfOutputs:
    """Render the held-out views next to ground truth, a turntable video, and copy the curves."""
    from raylens_domains.multiview.metrics import psnr, ssim
    from raylens_domains.multiview.readers import plan_capture, read_frames
    from raylens_domains.multiview.render_views import load_nerf, render_turntable, render_view, view_grid
    from raylens_domains.multiview.video import write_video

    data_opts = data_opts or NerfDataOptions()
    workdir.mkdir(parents=True, exist_ok=True)
    nerf = load_nerf(checkpoint)
    counts = plan_capture(data, downscale=data_opts.downscale, normalize=data_opts.normalize).info.counts
    grid, scores = None, ([], [])
    if counts.get(data_opts.eval_split) and grid_views:
        frames = read_frames(
            data, downscale=data_opts.downscale, normalize=data_opts.normalize, split=data_opts.eval_split
        ).frames[:grid_views]
        pairs, labels = [], []
        for f in frames:
            gt = f.image if f.image.dtype.name == "uint8" else (f.image.clip(0, 1) * 255 + 0.5).astype("uint8")
            pred = render_view(nerf.model, f.c2w, f.intrinsics).rgb
            scores[0].append(psnr(pred, gt))
            scores[1].append(ssim(pred, gt))
            pairs.append((pred, gt))
            labels.append(f"frame {f.frame_id}: {scores[0][-1]:.2f} dB")
        grid = view_grid(pairs, workdir / "test_views.png", labels)
    video = None
    if turntable_frames:
        frames = render_turntable(nerf, turntable_frames, turntable_size, turntable_size)
        video = write_video(frames, workdir / "turntable.mp4", fps=24)
    curves = []
    for name in ("curves.png", "psnr_vs_time.png", "history.csv"):
        if (checkpoint / name).is_file():
            curves.append(Path(shutil.copy(checkpoint / name, workdir / name)))
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else None
    return NerfOutputs(grid, video, curves, mean(scores[0]), mean(scores[1]))


def _train_options() -> OptionGroup:
    return OptionGroup(
        NerfTrainConfig,
        param="cfg",
        section="train",
        flags={"max_steps": "--steps"},
        hidden=("model_args",),
        panel="Training (NerfTrainConfig)",
    )


def _data_options() -> OptionGroup:
    return OptionGroup(
        NerfDataOptions,
        param="data_opts",
        section="data",
        hidden=("frames_per_task", "shuffle_buffer", "cache_max_rays"),
        choices={"normalize": ("auto", "aabb", "cameras", "none"), "eval_split": ("test", "val")},
        panel="Data (NerfDataOptions)",
    )


@TRAIN_COMMANDS.register("nerf", doc="NeRF (nerf-fast or nerf-vanilla) on a multi-view capture, with Ray Train.")
@config_options(_train_options(), _data_options(), ray_train_options())
def train_nerf_command(
    data: str = typer.Argument(
        ..., help="A capture: nerfstudio transforms.json folder, Blender transforms_*.json folder, or COLMAP model."
    ),
    backend: str = typer.Option(
        "raylens", help="raylens (our models on Ray Train) or nerfstudio (ns-train as a Ray job)."
    ),
    model_arg: list[str] | None = typer.Option(
        None, metavar="NAME=VALUE", help="A model argument, repeatable: resolution=128, sh_degree=0."
    ),
    workdir: Path | None = typer.Option(
        None,
        help="Where test_views.png, turntable.mp4, curves.png and psnr_vs_time.png go "
        "(default: STORAGE/NAME/outputs, beside the checkpoints).",
    ),
    renders: bool = typer.Option(True, help="Render the held-out views and a turntable after training."),
    address: str | None = typer.Option(None, help="With --backend nerfstudio: the Ray cluster's job address."),
    *,
    cfg: NerfTrainConfig,
    data_opts: NerfDataOptions,
    opts: RayTrainOptions,
):
    """Train a NeRF on a posed multi-view capture with Ray Train (data-parallel over ray batches).

    Prints progress with held-out PSNR/SSIM, then renders the held-out views next to ground truth and a
    turntable video. The same --name and --storage resume a stopped run.

    Examples:

      raylens train nerf capture/ --steps 3000

      raylens train nerf capture/ --model nerf-vanilla --time-budget-s 600 --workers 1

      raylens train nerf capture/ --backend nerfstudio --address http://head:8265
    """
    from rich.console import Console

    console = Console()
    if backend not in BACKENDS:
        raise typer.BadParameter(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "nerfstudio":
        from raylens_domains.multiview.ray_nerfstudio import submit_nerfstudio

        job_id = submit_nerfstudio(data, address=address, max_steps=cfg.max_steps, use_gpu=opts.use_gpu)
        console.print(
            f"submitted [bold]{job_id}[/bold]: ns-train nerfacto on {data} (`ray job logs {job_id} -f` to follow)"
        )
        return
    from raylens.runtime import init_ray
    from raylens.train.outputs import RunOutputs, named_run, print_outputs
    from raylens_domains.multiview.ray_train import fit_nerf

    if model_arg:
        cfg.model_args.update(parse_model_args(model_arg))
    opts = named_run(opts, "nerf")
    outputs = RunOutputs.for_run(opts, workdir)
    init_ray()
    result: TrainResult = fit_nerf(data, cfg, opts, data_opts)
    if result.checkpoint is None:
        console.print("[red]training reported no checkpoint[/red]")
        raise typer.Exit(1)
    m = result.metrics
    console.print(
        f"[bold]done[/bold]: {result.steps} steps in {result.seconds:.0f}s; held-out PSNR "
        f"{m.get('val_psnr', float('nan')):.2f} dB, SSIM {m.get('val_ssim', float('nan')):.3f}"
    )
    files: dict[str, Path] = {}
    if renders:
        out = write_outputs(Path(result.checkpoint), data, outputs.local, data_opts)
        for label, path in (("test views", out.test_grid), ("turntable", out.video)):
            if path is not None:
                files[label] = path
        files.update({p.stem: p for p in out.curves})
    print_outputs(console, opts, result.location, outputs.publish(files))


@COMMANDS.register("render", doc="Render a NeRF checkpoint: any pose, a look-at camera, or a turntable video.")
def render_command(
    checkpoint: Path = typer.Argument(..., help="A NeRF checkpoint directory (from `raylens train nerf`)."),
    pose: str | None = typer.Option(
        None, help="Camera-to-world in the capture's frame: 16 numbers (row-major 4x4), 12 (3x4), or a JSON file."
    ),
    look_at: tuple[str, str] | None = typer.Option(
        None, "--look-at", metavar="EYE TARGET", help="A camera at EYE looking at TARGET (x,y,z each, capture frame)."
    ),
    up: str = typer.Option("0,0,1", help="With --look-at: the up direction (x,y,z)."),
    turntable: bool = typer.Option(False, "--turntable", help="A full turn around the scene, as a video."),
    frames: int = typer.Option(60, help="With --turntable: frames in the turn."),
    fps: float = typer.Option(24, help="With --turntable: frames per second."),
    width: int | None = typer.Option(None, help="Image width (default: the training views')."),
    height: int | None = typer.Option(None, help="Image height (default: as wide, or the training views')."),
    fov: float | None = typer.Option(None, help="Horizontal field of view in degrees (default: the training views')."),
    out: Path | None = typer.Option(None, help="Output file (default: render.png, or turntable.mp4 with --turntable)."),
):
    """Render novel views from a trained NeRF checkpoint: a PNG for one camera, an MP4 (GIF fallback)
    for a turntable."""
    import math

    import numpy as np
    from rich.console import Console

    from raylens_domains.multiview.cameras import look_at as make_look_at
    from raylens_domains.multiview.render_views import load_nerf, parse_pose, render_turntable, render_view, save_png
    from raylens_domains.multiview.video import write_video

    console = Console()
    chosen = sum(x for x in (pose is not None, look_at is not None, turntable))
    if chosen != 1:
        raise typer.BadParameter("give exactly one of --pose, --look-at or --turntable")
    for name, value in (("width", width), ("height", height), ("frames", frames)):
        if value is not None and value < 1:
            raise typer.BadParameter(f"--{name} must be >= 1, got {value}")
    nerf = load_nerf(checkpoint)
    angle = math.radians(fov) if fov else None
    if angle is not None and not 0 < angle < math.pi:
        raise typer.BadParameter(f"--fov must be between 0 and 180 degrees, got {fov}")
    if turntable:
        images = render_turntable(nerf, frames, width, height or width, camera_angle_x=angle)
        path = write_video(images, out or Path("turntable.mp4"), fps=fps)
        console.print(f"turntable ({frames} frames): {path}")
        return
    try:
        if pose is not None:
            c2w = parse_pose(pose)
        else:
            eye, target = (np.asarray([float(v) for v in s.split(",")]) for s in look_at)
            c2w = make_look_at(eye, target, up=[float(v) for v in up.split(",")])
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    k = nerf.intrinsics(width, height or width, angle)
    view = render_view(nerf.model, nerf.to_model_frame(c2w), k)
    path = save_png(view.rgb, out or Path("render.png"))
    console.print(f"render ({k.width}x{k.height}): {path}")


@DEMOS.register(
    "3d", doc="Procedural scene -> Ray Data -> fast NeRF on Ray Train -> held-out PSNR, renders, turntable."
)
def demo_3d(
    workdir: Path = typer.Option(Path("raylens-demo-3d"), help="Where the capture, checkpoint and pictures go."),
    minutes: float = typer.Option(2.5, help="Training time budget (evaluation excluded)."),
    workers: int = typer.Option(2, help="Ray Train workers."),
    size: int = typer.Option(100, help="Rendered image side, pixels."),
    n_train: int = typer.Option(60, help="Training views."),
    n_test: int = typer.Option(10, help="Held-out views."),
    seed: int = typer.Option(0, help="Seed of the cameras and of training."),
    quick: bool = typer.Option(False, help="A smoke test: a small scene and 20 seconds of training."),
):
    """Render a procedural scene, read it with Ray Data, train the fast NeRF with Ray Train, score the
    held-out views and render them next to ground truth plus a turntable video (about 5 minutes on 2 cores)."""
    from rich.console import Console

    from raylens_domains.multiview.demo import NerfDemoOptions, run_nerf_demo

    try:
        options = NerfDemoOptions(workdir, size, n_train, n_test, minutes, workers, seed, quick)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    run_nerf_demo(options, console=Console())
