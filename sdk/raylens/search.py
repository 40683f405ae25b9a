"""Text-to-image and image-to-image search: a CLIP model in front of a FAISS index.

>>> searcher = Searcher.open("runs/demo/index")          # doctest: +SKIP
>>> for hit in searcher.text("a red circle", k=5):       # doctest: +SKIP
...     print(hit.score, hit.caption, hit.path)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raylens.data.images import decode_image
from raylens.errors import IndexMismatchError
from raylens.index import SearchHit, VectorIndex
from raylens.models import ClipModel, create_model

__all__ = ["Searcher", "SearchHit"]


class Searcher:
    """Encodes queries with ``model`` and looks them up in ``index``; the two must match."""

    def __init__(self, model: ClipModel, index: VectorIndex):
        m = index.manifest
        if m.model != model.spec.name or (m.checkpoint_hash and m.checkpoint_hash != model.checkpoint_hash):
            raise IndexMismatchError(
                f"index was built with model {m.model!r} (checkpoint {m.checkpoint_hash}) but the query model is "
                f"{model.spec.name!r} (checkpoint {model.checkpoint_hash}); embed queries with the index's model, "
                "or rebuild the index with this one"
            )
        if index.dim != model.spec.embed_dim:
            raise IndexMismatchError(f"index dim {index.dim} != model embed_dim {model.spec.embed_dim}")
        self.model = model
        self.index = index

    @classmethod
    def open(cls, index_dir: str | Path, *, checkpoint: str | Path | None = None) -> Searcher:
        """Load an index and the model its manifest names (or ``checkpoint``)."""
        index = VectorIndex.load(index_dir)
        ckpt = checkpoint or index.manifest.checkpoint
        if not ckpt:
            raise ValueError(f"index {str(index_dir)!r} records no checkpoint; pass checkpoint=<model dir>")
        return cls(create_model(index.manifest.model, pretrained=str(ckpt)), index)

    def _check_k(self, k: int) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(self.index):
            raise ValueError(f"k must be an int in [1, {len(self.index)}] (the index size), got {k!r}")

    def texts(self, queries: list[str], k: int = 5, filters: dict | None = None) -> list[list[SearchHit]]:
        """Batched text-to-image search: one hit list per query, best first."""
        if isinstance(queries, str):
            raise TypeError("texts() takes a list of strings; use text() for one query")
        bad = [q for q in queries if not isinstance(q, str) or not q.strip()]
        if not queries or bad:
            raise ValueError(
                "queries must be non-empty strings; got an empty query. Type some words, e.g. 'a red circle'"
            )
        self._check_k(k)
        return self.index.search(self.model.encode_texts(list(queries)), k=k, filters=filters)

    def text(self, query: str, k: int = 5, filters: dict | None = None) -> list[SearchHit]:
        """Text-to-image search for one query."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        return self.texts([query], k, filters)[0]

    def image(self, image: np.ndarray | bytes | str | Path, k: int = 5, filters: dict | None = None) -> list[SearchHit]:
        """Image-to-image search: an ``(H, W, 3)`` uint8 array, encoded image bytes, or a file path."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"query image {str(path)!r} does not exist")
            image = path.read_bytes()
        if isinstance(image, (bytes, bytearray)):
            image = decode_image(bytes(image))
        self._check_k(k)
        x = self.model.preprocess(np.asarray(image))[None]
        return self.index.search(self.model.encode_images(x), k=k, filters=filters)[0]
