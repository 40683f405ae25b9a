"""The one search core: text, image and embedding queries against named FAISS indices.

:func:`search_batch` does the whole work of a batch of searches: it groups the queries by (kind,
index, filters), encodes each group's texts or images in one call, searches each group with one
FAISS call and shapes the hits into :class:`SearchResult` objects; :func:`search_batch_async` is the
same on an event loop, with an awaitable encoder. The SDK's :class:`Searcher` and the HTTP ``/search``
of the search service (its index deployment, ``raylens_services.indices``) both call them, so these
rules hold everywhere:

* ``k`` is the most hits to return: an int from 1 to 10,000 (over HTTP also at most the service's
  ``max_k``). A search returns the best ``k`` hits, or all of them when the index, or the part of it
  the filters allow, holds fewer: ``k`` above the index size is not an error.
* ``filters`` (``{column: value | [values] | {op: value}}``, op in eq, ne, in, not_in; all must hold)
  must name metadata columns of the index. They are checked before anything is encoded; a bad one
  is a ``ValueError`` (HTTP 422) for its own query only.
* The model/index check runs when an index is attached, that is when an :class:`IndexSet` is built:
  a ``Searcher`` made, opened or given a new ``index``; the service started or its indices swapped.
  An index built by another model, checkpoint or dim is refused there with
  :class:`~raylens.errors.IndexMismatchError`. Queries are not checked one by one.

This module imports neither torch nor FAISS until it searches, so a web front end can build
:class:`SearchQuery` objects cheaply.

>>> SearchQuery(text="a red circle", k=3).kind
'text'

With the index `raylens demo` builds (skipped as a doctest: it needs that index and its checkpoint):

>>> searcher = Searcher.open("runs/demo/index")          # doctest: +SKIP
>>> for hit in searcher.text("a red circle", k=5):       # doctest: +SKIP
...     print(hit.score, hit.caption, hit.path)
"""

from __future__ import annotations

import asyncio
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from raylens.errors import IndexMismatchError, NoIndexError, NotReadyError, UnknownIndexError

if TYPE_CHECKING:
    from raylens.index import SearchHit, VectorIndex
    from raylens.models import ClipModel

__all__ = [
    "DEFAULT_K",
    "KINDS",
    "SearchQuery",
    "SearchResult",
    "SearchHit",
    "ModelIdentity",
    "Encoder",
    "ModelEncoder",
    "IndexSet",
    "check_compatible",
    "search_batch",
    "search_batch_async",
    "AsyncEncoder",
    "Searcher",
]

DEFAULT_K = 10
"""``k`` of a query that names none."""
KINDS = ("text", "image", "embedding")
"""The kinds of query, named after the field that holds each."""


def __getattr__(name: str):  # SearchHit lives in raylens.index, which loads FAISS: import it on first use
    if name == "SearchHit":
        from raylens.index import SearchHit

        return SearchHit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- queries and results --------------------------------------------------------------------------


@dataclass(eq=False)
class SearchQuery:
    """One search: exactly one of ``text``, ``image`` or ``embedding``, plus ``k``, ``filters``, ``index``.

    Raises ``ValueError``/``TypeError`` naming the field when a value cannot be searched.
    """

    text: str | None = None
    """A text query (text-to-image search)."""
    image: np.ndarray | None = None
    """A decoded ``(H, W, 3)`` uint8 image (image-to-image search); see ``raylens.data.images.decode_image``."""
    embedding: np.ndarray | None = None
    """A query vector with the index's dim (stored as float32)."""
    k: int = DEFAULT_K
    """The most hits to return; fewer come back when the index or the filters hold fewer."""
    filters: dict[str, Any] | None = None
    """Metadata conditions that must all hold: ``{column: value | [values] | {op: value}}``."""
    index: str | None = None
    """The name of the index to search; None: the default one (the first attached)."""
    kind: str = field(init=False)
    """``"text"``, ``"image"`` or ``"embedding"``: which of the three was given."""

    def __post_init__(self):
        given = [name for name in KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of `text`, `image` or `embedding` (got {given or 'none'})")
        self.kind = given[0]
        if self.kind == "text":
            if not isinstance(self.text, str):
                raise TypeError(f"`text` must be a string, got {type(self.text).__name__}")
            if not self.text.strip():
                raise ValueError("`text` is an empty query; type some words, e.g. 'a red circle'")
        elif self.kind == "image":
            img = self.image
            if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8):
                got = f"shape {img.shape} dtype {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ValueError(
                    f"`image` must be an (H, W, 3) uint8 array, got {got}; decode image files with "
                    "raylens.data.images.decode_image"
                )
            if not img.size:
                raise ValueError("`image` is empty (0 pixels)")
        else:
            self.embedding = _as_embedding(self.embedding)
        if not isinstance(self.k, numbers.Integral) or isinstance(self.k, bool):
            raise TypeError(f"k must be an int >= 1 (the most hits to return), got {self.k!r}")
        if self.k < 1:
            raise ValueError(f"k must be an int >= 1 (the most hits to return), got {self.k!r}")
        self.k = int(self.k)
        if self.filters is not None and not isinstance(self.filters, dict):
            raise TypeError(f"`filters` must be a dict of column -> value, got {type(self.filters).__name__}")
        self.filters = self.filters or None
        if self.index is not None and (not isinstance(self.index, str) or not self.index):
            raise ValueError(f"`index` must be the name of an open index (or None for the default), got {self.index!r}")


