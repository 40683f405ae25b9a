"""``raylens bench dicom``: DICOM files -> normalised volumes, Ray Data vs a single-process pydicom loop.

Both sides do the same work on the same phantom files (>= 2,000 slices): read every file, group by
SeriesInstanceUID, sort along the slice normal, apply the modality LUT, stack, then the MONAI
normalisation (RAS, 3 mm, window / z-score, 32^3). The baseline is the plain loop a team would
write: one ``pydicom.dcmread`` per file, in one process. The Ray side is
``ray_reader.read_dicom(..., transform=...)``: headers first (without pixels, pseudonymised), then one
task per series; it also de-identifies and builds the ingest report, which the baseline does not.

Ray is started and its workers warmed up (a small ingest) before the clock starts; phantom
generation is not timed. The two sides run alternately for a few rounds and each keeps its best
round, so load from other processes does not favour either. The metric is slices per second.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from raylens.bench import BenchResult, register_benchmark

__all__ = ["bench_dicom", "pydicom_loop"]


def pydicom_loop(root: Path, transform) -> tuple[int, int]:
    """The single-process baseline: ``(n_series, n_slices)`` normalised volumes built from ``root``."""
    import pydicom

    from raylens_domains.medical.geometry import VolumeGeometry, sort_slices
    from raylens_domains.medical.transforms import normalize_volume

    series: dict[str, list] = defaultdict(list)
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                ds = pydicom.dcmread(path)
            except Exception:
                continue
            if "PixelData" not in ds:
                continue
            series[str(ds.SeriesInstanceUID)].append(ds)
    n_slices = 0
    for datasets in series.values():
        ds0 = datasets[0]
        iop = [float(x) for x in ds0.ImageOrientationPatient] if "ImageOrientationPatient" in ds0 else None
        if int(ds0.get("NumberOfFrames", 1) or 1) > 1:  # an enhanced multi-frame object
            sfg = ds0.SharedFunctionalGroupsSequence[0]
            iop = [float(x) for x in sfg.PlaneOrientationSequence[0].ImageOrientationPatient]
            spacing_rc = [float(x) for x in sfg.PixelMeasuresSequence[0].PixelSpacing]
            pos = [
                [float(x) for x in f.PlanePositionSequence[0].ImagePositionPatient]
                for f in ds0.PerFrameFunctionalGroupsSequence
            ]
            frames = ds0.pixel_array.astype(np.float32)
            slope, icpt = float(ds0.get("RescaleSlope", 1)), float(ds0.get("RescaleIntercept", 0))
            planes = [frames[i] * slope + icpt for i in range(len(pos))]
        else:
            pos = [[float(x) for x in d.ImagePositionPatient] for d in datasets]
            spacing_rc = [float(x) for x in ds0.PixelSpacing]
            planes = [
                d.pixel_array.astype(np.float32) * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
                for d in datasets
            ]
        try:
            order = sort_slices(pos, iop)
        except Exception:
            continue  # the baseline skips broken series too
        vol = np.stack([planes[i] for i in order.order])
        row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
        direction = np.stack([order.normal, col, row], axis=1).reshape(9)
        geometry = VolumeGeometry([order.slice_spacing, *spacing_rc], pos[order.order[0]], direction, vol.shape)
        normalize_volume(vol, geometry, str(ds0.Modality), transform)
        n_slices += len(planes)
    return len(series), n_slices


@register_benchmark("dicom")
def bench_dicom(quick: bool, workdir: Path) -> BenchResult:
    """Slices/s from DICOM files to normalised volumes: Ray Data reader vs a single-process pydicom loop."""
    import torch

    from raylens.runtime import init_ray
    from raylens_domains.medical import (
        DeidConfig,
        DicomIngestConfig,
        PhantomConfig,
        VolumeTransformConfig,
        generate_phantoms,
    )
    from raylens_domains.medical.ray_reader import read_dicom

    torch.set_num_threads(1)  # one core per process on both sides; Ray workers get OMP_NUM_THREADS=1 too
    n_patients = 36 if quick else 72  # 60 slices each: 2,160 / 4,320 slices
    rounds = 2 if quick else 3
    workdir = Path(workdir)
    ph = generate_phantoms(workdir / "phantom", PhantomConfig(n_patients=n_patients, seed=123))
    warm = generate_phantoms(workdir / "warmup", PhantomConfig(n_patients=2, seed=7, ct_slices=8, mr_slices=8))
    transform = VolumeTransformConfig()
    config = DicomIngestConfig(deid=DeidConfig(key="raylens-bench-key-0000000000000000"), labels=ph.labels())

    init_ray()
    cpus = int(__import__("ray").cluster_resources().get("CPU", 1))
    read_dicom(warm.root, config, transform=transform).dataset.count()  # start and warm the workers
    pydicom_loop(warm.root, transform)  # same imports and caches for the baseline

    # alternate the two sides and keep each one's best round: other load on the machine then
    # hurts neither side more than the other
    base_times, ray_times = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        n_series_base, n_slices_base = pydicom_loop(ph.root, transform)
        base_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = read_dicom(ph.root, config, transform=transform)  # materialised: every volume is built
        ray_times.append(time.perf_counter() - t0)
    report, n_slices = result.report(), result.stats["slices"]
    n_rows = report.n_ok
    t_base, t_ray = min(base_times), min(ray_times)

    if n_rows != n_series_base or n_slices != n_slices_base:
        raise RuntimeError(
            f"the two sides disagree: ray {n_rows} series / {n_slices} slices, "
            f"baseline {n_series_base} / {n_slices_base}"
        )
    return BenchResult(
        name="dicom",
        metric="slices_per_s",
        value=n_slices / t_ray,
        baseline_name="pydicom single-process loop",
        baseline_value=n_slices_base / t_base,
        higher_is_better=True,
        params={
            "quick": quick,
            "patients": n_patients,
            "series": n_rows,
            "slices": n_slices,
            "files": ph.n_files,
            "ray_cpus": cpus,
            "spatial_size": list(transform.spatial_size),
            "target_spacing_mm": list(transform.target_spacing),
        },
        extra={
            "ray_seconds": round(t_ray, 3),
            "baseline_seconds": round(t_base, 3),
            "ray_seconds_all_rounds": [round(t, 3) for t in ray_times],
            "baseline_seconds_all_rounds": [round(t, 3) for t in base_times],
            "rounds": rounds,
            "statistic": "best round of each side, rounds alternated",
            "load_average_at_end": os.getloadavg()[0],
            "skipped": report.n_skipped,
        },
    )
