"""``raylens train fusion``: DICOM studies in, a trained CT+MR fusion checkpoint, curves and a summary out.

The data path is the one of ``examples/medical_fusion.py``: DICOM folders (or generated phantoms)
-> Ray Data reader (de-identified at read time, bad files reported) -> CT and MR paired per study ->
MONAI preprocessing -> model-ready rows, split into train and validation by a hash of the
(pseudonymised) study key -> :func:`~.ray_train.train_fusion_ray` (the one Ray Train wrapper).
It prints one line per epoch, the final metrics, and writes ``curves.png``, ``history.csv``,
``roc.png`` and ``ingest_report.json`` under ``--workdir``. The same ``--name`` and ``--storage``
resume a stopped run.

    raylens train fusion phantoms --patients 40 --epochs 12 --model mid --modality-dropout 0.2
    RAYLENS_DEID_KEY=... raylens train fusion /data/dicom --labels labels.csv --model late --workers 4
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from raylens.cli_options import OptionGroup, config_options, ray_train_options
from raylens.plugins import TRAIN_COMMANDS
from raylens.train.options import RayTrainOptions
from raylens.train.result import TrainResult

from .dicom_scan import LABEL_KEYS
from .pairing import PAIR_BY
from .train import FusionTrainConfig

__all__ = ["FusionJob", "run_fusion_job", "read_labels", "in_validation", "train_fusion_command", "PHANTOMS"]

PHANTOMS = "phantoms"
"""The data spec that generates phantom patients (real DICOM files) instead of reading a folder."""
_PHANTOM_KEY = "raylens-phantom-pseudonym-key-not-for-real-data"


@dataclass
class FusionJob:
    """What to train the fusion model on, and where its pictures go."""

    data: str
    """A DICOM root folder (or DICOMDIR), or ``phantoms`` to generate phantom patients."""
    labels: Path | None = None
    """CSV with a ``label_key`` column (original ids) and a ``label`` column (0/1); not with ``phantoms``."""
    label_key: str = "PatientID"
    """The header attribute the labels are keyed on: PatientID, StudyInstanceUID or AccessionNumber."""
    patients: int = 40
    """With ``phantoms``: how many patients to generate."""
    val_fraction: float = 0.25
    """Share of the studies held out for validation (chosen by a hash of the pseudonymised study key)."""
    size: int = 32
    """Voxels per side of the preprocessed volumes."""
    spacing: float = 3.0
    """Voxel size in mm after resampling."""
    pair_by: str = "study"
    """Pair CT and MR series of one ``study`` or of one ``patient``."""
    workdir: Path | None = None
    """Where curves.png, history.csv, roc.png and ingest_report.json go; None: ``STORAGE/NAME/outputs``
    (:class:`raylens.train.outputs.RunOutputs`)."""

    def __post_init__(self):
        self.workdir = Path(self.workdir) if self.workdir is not None else None
        if self.data != PHANTOMS:
            if not Path(self.data).exists():
                raise ValueError(f"data {self.data!r} does not exist: give a DICOM folder or DICOMDIR, or 'phantoms'")
            if self.labels is None:
                raise ValueError(f"--labels is needed to train on {self.data!r}: a CSV with {self.label_key},label")
        if self.label_key not in LABEL_KEYS:
            raise ValueError(f"`label_key` must be one of {LABEL_KEYS}, got {self.label_key!r}")
        if self.patients < 4:
            raise ValueError(f"`patients` must be >= 4 (some to train on, some to validate), got {self.patients}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {self.val_fraction}")
        if self.size < 8:
            raise ValueError(f"`size` must be >= 8 voxels, got {self.size}")
        if not self.spacing > 0:
            raise ValueError(f"`spacing` must be > 0 mm, got {self.spacing}")
        if self.pair_by not in PAIR_BY:
            raise ValueError(f"`pair_by` must be one of {PAIR_BY}, got {self.pair_by!r}")


def read_labels(path: str | Path, key: str = "PatientID") -> dict[str, int]:
    """``{original id: label}`` from a CSV with a ``key`` column and a ``label`` column (0 or 1)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist; give a CSV with the columns {key},label")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if not {key, "label"} <= columns:
        raise ValueError(f"labels file {path} needs the columns {key} and label, found {sorted(columns) or 'none'}")
    labels = {}
    for i, row in enumerate(rows, start=2):
        value = str(row["label"]).strip()
        if value not in ("0", "1"):
            raise ValueError(f"labels file {path}, line {i}: label must be 0 or 1, got {value!r}")
        labels[str(row[key]).strip()] = int(value)
    return labels