def _as_embedding(value: Any) -> np.ndarray:
    try:
        x = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError("`embedding` must be a list or 1-D array of numbers") from None
    if x.ndim != 1 or not x.size:
        raise ValueError(f"`embedding` must be a non-empty 1-D vector, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("`embedding` holds NaN or infinite values")
    return x


@dataclass
class SearchResult:
    """The hits of one query, best first."""

    index: str
    """The name of the index that was searched."""
    hits: list[SearchHit]
    """At most the query's ``k`` hits."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"index": name, "hits": [hit dicts]}``."""
        return {"index": self.index, "hits": [h.to_dict() for h in self.hits]}


# ---- the model side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """What an index must match to be searched with a model's embeddings."""

    name: str
    """The model's registry name (an index manifest's ``model``)."""
    checkpoint_hash: str
    """The hash of its weights (an index manifest's ``checkpoint_hash``)."""
    dim: int
    """The length of its embeddings."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be the model's registry name, got {self.name!r}")
        if not isinstance(self.checkpoint_hash, str):
            raise TypeError(f"`checkpoint_hash` must be a string ('' if unknown), got {self.checkpoint_hash!r}")
        if not isinstance(self.dim, numbers.Integral) or isinstance(self.dim, bool) or self.dim < 1:
            raise ValueError(f"`dim` must be a positive int (the embedding length), got {self.dim!r}")

    @classmethod
    def of(cls, model: ClipModel) -> ModelIdentity:
        """The identity of a loaded CLIP model."""
        return cls(model.spec.name, model.checkpoint_hash, int(model.spec.embed_dim))


class Encoder(Protocol):
    """What the core needs of a model: its identity and batched encoders (L2-normalised float32 rows)."""

    identity: ModelIdentity

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` embeddings."""
        ...

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """``(len(images), dim)`` embeddings of decoded ``(H, W, 3)`` uint8 images."""
        ...


class ModelEncoder:
    """The :class:`Encoder` of a CLIP model in this process, and its :class:`AsyncEncoder` (each
    encode in a worker thread, ``asyncio.to_thread``, so an event loop goes on while torch runs)."""

    def __init__(self, model: ClipModel):
        self.model = model
        self.identity = ModelIdentity.of(model)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_texts(list(texts))

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        return self.model.encode_images(self.model.preprocess.batch(list(images)))

    async def aencode_texts(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.encode_texts, list(texts))

    async def aencode_images(self, images: list[np.ndarray]) -> np.ndarray:
        return await asyncio.to_thread(self.encode_images, list(images))


# ---- the index side -------------------------------------------------------------------------------


def check_compatible(model: ModelIdentity, index: VectorIndex, name: str | None = None) -> None:
    """Raise :class:`IndexMismatchError` unless ``index`` was built with ``model``'s embeddings.

    The rule: the same model name, the same checkpoint hash (when the index records one) and the same dim.
    """
    m = index.manifest
    where = f"index {name!r}" if name else "the index"
    if m.model != model.name or (m.checkpoint_hash and m.checkpoint_hash != model.checkpoint_hash):
        raise IndexMismatchError(
            f"{where} was built with model {m.model!r} (checkpoint {m.checkpoint_hash}) but the query model is "
            f"{model.name!r} (checkpoint {model.checkpoint_hash}); embed queries with the index's model, "
            "or rebuild the index with this one"
        )
    if index.dim != model.dim:
        raise IndexMismatchError(
            f"{where} holds {index.dim}-dim vectors but model {model.name!r} makes {model.dim}-dim embeddings; "
            "rebuild the index with this model"
        )


class IndexSet(Mapping):
    """Named indices, each checked against ``model`` when the set is built; the first is the default.

    A set never changes: to swap indices, build a new set (every index is checked again) and replace
    the old one. Searches already running keep the set they started with. ``model=None`` attaches
    indices without a model: they answer ``embedding`` queries only.

    >>> IndexSet().default is None
    True
    """

    def __init__(self, indices: Mapping[str, VectorIndex] | None = None, *, model: ModelIdentity | None = None):
        from raylens.index import VectorIndex

        if model is not None and not isinstance(model, ModelIdentity):
            raise TypeError(f"`model` must be a ModelIdentity (or None), got {type(model).__name__}")
        items = dict(indices or {})
        for name, index in items.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"index names must be non-empty strings such as 'natural', got {name!r}")
            if not isinstance(index, VectorIndex):
                raise TypeError(f"index {name!r} must be a VectorIndex, got {type(index).__name__}")
            if model is not None:
                check_compatible(model, index, name)
        self._indices = items
        self.model = model

    def __getitem__(self, name: str) -> VectorIndex:
        return self._indices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return f"IndexSet({ {n: len(i) for n, i in self._indices.items()} }, model={self.model})"

    @property
    def default(self) -> str | None:
        """The name of the default index (the first), None when the set is empty."""
        return next(iter(self._indices), None)

    def resolve(self, name: str | None) -> tuple[str, VectorIndex]:
        """``(name, index)`` for a query's ``index`` (None: the default)."""
        if name is None:
            if not self._indices:
                raise NoIndexError(
                    "no index is open; open one first (the search service: set RAYLENS_INDEX or its `indices`)"
                )
            name = self.default
        try:
            return name, self._indices[name]
        except KeyError:
            raise UnknownIndexError(f"no index named {name!r}; open ones: {list(self._indices)}") from None


