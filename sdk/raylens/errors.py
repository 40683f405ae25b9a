"""The raylens error hierarchy.

Input mistakes at an API boundary raise ``ValueError``/``TypeError`` with a message that names the
input and the fix. Runtime failures raise a :class:`RaylensError` subclass.

Every class pickles with its message and attributes (``__reduce__``, as Ray Train's exceptions do),
so an error raised in a Ray worker or a Serve replica reaches the caller as the same exception. Each
class also says what an HTTP service answers when the error reaches a client: ``status_code`` and a
short machine ``code`` (:func:`raylens.serve.limits.error_response` is the one place that turns an
exception into the JSON error body). A status of 500 means "a fault on our side": the client gets no
details; any other status sends the message to the client, so it must name the fix.

>>> import pickle
>>> err = pickle.loads(pickle.dumps(UnknownIndexError("no index named 'x'; open ones: ['natural']")))
>>> type(err).__name__, err.status_code, err.code, str(err)
('UnknownIndexError', 404, 'unknown_index', "no index named 'x'; open ones: ['natural']")
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "RaylensError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "UnknownIndexError",
    "NotReadyError",
    "NoIndexError",
    "IngestError",
    "CheckpointError",
]


class RaylensError(RuntimeError):
    """Base class of the runtime errors raylens raises."""

    status_code: ClassVar[int] = 500
    """The HTTP status a service answers with (500: a server fault, answered without details)."""
    code: ClassVar[str] = "internal_error"
    """A short machine-readable reason, the ``code`` of the JSON error body."""

    def __reduce__(self):
        # args rebuild the instance; __dict__ restores attributes set after __init__
        return (type(self), self.args, self.__dict__ or None)


class IndexNotFoundError(RaylensError, FileNotFoundError):
    """No index directory (or no manifest in it) where one was expected."""


class IndexMismatchError(RaylensError):
    """An index was built with another model (or dim) than the one asked to query it."""

    status_code = 409
    code = "index_mismatch"


class UnknownIndexError(RaylensError, LookupError):
    """A query names an index that is not open."""

    status_code = 404
    code = "unknown_index"


class NotReadyError(RaylensError):
    """A service cannot answer yet: a part it needs (a model, an index) is not configured or loaded."""

    status_code = 503
    code = "not_ready"


class NoIndexError(NotReadyError):
    """A search asked for the default index and no index is open."""

    code = "no_index"


class IngestError(RaylensError):
    """An ingest could not produce a single usable row."""


class CheckpointError(RaylensError):
    """A checkpoint directory is missing, incomplete or for another model."""
