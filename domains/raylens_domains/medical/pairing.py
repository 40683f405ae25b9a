"""Multi-modal pairing: one CT and one MR series of a study (or patient) joined into one row.

The MR volume is resampled onto the CT grid through the two affines (both map voxels to the same
LPS patient space when they share a FrameOfReferenceUID), so early fusion sees aligned voxels. The
MR volume on its own grid is kept too (``mr_native_*``) for mid and late fusion, which need no
alignment. A study with only one modality still gives a row; the missing side is an empty
``(1, 1, 1)`` volume with ``has_ct``/``has_mr`` false, and the reference grid is the present one.
Raw and normalised series pair alike (the affines say where each voxel is); the series of one
group must agree on their ``normalization`` (all raw, or all normalised with one recipe).

Paired row columns (each geometry is one :meth:`~.geometry.VolumeGeometry.to_dict` value):

* ``key`` (study or patient pseudonym), ``study_uid``, ``patient_id``, ``label`` (-1 unknown),
  ``has_ct``, ``has_mr``, ``modalities`` (``"CT+MR"``, ``"CT"`` or ``"MR"``), ``warnings``;
* ``geometry``: the reference grid (CT's when present), which ``ct_volume`` and ``mr_volume`` (the
  MR resampled onto it) share;
* ``mr_native_volume`` and its ``mr_native_geometry`` (the MR on its own grid);
* ``ct_series_uid``, ``mr_series_uid``, ``normalization`` (the series').
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from .geometry import VolumeGeometry, resample_to_grid

__all__ = ["PAIR_BY", "pair_rows", "pair_group", "resample_onto"]

PAIR_BY = ("study", "patient")
_EMPTY = np.zeros((1, 1, 1), dtype=np.float32)


def resample_onto(moving: dict[str, Any], fixed: dict[str, Any], *, fill: float = 0.0) -> np.ndarray:
    """``moving["volume"]`` resampled (trilinear) onto ``fixed``'s grid, using both rows' geometry."""
    src, dst = VolumeGeometry.of(moving["geometry"]), VolumeGeometry.of(fixed["geometry"])
    return resample_to_grid(moving["volume"], src.affine, dst.affine, dst.shape, fill=fill)


def _key(row: dict[str, Any], by: str) -> str:
    return str(row["study_uid"] if by == "study" else row["patient_id"])


def pair_group(rows: list[dict[str, Any]], *, by: str = "study") -> tuple[dict[str, Any] | None, list[str]]:
    """Pair the series rows of one study/patient. Returns ``(paired_row or None, notes)``.

    With several series of one modality the one with the most slices is used and the others are
    named in ``notes`` (and in the row's ``warnings``). Rows of other modalities are ignored.
    """
    notes: list[str] = []
    by_mod: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_mod[str(r["modality"]).upper()].append(r)
    chosen: dict[str, dict[str, Any]] = {}
    for mod in ("CT", "MR"):
        cands = sorted(by_mod.get(mod, []), key=lambda r: (-np.asarray(r["volume"]).shape[0], str(r["series_uid"])))
        if cands:
            chosen[mod] = cands[0]
            if len(cands) > 1:
                notes.append(f"{len(cands)} {mod} series; used {cands[0]['series_uid']} (most slices)")
    others = sorted(set(by_mod) - {"CT", "MR"})
    if others:
        notes.append(f"ignored modalities {others}")
    if not chosen:
        return None, notes + ["no CT or MR series"]
    normalization = {str(r.get("normalization") or "") for r in chosen.values()}
    if len(normalization) > 1:
        raise ValueError(
            "the CT and MR series of one study differ in normalization (one raw, one normalised, or two recipes); "
            "read them the same way and normalise once"
        )
    ct, mr = chosen.get("CT"), chosen.get("MR")
    ref = ct if ct is not None else mr
    labels = {int(r["label"]) for r in chosen.values() if int(r.get("label", -1)) >= 0}
    if len(labels) > 1:
        notes.append(f"CT and MR carry different labels {sorted(labels)}; label set to unknown")
    warnings = [w for r in chosen.values() for w in str(r.get("warnings") or "").split("; ") if w]
    if ct is not None and mr is not None:
        if str(ct.get("frame_of_reference_uid", "")) != str(mr.get("frame_of_reference_uid", "")):
            warnings.append(
                "CT and MR have different FrameOfReferenceUIDs: MR resampled assuming a shared "
                "patient space (register the series first for exact alignment)"
            )
        mr_on_ref = resample_onto(mr, ct, fill=0.0)
    else:
        mr_on_ref = np.asarray(mr["volume"], dtype=np.float32) if mr is not None else _EMPTY
    ref_geo = VolumeGeometry.of(ref["geometry"])
    mr_geo = VolumeGeometry.of(mr["geometry"]) if mr is not None else ref_geo.with_shape(_EMPTY.shape)
    row = {
        "key": _key(ref, by),
        "study_uid": str(ref["study_uid"]),
        "patient_id": str(ref["patient_id"]),
        "label": labels.pop() if len(labels) == 1 else -1,
        "has_ct": ct is not None,
        "has_mr": mr is not None,
        "modalities": "+".join(m for m in ("CT", "MR") if m in chosen),
        "warnings": "; ".join(warnings + notes),
        "geometry": ref_geo.to_dict(),
        "ct_volume": np.asarray(ct["volume"], dtype=np.float32) if ct is not None else _EMPTY,
        "mr_volume": mr_on_ref,
        "mr_native_volume": np.asarray(mr["volume"], dtype=np.float32) if mr is not None else _EMPTY,
        "mr_native_geometry": mr_geo.to_dict(),
        "ct_series_uid": str(ct["series_uid"]) if ct is not None else "",
        "mr_series_uid": str(mr["series_uid"]) if mr is not None else "",
        "normalization": normalization.pop(),
    }
    return row, notes


def pair_rows(
    rows: Iterable[dict[str, Any]], *, by: str = "study"
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Pair series rows into multi-modal rows, one per study (``by="study"``) or patient.

    Returns ``(paired_rows, notes)`` where ``notes`` lists ``(key, note)`` for groups with extra
    series, other modalities, or nothing usable.
    """
    if by not in PAIR_BY:
        raise ValueError(f"by must be one of {PAIR_BY}, got {by!r}")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[_key(r, by)].append(r)
    out, notes = [], []
    for key in sorted(groups):
        row, n = pair_group(groups[key], by=by)
        notes.extend((key, x) for x in n)
        if row is not None:
            out.append(row)
    return out, notes