# ---- the batch ------------------------------------------------------------------------------------


def _prepare(q: SearchQuery, indices: IndexSet, encoder: Encoder | None) -> tuple[tuple, VectorIndex]:
    """Check one query against its index (before any encoding) and return its group key and index."""
    from raylens.index._validate import MAX_K
    from raylens.index.filters import normalize_filters

    if not isinstance(q, SearchQuery):
        raise TypeError(f"queries must be SearchQuery objects, got {type(q).__name__}")
    name, index = indices.resolve(q.index)
    if q.k > MAX_K:
        raise ValueError(f"k must be an int from 1 to {MAX_K}, got {q.k}; narrow the search with filters instead")
    spec = normalize_filters(q.filters, index.columns)  # unknown columns and ops raise here
    dim = 0
    if q.kind == "embedding":
        dim = len(q.embedding)
        if dim != index.dim:
            raise ValueError(f"`embedding` has {dim} numbers but index {name!r} holds {index.dim}-dim vectors")
    elif encoder is None:
        raise NotReadyError(f"{q.kind} queries need a model to encode them; none is attached, so search by `embedding`")
    return (q.kind, name, spec, dim), index


def _inputs(kind: str, queries: list[SearchQuery]) -> list[Any]:
    """What the encoder takes for a group of one kind: its texts or its images."""
    return [q.text for q in queries] if kind == "text" else [q.image for q in queries]


def _search_group(
    key: tuple, index: VectorIndex, queries: list[SearchQuery], vectors: np.ndarray | None
) -> list[SearchResult]:
    """One FAISS search for queries that share (kind, index, filters); ``vectors``: their encoded
    texts or images (None for embedding queries, which carry their own)."""
    name = key[1]
    n = min(max(q.k for q in queries), len(index))  # k above the index size: every vector
    if n == 0:
        return [SearchResult(name, []) for _ in queries]
    if vectors is None:
        vectors = np.stack([q.embedding for q in queries])
    rows = index.search(vectors, k=n, filters=queries[0].filters)
    return [SearchResult(name, hits[: q.k]) for q, hits in zip(queries, rows)]


