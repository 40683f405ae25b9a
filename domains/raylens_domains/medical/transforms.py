"""MONAI preprocessing of series volumes: RAS orientation, target spacing, CT window / MR norm, fixed shape.

:func:`normalize_volume` is the array transform: one volume with its geometry in, one fixed-shape
float32 volume with its new geometry out. :class:`NormalizeVolumed` is its dictionary twin (MONAI's
``*d`` idea) for Ray Data batches: it maps a batch ``dict[str, np.ndarray]`` of series rows to a
batch of normalised rows, so it drops straight into ``Dataset.map_batches``.

The steps are MONAI transforms on a ``MetaTensor`` that carries the RAS affine:
``Orientation("RAS")`` -> ``Spacing(target_spacing)`` -> ``ScaleIntensityRange`` (CT window, to
[0, 1]) or ``NormalizeIntensity(nonzero=True)`` (MR z-score over the body) -> ``ResizeWithPadOrCrop``.
The geometry that comes back still follows :mod:`.geometry`'s conventions (LPS, columns of
``direction`` are the array axes), so a normalised row can be resampled or paired like a raw one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import affine, affine_lps_to_ras, geometry_from_affine

__all__ = [
    "VolumeTransformConfig",
    "normalize_volume",
    "NormalizeVolumed",
    "FUSION_COLUMNS",
    "fusion_inputs",
    "FusionInputsd",
]


@dataclass(frozen=True)
class VolumeTransformConfig:
    """The preprocessing recipe (the usual MONAI CT recipe, sized for small CPU models)."""

    target_spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    """Voxel size in mm after resampling, in RAS axis order (x, y, z)."""
    spatial_size: tuple[int, int, int] = (32, 32, 32)
    """Output shape after centre crop / pad."""
    ct_window: tuple[float, float] = (-150.0, 350.0)
    """CT window (HU) mapped to [0, 1] and clipped: soft tissue up to enhancing/dense lesions."""
    mr_norm: str = "zscore"
    """MR intensity normalisation: ``"zscore"`` over non-zero voxels, or ``"minmax"`` to [0, 1]."""
    axcodes: str = "RAS"
    """Target orientation codes for ``monai.transforms.Orientation``."""
    mode: str = "bilinear"
    """Interpolation of the spacing resample (``"bilinear"`` or ``"nearest"``)."""

    def __post_init__(self):
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ValueError(f"target_spacing needs 3 positive mm values, got {self.target_spacing}")
        if len(self.spatial_size) != 3 or min(self.spatial_size) < 1:
            raise ValueError(f"spatial_size needs 3 positive ints, got {self.spatial_size}")
        if not self.ct_window[0] < self.ct_window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")
        if self.mr_norm not in ("zscore", "minmax"):
            raise ValueError(f"mr_norm must be 'zscore' or 'minmax', got {self.mr_norm!r}")
        if self.mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {self.mode!r}")
        if len(self.axcodes) != 3:
            raise ValueError(f"axcodes needs 3 letters such as 'RAS', got {self.axcodes!r}")


def normalize_volume(
    volume: np.ndarray,
    spacing,
    origin,
    direction,
    modality: str,
    config: VolumeTransformConfig = VolumeTransformConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Orient, resample, scale intensities and crop/pad one volume.

    Returns ``(volume (S0, S1, S2) float32, spacing (3), origin (3), direction (9))`` where the
    geometry describes the returned array (LPS, :mod:`.geometry` conventions).
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import NormalizeIntensity, Orientation, ResizeWithPadOrCrop, ScaleIntensityRange, Spacing

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {vol.shape}")
    aff = torch.as_tensor(affine_lps_to_ras(affine(spacing, origin, direction)), dtype=torch.float64)
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(vol))[None], affine=aff)
    img = Orientation(axcodes=config.axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    img = Spacing(pixdim=config.target_spacing, mode=config.mode, padding_mode="border", dtype=torch.float32)(img)
    if modality.upper() == "CT":
        lo, hi = config.ct_window
        img = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img)
    elif config.mr_norm == "zscore":
        img = NormalizeIntensity(nonzero=True)(img)
    else:
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else img * 0
    img = ResizeWithPadOrCrop(spatial_size=config.spatial_size)(img)
    out_aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(img.affine, dtype=np.float64)  # back to LPS
    sp, org, dirn = geometry_from_affine(out_aff)
    arr = img.as_tensor()[0].numpy().astype(np.float32, copy=False)
    return np.ascontiguousarray(arr), sp, org, dirn


class NormalizeVolumed:
    """Dictionary twin of :func:`normalize_volume` for batches (``dict[str, np.ndarray]``).

    Reads ``keys`` (default ``"volume"``) with the geometry columns ``spacing``/``origin``/
    ``direction`` and ``modality``, writes the normalised volume (fixed shape) and its geometry back
    under the same names, and leaves the other columns alone. With ``prefix`` the geometry columns
    are looked up as ``f"{prefix}spacing"`` etc. and the modality is forced to ``modality``.
    """

    def __init__(
        self,
        config: VolumeTransformConfig = VolumeTransformConfig(),
        *,
        key: str = "volume",
        prefix: str = "",
        modality: str | None = None,
        allow_missing_keys: bool = False,
    ):
        self.config = config
        self.key = key
        self.prefix = prefix
        self.modality = modality
        self.allow_missing_keys = allow_missing_keys

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Normalise one row (a plain dict)."""
        out = dict(row)
        if self.key not in row:
            if self.allow_missing_keys:
                return out
            raise KeyError(f"row has no {self.key!r} column (columns: {sorted(row)})")
        p = self.prefix
        mod = self.modality or str(row["modality"])
        v, sp, org, dirn = normalize_volume(
            row[self.key], row[f"{p}spacing"], row[f"{p}origin"], row[f"{p}direction"], mod, self.config
        )
        out[self.key], out[f"{p}spacing"], out[f"{p}origin"], out[f"{p}direction"] = v, sp, org, dirn
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.key not in batch:
            if self.allow_missing_keys:
                return batch
            raise KeyError(f"batch has no {self.key!r} column (columns: {sorted(batch)})")
        n = len(batch[self.key])
        rows = [{k: batch[k][i] for k in batch} for i in range(n)]
        rows = [self.row(r) for r in rows]
        return _stack_rows(rows, list(batch))