def in_validation(key: str, fraction: float) -> bool:
    """Whether the study ``key`` is held out: a stable hash, so a resumed run splits the same way.

    >>> sum(in_validation(f"study-{i}", 0.25) for i in range(1000))
    236
    """
    return int(hashlib.sha256(str(key).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def run_fusion_job(job: FusionJob, cfg: FusionTrainConfig, opts: RayTrainOptions, console=None) -> TrainResult:
    """Read, pair, preprocess, split and train as ``job`` says; prints progress and writes the pictures."""
    import numpy as np
    from ray.data.expressions import col
    from rich.console import Console

    from raylens.runtime import init_ray
    from raylens.train.outputs import RunOutputs, named_run, print_outputs
    from raylens.train.ray_recipe import final_table, write_run_outputs

    from .deid import DeidConfig
    from .ingest import DicomIngestConfig
    from .metrics import save_roc_png
    from .ray_reader import fusion_dataset, pair_dataset, read_dicom
    from .ray_train import TRAIN_COLUMNS, train_fusion_ray
    from .train import load_checkpoint, predict_proba
    from .transforms import VolumeTransformConfig

    console = console or Console()
    opts = named_run(opts, "fusion")
    outputs = RunOutputs.for_run(opts, job.workdir)
    work = outputs.local
    work.mkdir(parents=True, exist_ok=True)
    if job.data == PHANTOMS:
        from .phantom import PhantomConfig, generate_phantoms

        ph = generate_phantoms(outputs.scratch / "phantoms", PhantomConfig(n_patients=job.patients, seed=cfg.seed))
        root, labels, deid = ph.root, ph.labels(), DeidConfig(key=_PHANTOM_KEY)
        console.print(f"[green]phantoms[/green] {len(ph.patients)} patients, {ph.n_files} DICOM files in {root}")
    else:
        root, labels = job.data, read_labels(job.labels, job.label_key)
        deid = DeidConfig()  # the key comes from RAYLENS_DEID_KEY, never from the command line
    init_ray()
    ingest = read_dicom(root, DicomIngestConfig(deid=deid, labels=labels, label_key=job.label_key))
    report = ingest.report()
    report.save(work / "ingest_report.json")
    console.print(f"[green]ingest[/green] {report.summary()}")
    transform = VolumeTransformConfig(target_spacing=(job.spacing,) * 3, spatial_size=(job.size,) * 3)
    rows = fusion_dataset(pair_dataset(ingest.dataset, by=job.pair_by), transform)
    rows = rows.filter(expr=col("label") >= 0).materialize()
    held_out = [k for k in rows.unique("key") if in_validation(k, job.val_fraction)]  # by a stable hash of the key
    train_ds = rows.filter(expr=~col("key").is_in(held_out)).materialize()
    val_ds = rows.filter(expr=col("key").is_in(held_out)).materialize()
    n_train, n_val = train_ds.count(), val_ds.count()
    if n_train < 2 * opts.num_workers or n_val == 0:
        raise ValueError(
            f"{n_train} labelled studies to train on and {n_val} to validate: need at least "
            f"{2 * opts.num_workers} and 1 (more data, fewer --workers, or another --val-fraction)"
        )
    console.print(
        f"[green]train[/green] {cfg.model} fusion on {n_train} studies, validate on {n_val}, "
        f"{cfg.epochs} epochs, {opts.num_workers} worker(s) x batch {cfg.batch_size}"
    )
    result = train_fusion_ray(cfg, train_ds, val_ds, opts, transform=transform, progress=True)
    if not result.history or result.checkpoint is None:
        raise RuntimeError("training reported nothing: see the worker errors above")
    console.print(final_table(result))
    curves, history = write_run_outputs(result, work, title=f"{cfg.model} fusion on {n_train} studies")
    val_rows = val_ds.select_columns(TRAIN_COLUMNS).take_all()
    val = {k: np.stack([np.asarray(r[k]) for r in val_rows]) for k in TRAIN_COLUMNS}
    probs = predict_proba(load_checkpoint(result.checkpoint), val)
    roc = save_roc_png({cfg.model: (val["label"], probs)}, work / "roc.png", title="validation ROC")
    console.print(f"[green]trained[/green] {result.steps} steps in {result.seconds:.0f} s")
    files = {"curves": curves, "history": history, "roc": roc, "ingest": work / "ingest_report.json"}
    print_outputs(console, opts, result.location, outputs.publish(files))
    return result


def _model_kwargs(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip().isidentifier():
            raise typer.BadParameter(
                f"expected NAME=VALUE (e.g. fuse_stage=layer3), got {pair!r}", param_hint="'--model-arg'"
            )
        out[name.strip()] = yaml.safe_load(value)
    return out


def _fusion_options() -> OptionGroup:
    return OptionGroup(
        FusionTrainConfig,
        param="cfg",
        section="train",
        hidden=("model_kwargs",),
        choices={"model": ("early", "mid", "late", "ct_only", "mr_only")},
        panel="Training (FusionTrainConfig)",
    )


@TRAIN_COMMANDS.register("fusion", doc="CT+MR fusion (early/mid/late) on DICOM studies or phantoms, with Ray Train.")
@config_options(_fusion_options(), ray_train_options())
def train_fusion_command(
    data: str = typer.Argument(
        ..., help="A DICOM root folder (or DICOMDIR), or 'phantoms' to generate phantom patients."
    ),
    labels: Path | None = typer.Option(
        None, help="CSV of labels: the --label-key column (original ids) and label (0/1)."
    ),
    label_key: str = typer.Option(
        "PatientID", help="What the labels are keyed on: PatientID, StudyInstanceUID or AccessionNumber."
    ),
    patients: int = typer.Option(40, help="With 'phantoms': how many patients to generate."),
    val_fraction: float = typer.Option(0.25, help="Share of studies held out for validation (hash of the study key)."),
    size: int = typer.Option(32, help="Voxels per side of the preprocessed volumes."),
    spacing: float = typer.Option(3.0, help="Voxel size in mm after resampling."),
    model_arg: list[str] | None = typer.Option(
        None,
        metavar="NAME=VALUE",
        help="A model argument, repeatable: fuse_stage=layer3, fuse=attention, combine=logit.",
    ),
    workdir: Path | None = typer.Option(
        None,
        help="Where curves.png, history.csv, roc.png and ingest_report.json go (default: STORAGE/NAME/outputs).",
    ),
    *,
    cfg: FusionTrainConfig,
    opts: RayTrainOptions,
):
    """Train a CT+MR fusion model with Ray Train on DICOM studies (de-identified at read time).

    Real data needs a labels CSV and the de-identification key in RAYLENS_DEID_KEY. The same --name and
    --storage resume a stopped run.

    Examples:

      raylens train fusion phantoms --patients 40 --model mid --modality-dropout 0.2 --model-arg fuse_stage=layer3

      RAYLENS_DEID_KEY=... raylens train fusion /data/dicom --labels labels.csv --model late --workers 4 --name late-1
    """
    from rich.console import Console

    if model_arg:
        cfg = FusionTrainConfig(**{**vars(cfg), "model_kwargs": {**cfg.model_kwargs, **_model_kwargs(model_arg)}})
    try:
        job = FusionJob(
            data=data,
            labels=labels,
            label_key=label_key,
            patients=patients,
            val_fraction=val_fraction,
            size=size,
            spacing=spacing,
            workdir=workdir,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    run_fusion_job(job, cfg, opts, console=Console())