def _run_group(
    key: tuple, index: VectorIndex, queries: list[SearchQuery], encoder: Encoder | None
) -> list[SearchResult]:
    """One encoder call and one FAISS search for queries that share (kind, index, filters)."""
    kind = key[0]
    vectors = None
    if kind != "embedding" and len(index):
        encode = encoder.encode_texts if kind == "text" else encoder.encode_images
        vectors = encode(_inputs(kind, queries))
    return _search_group(key, index, queries, vectors)


def _check_batch(indices: IndexSet, identity: ModelIdentity | None) -> None:
    if not isinstance(indices, IndexSet):
        raise TypeError(
            f"`indices` must be an IndexSet (it checks the model/index pairs), got {type(indices).__name__}"
        )
    if identity is not None and identity != indices.model:
        raise IndexMismatchError(
            f"the indices were checked against {indices.model} but the encoder is {identity}; "
            "build the IndexSet with model=encoder.identity"
        )


def _plan(
    queries: Sequence[SearchQuery], indices: IndexSet, encoder: Any, return_exceptions: bool
) -> tuple[list[Any], dict[tuple, tuple[VectorIndex, list[int]]]]:
    """Each query checked against its index (before anything is encoded) and grouped by (kind, index,
    filters): ``(out, groups)``, ``out`` holding the exception of each query that failed its check."""
    out: list[Any] = [None] * len(queries)
    groups: dict[tuple, tuple[VectorIndex, list[int]]] = {}
    for i, q in enumerate(queries):
        try:
            key, index = _prepare(q, indices, encoder)
        except Exception as exc:
            if not return_exceptions:
                raise
            out[i] = exc
            continue
        groups.setdefault(key, (index, []))[1].append(i)
    return out, groups


def search_batch(
    queries: Sequence[SearchQuery],
    indices: IndexSet,
    encoder: Encoder | None = None,
    *,
    return_exceptions: bool = False,
) -> list[SearchResult] | list[SearchResult | Exception]:
    """Run a batch of searches: one :class:`SearchResult` per query, in order.

    Queries that share (kind, index, filters) are encoded with one ``encoder`` call and searched with
    one FAISS call. ``encoder`` must be the model ``indices`` were checked against (text and image
    queries need one). A query's mistake (unknown index or filter column, wrong embedding dim) raises
    before anything is encoded. With ``return_exceptions=True`` (as in ``asyncio.gather``), a failing
    query's exception takes its place in the list instead, and the other queries still run.
    """
    _check_batch(indices, None if encoder is None else encoder.identity)
    out, groups = _plan(queries, indices, encoder, return_exceptions)
    for key, (index, members) in groups.items():
        try:
            results = _run_group(key, index, [queries[i] for i in members], encoder)
        except Exception as exc:
            if not return_exceptions:
                raise
            results = [exc] * len(members)
        for i, result in zip(members, results):
            out[i] = result
    return out


