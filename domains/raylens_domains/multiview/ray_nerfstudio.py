"""Submit the nerfstudio backend's job (:func:`~.nerf_backend.build_nerfstudio_job`) to a Ray cluster."""

from __future__ import annotations

from pathlib import Path

from raylens_domains.multiview.nerf_backend import build_nerfstudio_job

__all__ = ["submit_nerfstudio"]


def submit_nerfstudio(
    data: str | Path,
    *,
    address: str | None = None,
    max_steps: int = 30_000,
    use_gpu: bool = True,
    method: str = "nerfacto",
    upload: bool = True,
) -> str:
    """Submit ``ns-train METHOD`` on ``data`` as a Ray job; returns the job id.

    ``address`` is the cluster's job server (``http://head:8265``; default ``RAY_ADDRESS`` or the
    local cluster). The job installs nerfstudio in its own environment on first run (minutes).
    """
    from ray.job_submission import JobSubmissionClient

    job = build_nerfstudio_job(data, max_steps=max_steps, use_gpu=use_gpu, method=method, upload=upload)
    return JobSubmissionClient(address).submit_job(**job.submit_kwargs())
