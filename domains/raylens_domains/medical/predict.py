"""Inference on uploaded or ingested series: pair, normalise, predict from the modalities present.

:class:`FusionPredictor` wraps a trained fusion model (and the preprocessing it was trained with). It
takes series rows (from any ingest) or the raw members of an upload held in memory
(``{name: bytes}``): the upload path reads headers and pixels from memory only, pseudonymising ids
with the service's key as it reads, so no PHI reaches the model, the response or a log.

Mid and late fusion predict from whichever of CT and MR is present; early fusion fills a missing
modality with a zero channel and says so in the prediction's ``warnings``.

Plain Python (no Ray): the Serve app (``raylens_services.medical``) is a thin wrapper around it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylens.models import read_checkpoint

from .deid import DeidConfig
from .dicom_scan import SliceHeader, group_series, read_headers
from .errors import DicomError
from .ingest import DicomIngestConfig, load_series_row
from .pairing import pair_rows
from .train import load_checkpoint, predict_proba
from .transforms import VolumeTransformConfig, fusion_inputs

__all__ = ["FusionPrediction", "PreparedUpload", "FusionPredictor"]


@dataclass
class FusionPrediction:
    """One study's prediction."""

    probability: float
    """Probability of the positive class."""
    label: int
    """``probability >= threshold``."""
    modalities_used: list[str]
    """The modalities the model saw (``["CT", "MR"]``, ``["CT"]`` or ``["MR"]``)."""
    model: str
    """The fusion kind: early, mid, late, ct_only or mr_only."""
    study_uid: str
    """Pseudonymised StudyInstanceUID."""
    patient_id: str
    """Pseudonymised patient id."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedUpload:
    """An upload after its headers were read (no pixels decoded yet)."""

    groups: dict[str, list[SliceHeader]]
    """Slice headers by pseudonymised SeriesInstanceUID."""
    skipped: list[dict[str, Any]]
    """Members that are not usable DICOM images: ``{"member": index in name order, "reason"}``.
    Member names are not echoed (a folder name may be a patient's name)."""
    n_voxels: int
    """Voxels that decoding every series would produce (check it against the pixel limit)."""
    members: Mapping[str, bytes] = field(repr=False, default_factory=dict)


class FusionPredictor:
    """A trained fusion model plus its preprocessing, for studies given as rows or as an upload."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        transform: VolumeTransformConfig = VolumeTransformConfig(),
        deid: DeidConfig | None = None,
        threshold: float = 0.5,
        pair_by: str = "study",
    ):
        self.model = model.eval()
        self.kind = getattr(model, "kind", type(model).__name__)
        self.transform = transform
        self.deid = deid
        self.threshold = float(threshold)
        self.pair_by = pair_by

    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, deid: DeidConfig | None = None, **kw) -> FusionPredictor:
        """Load a fusion checkpoint (:func:`raylens.models.load_model`; its ``transform`` config included)."""
        model = load_checkpoint(directory)
        cfg = read_checkpoint(directory).config
        if "transform" in cfg and "transform" not in kw:
            t = cfg["transform"]
            kw["transform"] = VolumeTransformConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})
        return cls(model, deid=deid, **kw)

    # ------------------------------------------------------------------------------- rows

    def predict_rows(self, series_rows: list[dict[str, Any]]) -> list[FusionPrediction]:
        """Predict one result per study (or patient) from de-identified series rows."""
        paired, notes = pair_rows(series_rows, by=self.pair_by)
        out = []
        for p in paired:
            inputs = fusion_inputs(p, self.transform)
            present = (bool(p["has_ct"]), bool(p["has_mr"]))
            used = [m for m, ok in zip(("CT", "MR"), present) if ok]
            warnings = [w for w in str(p.get("warnings") or "").split("; ") if w]
            if self.kind == "ct_only" and not present[0] or self.kind == "mr_only" and not present[1]:
                warnings.append(f"the {self.kind} model needs {self.kind[:2].upper()}, which is missing")
            elif self.kind == "early" and not all(present):
                warnings.append(
                    "early fusion with a missing modality sees a zero channel; mid or late fusion are built for this"
                )
            arrays = {k: inputs[k][None] for k in ("ct", "mr_aligned", "mr", "present")}
            prob = float(predict_proba(self.model, arrays)[0])
            if self.kind == "ct_only":
                used = ["CT"] if present[0] else []
            elif self.kind == "mr_only":
                used = ["MR"] if present[1] else []
            out.append(
                FusionPrediction(
                    probability=prob,
                    label=int(prob >= self.threshold),
                    modalities_used=used,
                    model=self.kind,
                    study_uid=str(p["study_uid"]),
                    patient_id=str(p["patient_id"]),
                    warnings=warnings,
                )
            )
        return out

    # ----------------------------------------------------------------------------- upload

    def _config(self) -> DicomIngestConfig:
        if self.deid is None:
            raise ValueError("this predictor has no DeidConfig: pass deid=DeidConfig(key=...) to read uploads")
        return DicomIngestConfig(deid=DeidConfig(key=self.deid.key, remove_private_tags=self.deid.remove_private_tags))

    def read_upload(self, members: Mapping[str, bytes]) -> PreparedUpload:
        """Read the headers of in-memory files (``{name: bytes}``), pseudonymising ids; no pixels yet."""
        cfg = self._config()
        # the uploaded names never travel further (a folder may be named after the patient)
        aliased = {f"member-{i:05d}": members[n] for i, n in enumerate(sorted(members))}

        def opener(name: str):
            return io.BytesIO(aliased[name])

        headers, skipped = read_headers(sorted(aliased), cfg.deid.pseudonymizer(), opener=opener)
        groups = group_series(headers)
        n_voxels = sum(h.rows * h.cols for h in headers)
        return PreparedUpload(
            groups=groups,
            skipped=[{"member": int(p.split("-")[1]), "reason": r} for p, r in skipped],
            n_voxels=int(n_voxels),
            members=aliased,
        )

    def predict_upload(self, upload: PreparedUpload) -> tuple[list[FusionPrediction], list[dict[str, Any]]]:
        """Decode the series of a :class:`PreparedUpload` and predict. Returns ``(predictions, skipped)``."""
        cfg = self._config()
        members = upload.members

        def opener(name: str):
            return io.BytesIO(members[name])

        rows, skipped = [], list(upload.skipped)
        for hs in upload.groups.values():
            try:
                rows.append(load_series_row(hs, cfg, opener=opener))
            except DicomError as e:
                skipped.append({"series_uid": hs[0].series_uid, "slices": len(hs), "reason": str(e)})
        if not rows:
            return [], skipped
        return self.predict_rows(rows), skipped

    @torch.no_grad()
    def embed_rows(self, series_rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Case embeddings (the model's pooled features) and their metadata, one per study."""
        paired, _ = pair_rows(series_rows, by=self.pair_by)
        vecs, meta = [], []
        for p in paired:
            inputs = fusion_inputs(p, self.transform)
            t = {k: torch.as_tensor(np.asarray(inputs[k])[None]) for k in ("ct", "mr_aligned", "mr", "present")}
            vecs.append(self.model.embed(t)[0].float().numpy())
            meta.append(
                {
                    "study_uid": str(p["study_uid"]),
                    "patient_id": str(p["patient_id"]),
                    "label": int(p["label"]),
                    "modalities": str(p["modalities"]),
                }
            )
        return np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, 0), np.float32), meta
