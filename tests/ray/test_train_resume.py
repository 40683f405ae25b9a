"""Ray Train CLIP: a 2-worker run is killed mid-way (its driver gets SIGKILL), then the same run name
and storage pick it up from the latest checkpoint; plus digits zero-shot eval wired through Ray."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MAX_STEPS, CKPT_EVERY, LOG_EVERY = 60, 10, 5

DRIVER = textwrap.dedent("""
    import sys
    from raylens.runtime import init_ray
    init_ray(address=sys.argv[1])
    import tests_resume_common as common
    common.fit(sys.argv[2], sys.argv[3])
""")

COMMON = textwrap.dedent(f"""
    import numpy as np
    import ray
    from raylens.train import ClipTrainConfig, RayTrainOptions
    from raylens.train.ray_clip import fit_clip

    CAPTIONS = [f"a {{c}} {{s}}" for c in ("red", "green", "blue", "pink") for s in ("star", "disc", "cube", "cone")]

    def dataset():
        rng = np.random.default_rng(0)
        images = rng.normal(size=(256, 3, 32, 32)).astype(np.float32)
        labels = np.arange(256) % len(CAPTIONS)
        images += labels[:, None, None, None] * 0.05  # a learnable signal
        return ray.data.from_items([{{"image": im, "caption": CAPTIONS[i]}} for im, i in zip(images, labels)])

    def fit(storage, name):
        cfg = ClipTrainConfig(max_steps={MAX_STEPS}, batch_size=16, warmup_steps=2, log_every={LOG_EVERY},
                              checkpoint_every={CKPT_EVERY}, lr=3e-3)
        return fit_clip(dataset(), cfg, RayTrainOptions(num_workers=2, storage_path=storage, name=name, num_to_keep=2))
""")


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p.parent for p in run_dir.glob("**/model.safetensors"))


def test_two_worker_run_resumes_after_its_driver_is_killed(ray_session, tmp_path):
    (tmp_path / "tests_resume_common.py").write_text(COMMON)
    (tmp_path / "driver.py").write_text(DRIVER)
    storage, name = str(tmp_path / "runs"), "resume-me"
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), address, storage, name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 240
    try:
        while not _checkpoints(tmp_path / "runs" / name):
            assert proc.poll() is None, (
                f"the first run ended before its first checkpoint: {proc.stderr.read().decode()[-3000:]}"
            )
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        time.sleep(0.5)  # let the checkpoint's report finish being recorded
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started: the run is stopped mid-way
        proc.wait()
    stopped_at = max(
        json.loads((c / "config.json").read_text())["step"] for c in _checkpoints(tmp_path / "runs" / name)
    )
    assert stopped_at < MAX_STEPS, "the run finished before it could be stopped: raise MAX_STEPS"

    downloads = set(Path(tempfile.gettempdir()).glob("raylens-resume-*"))
    sys.path.insert(0, str(tmp_path))
    try:
        import tests_resume_common as common

        result = common.fit(storage, name)
    finally:
        sys.path.remove(str(tmp_path))
    # the checkpoint on local storage was resumed from in place: no copy made, none left behind
    assert set(Path(tempfile.gettempdir()).glob("raylens-resume-*")) == downloads
    steps = [h["step"] for h in result.history]
    assert result.steps == MAX_STEPS and steps[-1] == MAX_STEPS
    # the history goes on from the checkpoint without repeating or restarting
    assert steps == sorted(set(steps)) and steps[0] == LOG_EVERY
    resumed = [h for h in result.history if h["step"] > stopped_at]
    before = [h for h in result.history if h["step"] <= stopped_at]
    assert before and before[-1]["step"] == stopped_at and resumed[0]["step"] == stopped_at + LOG_EVERY
    # the learning-rate schedule continued (a restart would be back in warm-up at a tiny lr)
    assert resumed[0]["lr"] < before[-1]["lr"] and resumed[0]["loss"] < result.history[0]["loss"]
    saved = json.loads((result.checkpoint / "config.json").read_text())
    assert saved["run"]["name"] == name and saved["train"]["max_steps"] == MAX_STEPS


def test_digits_zero_shot_eval_through_ray(ray_session, tmp_path):
    from raylens.data.digits import DIGIT_CLASSES, ZEROSHOT_TEMPLATE
    from raylens.data.ray_digits import read_digits
    from raylens.models import create_model
    from raylens.train import ClipTrainConfig
    from raylens.train.ray_clip import RayTrainOptions, fit_clip

    pre = create_model("clip-tiny").preprocess
    cfg = ClipTrainConfig(
        max_steps=6,
        batch_size=32,
        warmup_steps=1,
        log_every=3,
        eval_every=3,
        zeroshot_classes=DIGIT_CLASSES,
        zeroshot_templates=[ZEROSHOT_TEMPLATE],
    )
    result = fit_clip(
        read_digits(pre, "train").dataset,
        cfg,
        RayTrainOptions(num_workers=2, storage_path=str(tmp_path), name="d"),
        eval_ds=read_digits(pre, "heldout").dataset,
    )
    last = result.history[-1]
    assert {"zeroshot_top1", "zeroshot_top5", "i2t_R@1", "t2i_R@10"} <= set(last)
    assert 0.0 <= last["zeroshot_top1"] <= last["zeroshot_top5"] <= 1.0
    assert (result.checkpoint / "curves.png").stat().st_size > 1000 and (result.checkpoint / "history.csv").is_file()