def _stack_rows(rows: list[dict[str, Any]], columns: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for c in columns:
        vals = [r[c] for r in rows]
        if (
            vals
            and isinstance(vals[0], np.ndarray)
            and all(isinstance(v, np.ndarray) and v.shape == vals[0].shape for v in vals)
        ):
            out[c] = np.stack(vals)
        elif vals and isinstance(vals[0], np.ndarray):
            arr = np.empty(len(vals), dtype=object)
            arr[:] = vals
            out[c] = arr
        else:
            out[c] = np.asarray(vals)
    return out


FUSION_COLUMNS = ("key", "study_uid", "patient_id", "label", "ct", "mr_aligned", "mr", "present")
"""Columns of a model-ready row: ``ct``/``mr_aligned`` on one grid (early fusion), ``mr`` on its own."""


def fusion_inputs(paired: dict[str, Any], config: VolumeTransformConfig = VolumeTransformConfig()) -> dict[str, Any]:
    """Model-ready volumes from a paired row (see :mod:`.pairing`).

    * ``ct``: CT on the reference grid, windowed; ``mr_aligned``: the MR resampled onto that grid,
      normalised with the same geometry, so both voxel grids coincide (early fusion);
    * ``mr``: the MR normalised on its own grid (mid and late fusion);
    * ``present``: ``[has_ct, has_mr]`` as float32. A missing modality is all zeros.
    """
    shape = tuple(config.spatial_size)
    zeros = np.zeros(shape, dtype=np.float32)
    geo = (paired["spacing"], paired["origin"], paired["direction"])
    has_ct, has_mr = bool(paired["has_ct"]), bool(paired["has_mr"])
    ct = normalize_volume(paired["ct_volume"], *geo, "CT", config)[0] if has_ct else zeros
    mr_aligned = normalize_volume(paired["mr_volume"], *geo, "MR", config)[0] if has_mr else zeros
    mr = (
        normalize_volume(
            paired["mr_native_volume"],
            paired["mr_native_spacing"],
            paired["mr_native_origin"],
            paired["mr_native_direction"],
            "MR",
            config,
        )[0]
        if has_mr
        else zeros
    )
    return {
        "key": str(paired["key"]),
        "study_uid": str(paired["study_uid"]),
        "patient_id": str(paired["patient_id"]),
        "label": int(paired["label"]),
        "ct": ct,
        "mr_aligned": mr_aligned,
        "mr": mr,
        "present": np.array([has_ct, has_mr], dtype=np.float32),
    }


class FusionInputsd:
    """Batch twin of :func:`fusion_inputs`: paired-row batches in, model-ready batches out."""

    def __init__(self, config: VolumeTransformConfig = VolumeTransformConfig()):
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        rows = [fusion_inputs({k: batch[k][i] for k in batch}, self.config) for i in range(n)]
        return _stack_rows(rows, list(FUSION_COLUMNS))
