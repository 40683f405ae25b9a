"""Errors cross processes and deployments as themselves: every raylens error pickles (with pickle and
with Ray's cloudpickle), maps to one JSON error, and a client's mistake is not logged as a replica ERROR."""

from __future__ import annotations

import io
import logging
import pickle

import pytest

import raylens.errors
import raylens.index.errors
import raylens.serve.limits
import raylens_domains.medical.errors
from raylens.errors import IndexMismatchError, RaylensError, UnknownIndexError
from raylens.serve.limits import ServeError, error_response, unwrap_remote_error
from raylens.serve.observe import ClientErrorLogFilter, quiet_client_errors

MODULES = (raylens.errors, raylens.index.errors, raylens.serve.limits, raylens_domains.medical.errors)


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


ERROR_TYPES = sorted(
    {c for c in [RaylensError, *_all_subclasses(RaylensError)] if c.__module__.startswith(("raylens", "raylens_"))},
    key=lambda c: f"{c.__module__}.{c.__qualname__}",
)


def _make(cls: type) -> BaseException:
    err = cls(409, "conflict", "index 'x' was swapped") if issubclass(cls, ServeError) else cls("index 'x' is bad")
    err.detail = {"path": "runs/x", "n": 3}  # an attribute set after __init__ travels too
    return err


def test_every_module_error_is_listed():
    names = {c.__name__ for c in ERROR_TYPES}
    for module in MODULES:
        exported = {n for n in module.__all__ if isinstance(getattr(module, n), type)}
        assert {n for n in exported if issubclass(getattr(module, n), BaseException)} <= names, module.__name__
    assert len(ERROR_TYPES) >= 16


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda c: c.__name__)
def test_every_error_type_survives_pickling(cls):
    from ray import cloudpickle  # what Ray uses to ship an exception from a worker or replica

    err = _make(cls)
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        back = loads(dumps(err))
        assert type(back) is cls and str(back) == str(err) and back.args == err.args
        assert back.detail == {"path": "runs/x", "n": 3}
        assert (back.status_code, back.code) == (err.status_code, err.code)
        assert error_response(back) == error_response(err)


def test_an_error_raised_in_a_replica_maps_as_itself():
    """Ray hands the caller a RayTaskError that is also an instance of the error; its cause is the error."""
    from ray.exceptions import RayTaskError

    cause = UnknownIndexError("no index named 'x'; open ones: ['natural']")
    wrapped = RayTaskError("IndexServer.search", "Traceback ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, UnknownIndexError) and unwrap_remote_error(wrapped) is cause
    assert error_response(wrapped) == (
        404,
        {"error": {"status": 404, "code": "unknown_index", "message": "no index named 'x'; open ones: ['natural']"}},
    )
    served = RayTaskError(
        "Classifier.predict", "tb", ServeError(503, "not_ready", "no checkpoint")
    ).as_instanceof_cause()
    assert error_response(served)[0] == 503


@pytest.mark.parametrize(
    "exc,status,code",
    [
        (ServeError(401, "unauthorized", "key"), 401, "unauthorized"),
        (UnknownIndexError("x"), 404, "unknown_index"),
        (IndexMismatchError("x"), 409, "index_mismatch"),
        (ValueError("bad k"), 422, "invalid_input"),
        (TypeError("bad type"), 422, "invalid_input"),
        (RaylensError("/secret"), 500, "internal_error"),
        (KeyError("x"), 500, "internal_error"),
    ],
)
def test_one_mapping_to_the_json_error(exc, status, code):
    got_status, body = error_response(exc)
    assert (got_status, body["error"]["status"], body["error"]["code"]) == (status, status, code)
    if status == 500:
        assert body["error"]["message"] == "internal error"


def _replica_log(exc: BaseException) -> tuple[list[logging.LogRecord], str]:
    """Log ``exc`` the way Serve's replica does (``logger.exception("Request failed.")``), filtered."""
    logger = logging.getLogger("raylens.test.replica")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append
    logger.handlers = [handler, keep]
    quiet_client_errors("raylens.test.replica")
    try:
        raise exc
    except Exception:
        logger.exception("Request failed.")
    return records, stream.getvalue()


def test_client_mistakes_are_one_info_line_and_faults_stay_errors():
    records, text = _replica_log(pickle.loads(pickle.dumps(UnknownIndexError("no index named 'x'"))))
    assert [r.levelno for r in records] == [logging.INFO]
    assert text == "INFO Request refused (404 unknown_index): no index named 'x'\n"  # no traceback
    records, text = _replica_log(ValueError("`embedding` has 3 numbers"))
    assert records[0].levelno == logging.INFO and "422 invalid_input" in text and "Traceback" not in text
    records, text = _replica_log(RuntimeError("faiss crashed"))
    assert records[0].levelno == logging.ERROR and "Traceback" in text and "faiss crashed" in text
    records, text = _replica_log(ServeError(503, "not_ready", "no checkpoint"))
    assert records[0].levelno == logging.ERROR  # the service is broken: an operator must see it
    logger = logging.getLogger("raylens.test.replica")
    assert quiet_client_errors("raylens.test.replica") is quiet_client_errors("raylens.test.replica")
    assert sum(isinstance(f, ClientErrorLogFilter) for f in logger.filters) == 1
