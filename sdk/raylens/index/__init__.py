"""FAISS indices as a product: automatic index choice, stable ids with add/delete, metadata filters
inside the search, atomic persistence with checksums, autotuned search parameters, named catalogs.

>>> import numpy as np
>>> from raylens.index import VectorIndex
>>> vectors = np.eye(4, dtype="float32")
>>> idx = VectorIndex.build(vectors, {"caption": ["a", "b", "c", "d"]}, model="clip-tiny", checkpoint_hash="abc123")
>>> idx.save("runs/demo/index").name
'index'
>>> VectorIndex.load("runs/demo/index").search(vectors[2], k=1)[0][0].caption
'c'

The Ray Data build path lives in :mod:`raylens.index.ray_build` (the only module here that imports ray).
"""

from raylens.index.catalog import IndexCatalog
from raylens.index.choose import IndexChoice, choose_index
from raylens.index.config import BuildOptions
from raylens.index.errors import IndexCorruptError, IndexMismatchError, IndexNotFoundError, IndexReadOnlyError
from raylens.index.hits import SearchHit
from raylens.index.manifest import IndexManifest
from raylens.index.tune import TuneResult, recall_at_k
from raylens.index.vector_index import VectorIndex

__all__ = [
    "VectorIndex",
    "SearchHit",
    "IndexManifest",
    "BuildOptions",
    "IndexCatalog",
    "IndexChoice",
    "choose_index",
    "TuneResult",
    "recall_at_k",
    "IndexCorruptError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReadOnlyError",
]
