"""Where a training run's outputs go: under its storage location, beside its checkpoints.

Every ``raylens train KIND`` writes its curves, history, reports, pictures and renders to
``STORAGE/NAME/outputs`` (``RayTrainOptions.storage_path`` and ``name``), so a job submitted to a
cluster leaves them where its checkpoints are, not in a working directory on whichever node ran the
driver. Storage may be a local (shared) path or a URI pyarrow opens (``s3://``, ``gs://``,
``file://``): for a URI, files are written to a local staging folder and :meth:`RunOutputs.publish`
copies them up. A ``--workdir`` the user gives overrides the location (a local folder).

>>> opts = RayTrainOptions(storage_path="/tmp/runs", name="r1")
>>> out = RunOutputs.for_run(opts)
>>> out.dest, out.remote
('/tmp/runs/r1/outputs', False)
>>> RunOutputs.for_run(RayTrainOptions(storage_path="s3://bucket/runs", name="r1")).dest
's3://bucket/runs/r1/outputs'
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from raylens.train.options import RayTrainOptions

__all__ = ["RunOutputs", "named_run", "print_outputs", "OUTPUTS_DIR", "DATA_DIR"]

OUTPUTS_DIR = "outputs"
"""The folder under ``STORAGE/NAME`` that holds a run's outputs."""
DATA_DIR = "data"
"""The folder under ``STORAGE/NAME`` (local storage) where data a run generates (digits, phantoms) goes."""


def named_run(opts: RayTrainOptions, kind: str) -> RayTrainOptions:
    """``opts`` with a run name: its own, or ``KIND-YYYYmmdd-HHMMSS`` (printed, so the run can be resumed).

    >>> named_run(RayTrainOptions(name="mine"), "classify").name
    'mine'
    >>> named_run(RayTrainOptions(), "classify").name.startswith("classify-")
    True
    """
    if opts.name:
        return opts
    return replace(opts, name=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


@dataclass(frozen=True)
class RunOutputs:
    """A run's output folder: ``local`` is where to write now, ``dest`` where the files end up."""

    dest: str
    """The final folder: a local path, or a URI under the run's storage."""
    local: Path
    """Where the job writes: ``dest`` itself when it is local, a staging folder for a URI."""
    scratch: Path
    """Where data the run generates goes (``STORAGE/NAME/data`` on local storage, shared on a cluster;
    a temporary folder for URI storage). Not published."""

    @property
    def remote(self) -> bool:
        return "://" in self.dest

    @classmethod
    def for_run(cls, opts: RayTrainOptions, workdir: str | Path | None = None) -> RunOutputs:
        """The outputs of the run ``opts`` names (give it a name first: :func:`named_run`).

        ``workdir``, when given, is used instead (a local folder the user chose)."""
        if workdir is not None:
            local = Path(workdir).expanduser().resolve()
            return cls(str(local), local, local / DATA_DIR)
        if not opts.name:
            raise ValueError("the run needs a name to place its outputs; call named_run(opts, kind) first")
        storage = opts.storage()
        if "://" in storage:
            staging = Path(tempfile.mkdtemp(prefix=f"raylens-{opts.name}-"))
            return cls(f"{storage.rstrip('/')}/{opts.name}/{OUTPUTS_DIR}", staging / OUTPUTS_DIR, staging / DATA_DIR)
        run = Path(storage) / opts.name
        return cls(str(run / OUTPUTS_DIR), run / OUTPUTS_DIR, run / DATA_DIR)

    def publish(self, files: Mapping[str, str | Path]) -> dict[str, str]:
        """Copy the staged outputs to ``dest`` (for a URI); return where each of ``files`` now is.

        ``files`` maps a label (``curves``) to a file or folder under ``local``; the result maps the
        same labels to their final locations. On local storage nothing moves.
        """
        where: dict[str, str] = {}
        for label, path in files.items():
            rel = Path(path).resolve().relative_to(self.local.resolve())
            where[label] = f"{self.dest.rstrip('/')}/{rel.as_posix()}" if self.remote else str(self.local / rel)
        if self.remote:
            from pyarrow import fs

            target, base = fs.FileSystem.from_uri(self.dest)
            target.create_dir(base, recursive=True)
            fs.copy_files(str(self.local), base, source_filesystem=fs.LocalFileSystem(), destination_filesystem=target)
        return where


def print_outputs(console, opts: RayTrainOptions, checkpoint: str | None, where: Mapping[str, str]) -> None:
    """The job's last lines: the run (and how to resume it), the checkpoint, and where each output is.

    Never wrapped (``soft_wrap``): a job's log is no terminal, and a path split over lines cannot be copied."""
    console.print(
        f"[green]run[/green] {opts.name} in {opts.storage()} (the same --name and --storage resume it)", soft_wrap=True
    )
    if checkpoint:
        console.print(f"[green]checkpoint[/green] {checkpoint}", soft_wrap=True)
    for label, path in where.items():
        console.print(f"[green]{label}[/green] {path}", soft_wrap=True)
