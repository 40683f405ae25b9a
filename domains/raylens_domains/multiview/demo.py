"""``raylens demo 3d``: the whole 3D path on local Ray, on data it renders itself.

1. render the procedural scene (textured spheres and boxes, ray-traced analytically) from views on
   a hemisphere and write a nerfstudio capture (PNGs + ``transforms.json``);
2. read it with Ray Data and stream shuffled rays to Ray Train;
3. train the fast NeRF on ``workers`` data-parallel workers for a fixed time budget, scoring PSNR and
   SSIM on the held-out views as it goes;
4. render the held-out views next to ground truth, a turntable video and the curves.

It prints the held-out PSNR and where every picture is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NerfDemoOptions", "NerfDemoResult", "run_nerf_demo"]


@dataclass
class NerfDemoOptions:
    """The demo's knobs (the defaults finish in about 5 minutes on 2 CPU cores)."""

    workdir: Path = Path("raylens-demo-3d")
    """Where the capture, the checkpoint and the pictures go."""
    size: int = 100
    """Rendered image side, pixels."""
    n_train: int = 60
    """Training views."""
    n_test: int = 10
    """Held-out views."""
    minutes: float = 2.5
    """Training time budget (evaluation excluded); with Ray's start-up and the renders the whole demo
    stays within about 5 minutes on 2 cores."""
    workers: int = 2
    """Ray Train workers."""
    seed: int = 0
    """Seed of the scene's cameras and of training."""
    quick: bool = False
    """A smoke test: a small scene, 20 seconds of training, a short turntable."""

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        if self.size < 16:
            raise ValueError(f"`size` must be >= 16 pixels, got {self.size}")
        if self.n_train < 2 or self.n_test < 1:
            raise ValueError(f"need `n_train` >= 2 and `n_test` >= 1, got {self.n_train}, {self.n_test}")
        if self.minutes <= 0:
            raise ValueError(f"`minutes` must be > 0, got {self.minutes}")
        if self.workers < 1:
            raise ValueError(f"`workers` must be >= 1, got {self.workers}")


@dataclass
class NerfDemoResult:
    """What the demo made."""

    checkpoint: Path
    psnr: float
    """Mean PSNR (dB) on the held-out views."""
    ssim: float
    """Mean SSIM on the held-out views."""
    pictures: dict[str, Path]
    """``test_views``, ``turntable``, ``curves``, ``psnr_vs_time``."""
    history: list[dict[str, Any]]


def run_nerf_demo(options: NerfDemoOptions, console=None) -> NerfDemoResult:
    """Run the demo; ``console`` (rich) gets the progress and the summary."""
    import shutil
    import time

    from raylens.runtime import init_ray
    from raylens.train.options import RayTrainOptions
    from raylens_domains.multiview.cli import write_outputs
    from raylens_domains.multiview.ray_train import fit_nerf
    from raylens_domains.multiview.scene import generate_scene
    from raylens_domains.multiview.train import NerfDataOptions, NerfTrainConfig

    say = console.print if console is not None else print
    o = options
    size, n_train, n_test, minutes = o.size, o.n_train, o.n_test, o.minutes
    if o.quick:
        size, n_train, n_test, minutes = min(size, 48), min(n_train, 24), min(n_test, 3), min(minutes, 20 / 60)
    t0 = time.perf_counter()
    capture = o.workdir / "capture"
    say(f"[1/4] rendering the procedural scene: {n_train} + {n_test} views of {size}x{size} -> {capture}")
    generate_scene(capture, n_train=n_train, n_val=0, n_test=n_test, size=size, seed=o.seed)
    init_ray()
    say(
        f"[2/4] Ray Data: capture -> shuffled rays; [3/4] Ray Train: nerf-fast on {o.workers} workers for {minutes:.1f} min"
    )
    cfg = NerfTrainConfig(
        model="nerf-fast",
        max_steps=100_000,
        time_budget_s=60 * minutes,
        eval_every=0,
        eval_every_s=max(10.0, 60 * minutes / 6),
        log_every=25,
        seed=o.seed,
    )
    opts = RayTrainOptions(
        num_workers=o.workers, storage_path=str((o.workdir / "runs").resolve()), name=f"demo-3d-{int(time.time())}"
    )
    result = fit_nerf(capture, cfg, opts, NerfDataOptions())
    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint; see the log above")
    checkpoint = o.workdir / "checkpoint"  # a stable path (render.yaml serves it) for the run's last checkpoint
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    shutil.copytree(result.checkpoint, checkpoint)
    say("[4/4] rendering the held-out views, a turntable and the curves")
    out = write_outputs(checkpoint, capture, o.workdir, grid_views=6, turntable_frames=24 if o.quick else 60)
    pictures = {"test_views": out.test_grid, "turntable": out.video}
    for p in out.curves:
        pictures[p.stem] = p
    pictures = {k: v for k, v in pictures.items() if v is not None}
    m = result.metrics
    psnr, ssim = float(m.get("val_psnr", out.psnr or float("nan"))), float(m.get("val_ssim", out.ssim or float("nan")))
    say(
        f"[bold]held-out PSNR {psnr:.2f} dB, SSIM {ssim:.3f}[/bold] after {result.steps} steps "
        f"({m.get('time_s', 0):.0f}s of training); whole demo {time.perf_counter() - t0:.0f}s"
    )
    for name, path in pictures.items():
        say(f"  {name}: {path}")
    say(f"  checkpoint: {checkpoint}  (raylens render {checkpoint} --turntable)")
    return NerfDemoResult(checkpoint, psnr, ssim, pictures, result.history)
