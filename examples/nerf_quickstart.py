"""NeRF quickstart: a posed capture -> Ray Data -> NeRF on Ray Train -> held-out PSNR -> novel views.

    python examples/nerf_quickstart.py                 # renders the procedural scene first
    python examples/nerf_quickstart.py path/to/capture  # a nerfstudio / Blender / COLMAP capture
    python examples/nerf_quickstart.py --minutes 10 --workers 4 --gpu

Copy it and change the marked lines. What each step is:

1. the capture: a folder with ``transforms.json`` (nerfstudio), ``transforms_{train,val,test}.json``
   (Blender) or a COLMAP sparse model; the reader normalises the scene into [-1, 1]^3 and records
   the transform, so renders can be asked for in the capture's own frame;
2. ``fit_nerf``: Ray Data reads the frames and streams shuffled rays to Ray Train workers, which
   train ``nerf-fast`` data-parallel (gradients averaged every step) and score PSNR/SSIM on the
   held-out views; checkpoints are ``raylens.checkpoint/1`` directories (resume with the same name);
3. ``load_nerf`` + ``render_view`` / ``render_turntable``: any camera, in the capture's frame;
4. serve it: ``serve run services/raylens_services/render.yaml`` with ``checkpoints`` pointing at
   the checkpoint, then ``POST /render`` a camera pose and get a PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from raylens.runtime import init_ray
from raylens.train.options import RayTrainOptions
from raylens_domains.multiview.cameras import look_at
from raylens_domains.multiview.ray_train import fit_nerf
from raylens_domains.multiview.render_views import load_nerf, render_turntable, render_view, save_png
from raylens_domains.multiview.scene import generate_scene
from raylens_domains.multiview.train import NerfDataOptions, NerfTrainConfig
from raylens_domains.multiview.video import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("capture", nargs="?", help="A capture folder (default: render the procedural scene).")
    parser.add_argument("--out", type=Path, default=Path("nerf-quickstart"), help="Where everything goes.")
    parser.add_argument("--minutes", type=float, default=3.0, help="Training time budget.")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers.")
    parser.add_argument("--gpu", action="store_true", help="One GPU per worker.")
    args = parser.parse_args()

    # 1. the capture (replace with your own: nerfstudio, Blender or COLMAP)
    capture = args.capture or generate_scene(args.out / "capture", n_train=60, n_val=0, n_test=10, size=100).root

    # 2. train on Ray: the model and its settings, then where it runs
    init_ray()
    cfg = NerfTrainConfig(
        model="nerf-fast",  # or "nerf-vanilla", the readable reference
        model_args={},  # e.g. {"resolution": 256} for larger images
        max_steps=100_000,
        time_budget_s=60 * args.minutes,
        eval_every=0,
        eval_every_s=30,
        log_every=50,
    )
    opts = RayTrainOptions(
        num_workers=args.workers,
        use_gpu=args.gpu,
        storage_path=str((args.out / "runs").resolve()),
        name=f"quickstart-{int(time.time())}",  # a fixed name resumes a stopped run
    )
    result = fit_nerf(capture, cfg, opts, NerfDataOptions(downscale=1, normalize="auto"))
    m = result.metrics
    print(f"held-out PSNR {m['val_psnr']:.2f} dB, SSIM {m['val_ssim']:.3f}; checkpoint {result.checkpoint}")

    # 3. novel views, in the capture's own frame
    nerf = load_nerf(result.checkpoint)
    camera = look_at(eye=(2.5, -2.5, 1.5), target=(0.0, 0.0, -0.25))  # a pose as in transforms.json
    view = render_view(nerf.model, nerf.to_model_frame(camera), nerf.intrinsics(width=200, height=200))
    print("view:", save_png(view.rgb, args.out / "novel_view.png"))
    print("turntable:", write_video(render_turntable(nerf, n_frames=48), args.out / "turntable.mp4"))

    # 4. serve it
    print(f"serve it: set checkpoints.scene: {result.checkpoint} in services/raylens_services/render.yaml, then")
    print(
        "  serve run services/raylens_services/render.yaml  &&  curl -X POST localhost:8000/render "
        '-d \'{"look_at": {"eye": [0, -4, 2]}}\' -o view.png'
    )


if __name__ == "__main__":
    main()
