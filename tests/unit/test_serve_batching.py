"""raylens.serve.batching: adaptive batches (no wait when idle, batches grow under load, errors per item)."""

from __future__ import annotations

import asyncio
import time

import pytest

from raylens.serve.batching import AdaptiveBatcher


class Recorder:
    """A batch function that records the batches it ran and takes ``delay_s`` each."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.batches: list[list] = []

    async def __call__(self, items):
        self.batches.append(list(items))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return [ValueError(f"bad {x}") if x == "bad" else (x, len(items)) for x in items]


def test_an_idle_batcher_runs_a_call_at_once_even_with_a_wait_set():
    async def main():
        rec = Recorder()
        b = AdaptiveBatcher(rec, max_batch_size=32, max_wait_s=2.0)
        t = time.perf_counter()
        out = await b.submit("a")
        return out, time.perf_counter() - t, rec.batches

    out, took, batches = asyncio.run(main())
    assert out == ("a", 1) and batches == [["a"]]
    assert took < 0.5  # no batching wait (max_wait_s applies only while other batches run)


def test_calls_that_queue_behind_a_running_batch_leave_together():
    async def main():
        rec = Recorder(delay_s=0.05)
        b = AdaptiveBatcher(rec, max_batch_size=4, max_concurrent=1)
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.01)  # the first batch is running
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 10)]
        await asyncio.gather(first, *rest)
        return rec.batches, b.stats()

    batches, stats = asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]  # max_batch_size, in arrival order
    assert stats["batches"] == 4 and stats["items"] == 10 and stats["queued"] == 0 and stats["running"] == 0


def test_each_caller_gets_its_own_outcome_and_its_own_error():
    async def main():
        b = AdaptiveBatcher(Recorder(delay_s=0.01), max_batch_size=8, max_concurrent=1)
        return await asyncio.gather(*(b.submit(x) for x in ["a", "bad", "c"]), return_exceptions=True)

    a, bad, c = asyncio.run(main())
    assert a[0] == "a" and c[0] == "c"
    assert isinstance(bad, ValueError) and str(bad) == "bad bad"


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    calls = []

    async def flaky(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("the index replica is gone")
        return [x * 10 for x in items]

    async def main():
        b = AdaptiveBatcher(flaky, max_batch_size=8)
        first = await asyncio.gather(b.submit(1), return_exceptions=True)
        return first, await b.submit(2)

    (first,), second = asyncio.run(main())
    assert isinstance(first, RuntimeError) and second == 20


def test_a_wrong_number_of_outcomes_is_an_error_for_every_caller():
    async def short(items):
        return items[:-1]

    async def main():
        b = AdaptiveBatcher(short, max_batch_size=8, max_concurrent=1)
        return await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)

    out = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) and "outcomes" in str(o) for o in out)


def test_a_caller_that_gave_up_leaves_its_batch():
    async def main():
        rec = Recorder(delay_s=0.05)
        b = AdaptiveBatcher(rec, max_batch_size=8, max_concurrent=1)
        first = asyncio.ensure_future(b.submit("first"))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.submit("impatient"), 0.01)  # times out while queued
        assert (await b.submit("kept"))[0] == "kept"
        await first
        return rec.batches

    assert asyncio.run(main()) == [["first"], ["kept"]]


def test_a_busy_batcher_may_linger_for_company():
    async def main():
        rec = Recorder(delay_s=0.2)
        b = AdaptiveBatcher(rec, max_batch_size=8, max_concurrent=2, max_wait_s=0.1)
        first = asyncio.ensure_future(b.submit("busy"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(b.submit("x"))  # a slot is free, but another batch runs: it lingers
        await asyncio.sleep(0.03)
        third = asyncio.ensure_future(b.submit("y"))
        await asyncio.gather(first, second, third)
        return rec.batches

    assert asyncio.run(main()) == [["busy"], ["x", "y"]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_wait_s": -1}, "max_wait_s"),
        ({"max_batch_size": True}, "max_batch_size"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveBatcher(Recorder(), **kwargs)


def test_from_config_reads_a_services_batch_settings():
    b = AdaptiveBatcher.from_config(
        Recorder(), {"max_batch_size": 4, "batch_wait_timeout_s": 0.01, "max_concurrent_batches": 3}
    )
    assert (b.max_batch_size, b.max_wait_s, b.max_concurrent) == (4, 0.01, 3)
    d = AdaptiveBatcher.from_config(Recorder(), None, max_batch_size=16)
    assert (d.max_batch_size, d.max_wait_s, d.max_concurrent) == (16, 0.0, 2)
    with pytest.raises(ValueError, match="unknown batch setting"):
        AdaptiveBatcher.from_config(Recorder(), {"max_batch": 4})
