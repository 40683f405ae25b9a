"""The optional nerfstudio backend: ``ns-train nerfacto`` as a Ray job in its own environment.

nerfstudio pins packages raylens cannot share (timm 0.6.7), so it is never our dependency: the job's
``runtime_env`` pip-installs it into the job's own virtual environment on the cluster, and the
capture travels as the job's ``working_dir`` (or is read from shared storage). This module only
*builds* the job (plain data, testable anywhere); :mod:`.ray_nerfstudio` submits it.

>>> job = build_nerfstudio_job("capture", fmt="nerfstudio", upload=False, max_steps=1000)
>>> job.entrypoint.split()[:4]
['ns-train', 'nerfacto', '--data', 'capture']
>>> job.runtime_env["pip"]["packages"]
['nerfstudio>=1.1,<1.2']
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NERFSTUDIO_PACKAGE", "DATAPARSERS", "NerfstudioJob", "build_nerfstudio_job"]

NERFSTUDIO_PACKAGE = "nerfstudio>=1.1,<1.2"
"""What the job's environment installs (override with ``package=``)."""
DATAPARSERS = {"nerfstudio": "nerfstudio-data", "blender": "blender-data", "colmap": "colmap"}
"""Our capture formats -> nerfstudio's dataparser subcommands."""


@dataclass
class NerfstudioJob:
    """Everything ``JobSubmissionClient.submit_job`` needs."""

    entrypoint: str
    """The shell command the job runs (``ns-train nerfacto ...``)."""
    runtime_env: dict[str, Any]
    """pip-installs nerfstudio in the job's own environment; ``working_dir`` carries the capture."""
    entrypoint_num_gpus: float = 0
    """GPUs reserved for the entrypoint (nerfacto wants one)."""
    entrypoint_num_cpus: float = 1
    """CPUs reserved for the entrypoint."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Labels shown by ``ray job list``."""

    def submit_kwargs(self) -> dict[str, Any]:
        return asdict(self)


def build_nerfstudio_job(
    data: str | Path,
    *,
    fmt: str | None = None,
    method: str = "nerfacto",
    max_steps: int = 30_000,
    output_dir: str = "outputs",
    use_gpu: bool = True,
    upload: bool = True,
    package: str = NERFSTUDIO_PACKAGE,
    extra_args: list[str] | None = None,
) -> NerfstudioJob:
    """The Ray job that trains ``method`` (nerfacto) with nerfstudio on the capture at ``data``.

    Args:
        data: the capture folder (nerfstudio ``transforms.json``, Blender or COLMAP layout).
        fmt: its format (``nerfstudio``, ``blender``, ``colmap``); detected from ``data`` when None.
        method: the nerfstudio method (``nerfacto``, ``instant-ngp``, ``splatfacto``, ...).
        max_steps: ``--max-num-iterations``.
        output_dir: where nerfstudio writes (relative paths land in the job's working directory;
            give shared storage to keep the results).
        use_gpu: reserve one GPU for the job (nerfstudio's methods are meant for one).
        upload: send the capture as the job's ``working_dir`` (the cluster reads ``.``); False reads
            ``data`` as a path the cluster sees (shared storage).
        package: the pip requirement installed in the job's environment.
        extra_args: more ``ns-train`` arguments (placed before the dataparser).

    Raises:
        FileNotFoundError: ``upload`` and ``data`` is not a local folder, or the format cannot be told.
        ValueError: unknown format or a bad ``max_steps``.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    path = Path(data)
    if upload and not path.is_dir():
        raise FileNotFoundError(f"{data} is not a local folder to upload; pass the capture folder or upload=False")
    if fmt is None:
        from raylens_domains.multiview.readers import detect_format

        fmt = detect_format(path)
    if fmt not in DATAPARSERS:
        raise ValueError(f"format must be one of {sorted(DATAPARSERS)}, got {fmt!r}")
    data_arg = "." if upload else str(data)
    args = [
        "ns-train",
        method,
        "--data",
        data_arg,
        "--max-num-iterations",
        str(int(max_steps)),
        "--output-dir",
        output_dir,
        "--vis",
        "tensorboard",
        "--viewer.quit-on-train-completion",
        "True",
        *(extra_args or []),
        DATAPARSERS[fmt],
    ]
    runtime_env: dict[str, Any] = {
        "pip": {"packages": [package], "pip_check": False},
        "env_vars": {"PYTHONUNBUFFERED": "1"},
    }
    if upload:
        runtime_env["working_dir"] = str(path.resolve())
    return NerfstudioJob(
        entrypoint=shlex.join(args),
        runtime_env=runtime_env,
        entrypoint_num_gpus=1 if use_gpu else 0,
        metadata={"raylens": "train nerf --backend nerfstudio", "method": method, "data": str(data)},
    )
