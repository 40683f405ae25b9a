"""The search service's retry rule (raylens_services.retry), with Ray's real exception types: only a
replica's death is retried, a bounded number of times; any other error is the answer."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import ReplicaUnavailableError

from raylens_services.retry import RETRIES_ENV, call_async, call_sync, replica_died


def _task_error_from(cause: BaseException) -> BaseException:
    return RayTaskError("IndexServer.search", "traceback", cause)


def test_replica_death_is_recognised_directly_and_through_a_deployment():
    assert replica_died(ActorDiedError())
    assert replica_died(ActorUnavailableError("node lost", b"\0" * 16))
    assert replica_died(ReplicaUnavailableError("r1"))
    assert replica_died(_task_error_from(ActorDiedError()))  # the embedder died under the index deployment
    wrapped = RuntimeError("upstream")
    wrapped.__cause__ = ActorDiedError()
    assert replica_died(wrapped)
    assert not replica_died(ValueError("k must be >= 1"))
    assert not replica_died(_task_error_from(ValueError("unknown index")))


class _Flaky:
    """Fails with ``error`` the first ``failures`` calls, then answers."""

    def __init__(self, failures: int, error: BaseException):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "answer"


def test_sync_calls_are_sent_again_after_a_replica_death(monkeypatch):
    monkeypatch.delenv(RETRIES_ENV, raising=False)
    flaky = _Flaky(2, ActorDiedError())
    assert call_sync(flaky, "embed") == "answer" and flaky.calls == 3  # default: 2 retries
    flaky = _Flaky(3, ActorDiedError())
    with pytest.raises(ActorDiedError):
        call_sync(flaky, "embed")
    assert flaky.calls == 3
    flaky = _Flaky(1, ValueError("bad query"))
    with pytest.raises(ValueError):
        call_sync(flaky, "embed")
    assert flaky.calls == 1  # an answer, not a death: never sent again


def test_async_calls_retry_and_the_env_turns_it_off(monkeypatch):
    flaky = _Flaky(1, _task_error_from(ActorDiedError()))

    async def make():
        return flaky()

    assert asyncio.run(call_async(make, "search")) == "answer" and flaky.calls == 2
    monkeypatch.setenv(RETRIES_ENV, "0")
    flaky = _Flaky(1, ActorDiedError())
    with pytest.raises(ActorDiedError):
        asyncio.run(call_async(make, "search"))
    assert flaky.calls == 1
    monkeypatch.setenv(RETRIES_ENV, "lots")
    with pytest.raises(ValueError, match="RAYLENS_SERVE_RETRIES must be a whole number"):
        call_sync(lambda: 1, "x")
