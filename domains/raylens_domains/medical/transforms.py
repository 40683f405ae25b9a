"""MONAI preprocessing of series volumes: RAS orientation, target spacing, CT window / MR norm, fixed shape.

:func:`normalize_volume` is the array transform: one volume with its :class:`~.geometry.VolumeGeometry`
in, one fixed-shape float32 volume with its new geometry out. :class:`NormalizeVolumed` is its
dictionary twin (MONAI's ``*d`` idea) for Ray Data batches of series rows, and :class:`FusionInputsd`
turns paired rows into model-ready rows; both drop straight into ``Dataset.map_batches``.

The steps are one MONAI ``Compose`` per modality on a ``MetaTensor`` that carries the RAS affine:
``Orientation("RAS")`` -> ``Spacing(target_spacing)`` -> ``ScaleIntensityRange`` (CT window, to
[0, 1]) or ``NormalizeIntensity(nonzero=True)`` (MR z-score over the body) -> ``ResizeWithPadOrCrop``.
The pipelines are built once per recipe and process (:func:`volume_normalizer`, so once per Ray
worker), never per volume. The geometry that comes back still follows :mod:`.geometry`'s
conventions (LPS), so a normalised row can be resampled or paired like a raw one.

Normalisation happens once: a row records the recipe that normalised it in its ``normalization``
column (``""`` while raw). :class:`NormalizeVolumed` refuses a row that is already normalised, and
:func:`fusion_inputs` normalises raw paired rows but only assembles already normalised ones (after
checking they were normalised with its own recipe).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .geometry import MAX_RESAMPLED_VOXELS, VolumeGeometry, affine_lps_to_ras, check_grid_voxels, resampled_shape

__all__ = [
    "VolumeTransformConfig",
    "VolumeNormalizer",
    "volume_normalizer",
    "normalize_volume",
    "NormalizeVolumed",
    "FUSION_COLUMNS",
    "fusion_inputs",
    "FusionInputsd",
]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    max_voxels: int = MAX_RESAMPLED_VOXELS
    """Largest grid the spacing resample may allocate: a volume whose extent at ``target_spacing`` needs
    more voxels is refused before resampling (a header's huge spacing must not ask for gigabytes). A
    limit, not part of the recipe: :meth:`fingerprint` leaves it out."""

    def __post_init__(self):
        if isinstance(self.max_voxels, bool) or not isinstance(self.max_voxels, int) or self.max_voxels < 1:
            raise ValueError(f"max_voxels must be a positive int, got {self.max_voxels!r}")
        if len(self.spatial_size) == 3 and all(isinstance(s, int) for s in self.spatial_size):
            n = self.spatial_size[0] * self.spatial_size[1] * self.spatial_size[2]
            if n > self.max_voxels:
                raise ValueError(
                    f"spatial_size {tuple(self.spatial_size)} holds {n} voxels, over max_voxels={self.max_voxels}; "
                    "choose a smaller size or raise max_voxels"
                )
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

    def fingerprint(self) -> str:
        """This recipe as compact JSON: what a normalised row's ``normalization`` column holds."""
        recipe = {k: v for k, v in asdict(self).items() if k != "max_voxels"}
        return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


class VolumeNormalizer:
    """The MONAI pipelines of one recipe (one ``Compose`` for CT, one for MR), built in ``__init__``.

    Call it with ``(volume, geometry, modality)``; get :func:`volume_normalizer` rather than building
    one, so a process builds each recipe's pipelines once. A pickled normaliser unpickles to its
    process's cached one.
    """

    def __init__(self, config: VolumeTransformConfig = VolumeTransformConfig()):
        import torch
        from monai.transforms import (
            Compose,
            NormalizeIntensity,
            Orientation,
            ResizeWithPadOrCrop,
            ScaleIntensity,
            ScaleIntensityRange,
            Spacing,
        )

        if not isinstance(config, VolumeTransformConfig):
            raise TypeError(f"config must be a VolumeTransformConfig, got {type(config).__name__}")
        self.config = config
        orient = Orientation(axcodes=config.axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))
        spacing = Spacing(pixdim=config.target_spacing, mode=config.mode, padding_mode="border", dtype=torch.float32)
        resize = ResizeWithPadOrCrop(spatial_size=config.spatial_size)
        lo, hi = config.ct_window
        ct = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
        mr = NormalizeIntensity(nonzero=True) if config.mr_norm == "zscore" else ScaleIntensity(minv=0.0, maxv=1.0)
        self._pipelines = {
            "CT": Compose([orient, spacing, ct, resize]),
            "MR": Compose([orient, spacing, mr, resize]),
        }

    def __reduce__(self):
        return (volume_normalizer, (self.config,))

    def __call__(self, volume: np.ndarray, geometry: VolumeGeometry | dict, modality: str):
        """Orient, resample, scale intensities and crop/pad one raw volume.

        Args:
            volume: ``(D, H, W)``, HU for CT.
            geometry: its :class:`~.geometry.VolumeGeometry` (or the row's ``geometry`` dict).
            modality: ``"CT"`` gets the CT window; anything else the MR normalisation.

        Returns:
            ``(volume (S0, S1, S2) float32, VolumeGeometry of it)`` in LPS.
        """
        import torch
        from monai.data import MetaTensor

        geo = VolumeGeometry.of(geometry)
        vol = np.asarray(volume, dtype=np.float32)
        if vol.ndim != 3:
            raise ValueError(f"volume must be 3D, got shape {vol.shape}")
        if tuple(vol.shape) != geo.shape:
            raise ValueError(f"volume shape {vol.shape} differs from its geometry's shape {geo.shape}: wrong geometry")
        # bound the resampled grid from the geometry alone, before MONAI allocates it
        check_grid_voxels(
            resampled_shape(geo, self.config.target_spacing),
            self.config.max_voxels,
            f"the grid resampled to {tuple(self.config.target_spacing)} mm",
        )
        aff = torch.as_tensor(affine_lps_to_ras(geo.affine), dtype=torch.float64)
        # a copy: on a grid already in place, Orientation and Spacing hand the same storage on and the
        # intensity step then writes into it, which would change the caller's array
        img = MetaTensor(torch.from_numpy(np.array(vol, dtype=np.float32, order="C", copy=True))[None], affine=aff)
        img = self._pipelines["CT" if str(modality).upper() == "CT" else "MR"](img)
        arr = np.ascontiguousarray(img.as_tensor()[0].numpy().astype(np.float32, copy=False))
        out_geo = VolumeGeometry.from_affine(_RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64), arr.shape)
        return arr, out_geo