class AsyncEncoder(Protocol):
    """:class:`Encoder` for callers on an event loop: the same identity, awaitable batched encoders
    (a model served elsewhere, e.g. the search service's embedding deployment)."""

    identity: ModelIdentity

    async def aencode_texts(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` embeddings."""
        ...

    async def aencode_images(self, images: list[np.ndarray]) -> np.ndarray:
        """``(len(images), dim)`` embeddings of decoded ``(H, W, 3)`` uint8 images."""
        ...


async def search_batch_async(
    queries: Sequence[SearchQuery],
    indices: IndexSet,
    encoder: AsyncEncoder | None = None,
    *,
    return_exceptions: bool = False,
) -> list[SearchResult] | list[SearchResult | Exception]:
    """:func:`search_batch` on an event loop: the same checks, groups, results and errors, with the
    encoder awaited (no thread blocks on it) and each group's FAISS search and hit shaping run in a
    worker thread (``asyncio.to_thread``). The groups of one batch are encoded concurrently."""
    _check_batch(indices, None if encoder is None else encoder.identity)
    out, groups = _plan(queries, indices, encoder, return_exceptions)

    async def run(key: tuple, index: VectorIndex, members: list[int]) -> list[Any]:
        group = [queries[i] for i in members]
        vectors = None
        if key[0] != "embedding" and len(index):
            encode = encoder.aencode_texts if key[0] == "text" else encoder.aencode_images
            vectors = await encode(_inputs(key[0], group))
        return await asyncio.to_thread(_search_group, key, index, group, vectors)

    done = await asyncio.gather(
        *(run(key, index, members) for key, (index, members) in groups.items()), return_exceptions=True
    )
    for (_, members), results in zip(groups.values(), done):
        if isinstance(results, BaseException):
            if not return_exceptions or not isinstance(results, Exception):
                raise results
            results = [results] * len(members)
        for i, result in zip(members, results):
            out[i] = result
    return out


# ---- the SDK front door ---------------------------------------------------------------------------


class Searcher:
    """Encodes queries with ``model`` and looks them up in ``index``; the two must match (checked here
    and whenever ``index`` is replaced, with :class:`~raylens.errors.IndexMismatchError`)."""

    def __init__(self, model: ClipModel, index: VectorIndex, *, name: str = "default"):
        self.model = model
        self.encoder = ModelEncoder(model)
        self.name = name
        self.indices = IndexSet({name: index}, model=self.encoder.identity)

    @property
    def index(self) -> VectorIndex:
        """The index searched; assigning another one checks it against the model first."""
        return self.indices[self.name]

    @index.setter
    def index(self, index: VectorIndex) -> None:
        self.indices = IndexSet({self.name: index}, model=self.encoder.identity)

    @classmethod
    def open(cls, index_dir: str | Path, *, checkpoint: str | Path | None = None) -> Searcher:
        """Load an index and the model its manifest names (or ``checkpoint``)."""
        from raylens.index import VectorIndex
        from raylens.models import create_model

        index = VectorIndex.load(index_dir)
        ckpt = checkpoint or index.manifest.checkpoint
        if not ckpt:
            raise ValueError(f"index {str(index_dir)!r} records no checkpoint; pass checkpoint=<model dir>")
        return cls(create_model(index.manifest.model, pretrained=str(ckpt)), index)

    def search(self, queries: Sequence[SearchQuery]) -> list[SearchResult]:
        """Any mix of text, image and embedding queries: one :class:`SearchResult` per query."""
        if isinstance(queries, SearchQuery):
            raise TypeError("search() takes a list of SearchQuery objects; wrap one query in a list")
        return search_batch(list(queries), self.indices, self.encoder)

    def texts(self, queries: list[str], k: int = 5, filters: dict | None = None) -> list[list[SearchHit]]:
        """Batched text-to-image search: one hit list per query, best first."""
        if isinstance(queries, str):
            raise TypeError("texts() takes a list of strings; use text() for one query")
        if not queries:
            raise ValueError("texts() got no queries (an empty query list); pass e.g. ['a red circle']")
        return [r.hits for r in self.search([SearchQuery(text=q, k=k, filters=filters) for q in queries])]

    def text(self, query: str, k: int = 5, filters: dict | None = None) -> list[SearchHit]:
        """Text-to-image search for one query."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        return self.texts([query], k, filters)[0]

    def image(self, image: np.ndarray | bytes | str | Path, k: int = 5, filters: dict | None = None) -> list[SearchHit]:
        """Image-to-image search: an ``(H, W, 3)`` uint8 array, encoded image bytes, or a file path."""
        from raylens.data.images import decode_image

        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"query image {str(path)!r} does not exist")
            image = path.read_bytes()
        if isinstance(image, (bytes, bytearray)):
            image = decode_image(bytes(image))
        return self.search([SearchQuery(image=np.asarray(image), k=k, filters=filters)])[0].hits

    def embedding(self, vector: np.ndarray | list[float], k: int = 5, filters: dict | None = None) -> list[SearchHit]:
        """Search by a query vector (e.g. one from :meth:`ClipModel.encode_texts`)."""
        return self.search([SearchQuery(embedding=vector, k=k, filters=filters)])[0].hits
