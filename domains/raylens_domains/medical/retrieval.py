"""Similar-case retrieval: case embeddings from a fusion model into a FAISS index (``raylens.index``).

The embedding of a case is the fusion model's pooled feature vector (``model.embed``), so cases that
the model finds alike (same lesion look on CT and MR) are neighbours. Index metadata holds only
pseudonymised ids, the label and the modalities: no PHI reaches the index.

With a trained fusion model and preprocessed cases (skipped as a doctest: it needs both):

>>> idx = build_case_index(model, arrays, meta, checkpoint_hash=file_hash(ckpt / "model.safetensors"))  # doctest: +SKIP
>>> hits = similar_cases(idx, model, query_arrays, k=5)                                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylens.models.clip import file_sha256

from .train import MODEL_INPUT_KEYS

__all__ = ["embed_arrays", "build_case_index", "similar_cases", "file_hash", "INDEX_METADATA_COLUMNS"]

INDEX_METADATA_COLUMNS = ("study_uid", "patient_id", "label", "modalities")
"""The only metadata the case index stores (all pseudonymised or non-identifying)."""


def file_hash(path: str | Path, n: int = 16) -> str:
    """First ``n`` hex digits of a file's sha256 (the checkpoint hash recorded in the index)."""
    return file_sha256(path, n)


@torch.no_grad()
def embed_arrays(model: torch.nn.Module, arrays: Mapping[str, np.ndarray], *, batch_size: int = 32) -> np.ndarray:
    """``(N, D)`` float32 case embeddings (``model.embed``) of model-ready arrays."""
    model.eval()
    device = next(model.parameters()).device
    keys = [k for k in MODEL_INPUT_KEYS if k in arrays]
    n = len(arrays[keys[0]])
    out = []
    for i in range(0, n, batch_size):
        b = {k: torch.as_tensor(np.asarray(arrays[k][i : i + batch_size])).to(device) for k in keys}
        out.append(model.embed(b).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def _metadata(meta: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    if isinstance(meta, Mapping):
        cols = {k: list(meta[k]) for k in INDEX_METADATA_COLUMNS if k in meta}
    else:
        cols = {k: [m.get(k) for m in meta] for k in INDEX_METADATA_COLUMNS if meta and k in meta[0]}
    if "study_uid" not in cols:
        raise ValueError(f"case metadata needs a study_uid column; allowed columns: {INDEX_METADATA_COLUMNS}")
    if "label" in cols:
        cols["label"] = [int(x) for x in cols["label"]]
    return cols


def build_case_index(
    model: torch.nn.Module,
    arrays: Mapping[str, np.ndarray],
    metadata: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    *,
    checkpoint_hash: str = "",
    model_name: str | None = None,
):
    """Embed the cases and build a cosine :class:`raylens.index.VectorIndex` over them.

    Only :data:`INDEX_METADATA_COLUMNS` are kept from ``metadata`` (extra keys are dropped, so a
    stray identifying column cannot reach the index).
    """
    from raylens.index import VectorIndex

    vecs = embed_arrays(model, arrays)
    cols = _metadata(metadata)
    if any(len(v) != len(vecs) for v in cols.values()):
        raise ValueError(f"metadata has {[len(v) for v in cols.values()]} rows for {len(vecs)} cases")
    name = model_name or f"medical-fusion-{getattr(model, 'kind', 'model')}"
    return VectorIndex.build(vecs, cols, model=name, checkpoint_hash=checkpoint_hash, metric="ip", normalize=True)


def similar_cases(
    index, model: torch.nn.Module, arrays: Mapping[str, np.ndarray], *, k: int = 5, filters: dict | None = None
):
    """The ``k`` most similar indexed cases for each query case: ``list[list[SearchHit]]``."""
    return index.search(embed_arrays(model, arrays), k=k, filters=filters)