@lru_cache(maxsize=16)
def volume_normalizer(config: VolumeTransformConfig = VolumeTransformConfig()) -> VolumeNormalizer:
    """The :class:`VolumeNormalizer` of ``config``, built on first use in this process (a Ray worker
    builds it once) and reused for every later volume."""
    return VolumeNormalizer(config)


def normalize_volume(
    volume: np.ndarray,
    geometry: VolumeGeometry | dict,
    modality: str,
    config: VolumeTransformConfig = VolumeTransformConfig(),
) -> tuple[np.ndarray, VolumeGeometry]:
    """Orient, resample, scale intensities and crop/pad one raw volume (see :class:`VolumeNormalizer`).

    Returns ``(volume (S0, S1, S2) float32, its VolumeGeometry)`` (LPS, :mod:`.geometry` conventions).
    """
    return volume_normalizer(config)(volume, geometry, modality)


class NormalizeVolumed:
    """Dictionary twin of :func:`normalize_volume` for series rows and batches (``dict[str, np.ndarray]``).

    Reads ``volume``, ``geometry`` and ``modality``; writes the normalised volume (fixed shape), its
    geometry and ``normalization`` (the recipe's fingerprint); leaves the other columns alone. A
    row that is already normalised is refused (a second CT window would flatten the volume). The
    pipelines come from :func:`volume_normalizer`: built once per process, also after pickling to a
    Ray worker, and once per actor when Ray Data builds this class itself (an actor pool).
    """

    def __init__(self, config: VolumeTransformConfig = VolumeTransformConfig()):
        self.config = config
        self.normalizer = volume_normalizer(config)

    def __reduce__(self):
        return (NormalizeVolumed, (self.config,))

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Normalise one series row (a plain dict)."""
        missing = [c for c in ("volume", "geometry", "modality") if c not in row]
        if missing:
            raise KeyError(f"series row lacks {missing} (columns: {sorted(row)}); NormalizeVolumed reads series rows")
        if row.get("normalization"):
            raise ValueError(
                "this row is already normalised (its 'normalization' column names the recipe); normalise once: "
                "either read_dicom(transform=...) or normalize_dataset/NormalizeVolumed, not both"
            )
        out = dict(row)
        vol, geo = self.normalizer(row["volume"], row["geometry"], str(row["modality"]))
        out["volume"], out["geometry"], out["normalization"] = vol, geo.to_dict(), self.config.fingerprint()
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "volume" not in batch:
            raise KeyError(
                f"batch has no 'volume' column (columns: {sorted(batch)}); NormalizeVolumed reads series rows"
            )
        n = len(batch["volume"])
        rows = [self.row({k: batch[k][i] for k in batch}) for i in range(n)]
        return _stack_rows(rows, list(dict.fromkeys([*batch, "normalization"])))


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
        elif vals and isinstance(vals[0], (np.ndarray, dict)):
            arr = np.empty(len(vals), dtype=object)
            arr[:] = vals
            out[c] = arr
        else:
            out[c] = np.asarray(vals)
    return out


FUSION_COLUMNS = ("key", "study_uid", "patient_id", "label", "ct", "mr_aligned", "mr", "present")
"""Columns of a model-ready row: ``ct``/``mr_aligned`` on one grid (early fusion), ``mr`` on its own."""


def fusion_inputs(paired: dict[str, Any], config: VolumeTransformConfig = VolumeTransformConfig()) -> dict[str, Any]:
    """Model-ready volumes from a paired row (see :mod:`.pairing`), each normalised exactly once.

    * ``ct``: CT on the reference grid, windowed; ``mr_aligned``: the MR resampled onto that grid,
      normalised with the same geometry, so both voxel grids coincide (early fusion);
    * ``mr``: the MR normalised on its own grid (mid and late fusion);
    * ``present``: ``[has_ct, has_mr]`` as float32. A missing modality is all zeros.

    Raw paired rows (``normalization == ""``) are normalised here. Rows paired from series that were
    normalised at read time (``read_dicom(transform=config)``) are only assembled: their volumes
    are already on ``config``'s grid.

    Raises:
        ValueError: the row was normalised with another recipe than ``config``.
    """
    shape = tuple(config.spatial_size)
    zeros = np.zeros(shape, dtype=np.float32)
    has_ct, has_mr = bool(paired["has_ct"]), bool(paired["has_mr"])
    done = str(paired.get("normalization") or "")
    if done:
        if done != config.fingerprint():
            raise ValueError(
                f"this paired row was normalised with {done}, not with the given config {config.fingerprint()}; "
                "pass the VolumeTransformConfig the series were read with"
            )

        def ready(column: str) -> np.ndarray:
            vol = np.asarray(paired[column], dtype=np.float32)
            if vol.shape != shape:
                raise ValueError(f"normalised {column} has shape {vol.shape}, expected spatial_size {shape}")
            return vol

        ct = ready("ct_volume") if has_ct else zeros
        mr_aligned = ready("mr_volume") if has_mr else zeros
        mr = ready("mr_native_volume") if has_mr else zeros
    else:
        norm = volume_normalizer(config)
        geo = paired["geometry"]
        ct = norm(paired["ct_volume"], geo, "CT")[0] if has_ct else zeros
        mr_aligned = norm(paired["mr_volume"], geo, "MR")[0] if has_mr else zeros
        mr = norm(paired["mr_native_volume"], paired["mr_native_geometry"], "MR")[0] if has_mr else zeros
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
    """Batch twin of :func:`fusion_inputs`: paired-row batches in, model-ready batches out (pipelines
    built once per process, as :class:`NormalizeVolumed`)."""

    def __init__(self, config: VolumeTransformConfig = VolumeTransformConfig()):
        self.config = config
        self.normalizer = volume_normalizer(config)

    def __reduce__(self):
        return (FusionInputsd, (self.config,))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        rows = [fusion_inputs({k: batch[k][i] for k in batch}, self.config) for i in range(n)]
        return _stack_rows(rows, list(FUSION_COLUMNS))
