"""Adaptive batching: concurrent calls run together, and a call that finds the batcher idle never waits.

Serve's ``@serve.batch`` holds every batch open for ``batch_wait_timeout_s`` after its first item,
so at low load each request pays that wait and gains nothing. :class:`AdaptiveBatcher` forms
batches from what queued up while earlier batches ran instead: a call arriving when a batch slot is
free starts a batch of one at once; calls arriving while all ``max_concurrent`` slots are busy wait
in the queue and leave together, up to ``max_batch_size`` at a time, as soon as a slot frees. Under
load the batches grow by themselves, with no timer. ``max_wait_s`` (default 0) lets a batch that
would start while others still run linger that long for company; a batch that starts on an idle
batcher never lingers.

Plain asyncio (no Ray): the search ingress batches its queries with it before one call to the index
deployment, and the index deployment batches the single searches it is sent.

>>> import asyncio
>>> async def double(xs):
...     return [2 * x for x in xs]
>>> async def main():
...     b = AdaptiveBatcher(double, max_batch_size=8)
...     return await asyncio.gather(*(b.submit(i) for i in range(5)))
>>> asyncio.run(main())
[0, 2, 4, 6, 8]
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["AdaptiveBatcher", "BATCH_KEYS"]

BATCH_KEYS = ("max_batch_size", "max_concurrent_batches", "batch_wait_timeout_s")
"""The keys of a service's ``batch`` settings (:meth:`AdaptiveBatcher.from_config`)."""

T = TypeVar("T")
R = TypeVar("R")


class AdaptiveBatcher(Generic[T, R]):
    """Batches concurrent :meth:`submit` calls into calls of ``fn`` (see the module docstring).

    ``fn(items)`` returns one outcome per item, in order; an outcome that is an ``Exception`` is
    raised to that item's caller only. An exception ``fn`` itself raises goes to every caller of the
    batch. A caller that stops waiting (a timeout cancels it) leaves the batch; a batch whose callers
    all left before it started is not run.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Awaitable[list[R | Exception]]],
        *,
        max_batch_size: int = 32,
        max_concurrent: int = 2,
        max_wait_s: float = 0.0,
    ):
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_concurrent = max_concurrent
        self.max_wait_s = max_wait_s
        self._queue: collections.deque[tuple[T, asyncio.Future]] = collections.deque()
        self._running = 0
        self._tasks: set[asyncio.Task] = set()
        self._arrived: asyncio.Event | None = None
        self.batches = 0
        """Batches run so far."""
        self.items = 0
        """Items run so far (``items / batches``: the mean batch size)."""

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @max_batch_size.setter
    def max_batch_size(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {n!r}")
        self._max_batch_size = n

    @property
    def max_concurrent(self) -> int:
        return self._max_concurrent

    @max_concurrent.setter
    def max_concurrent(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_concurrent must be an int >= 1 (batches in flight at once), got {n!r}")
        self._max_concurrent = n

    @property
    def max_wait_s(self) -> float:
        return self._max_wait_s

    @max_wait_s.setter
    def max_wait_s(self, s: float) -> None:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 10:
            raise ValueError(f"max_wait_s must be a number of seconds from 0 to 10, got {s!r}")
        self._max_wait_s = float(s)

    @property
    def queued(self) -> int:
        """Calls waiting for a batch slot."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Batches in flight."""
        return self._running

    async def submit(self, item: T) -> R:
        """``item``'s outcome, run in a batch with whatever else is queued when a slot frees."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._arrived is not None:
            self._arrived.set()
        self._start()
        result = await fut
        if isinstance(result, Exception):
            raise result
        return result

    def _start(self) -> None:
        while self._queue and self._running < self._max_concurrent:
            self._running += 1
            linger = self._max_wait_s if self._running > 1 else 0.0  # idle: go now; busy: may wait for company
            task = asyncio.get_running_loop().create_task(self._run(linger))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[tuple[T, asyncio.Future]]:
        batch: list[tuple[T, asyncio.Future]] = []
        while self._queue and len(batch) < self._max_batch_size:
            item, fut = self._queue.popleft()
            if not fut.done():  # a caller that gave up (cancelled) leaves the batch
                batch.append((item, fut))
        return batch

    async def _linger(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while len(self._queue) < self._max_batch_size and (left := deadline - loop.time()) > 0:
            self._arrived = self._arrived or asyncio.Event()
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break

    async def _run(self, linger: float) -> None:
        try:
            if linger > 0:
                await self._linger(linger)
            batch = self._take()
            if not batch:
                return
            self.batches += 1
            self.items += len(batch)
            try:
                outcomes = await self.fn([item for item, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(outcomes)} outcomes for {len(batch)} items")
            except Exception as exc:  # the whole batch failed: every caller gets the error
                outcomes = [exc] * len(batch)
            except BaseException as exc:  # cancelled (the replica is shutting down): callers learn it too
                for _, fut in batch:
                    if not fut.done():
                        fut.cancel()
                raise exc
            for (_, fut), outcome in zip(batch, outcomes):
                if not fut.done():
                    fut.set_result(outcome)
        finally:
            self._running -= 1
            self._start()

    @classmethod
    def from_config(
        cls,
        fn: Callable[[list[T]], Awaitable[list[R | Exception]]],
        config: dict[str, Any] | None,
        *,
        max_batch_size: int = 32,
        max_concurrent: int = 2,
        max_wait_s: float = 0.0,
    ) -> AdaptiveBatcher[T, R]:
        """A batcher over ``fn`` from a service's ``batch`` settings: ``max_batch_size``,
        ``max_concurrent_batches`` and ``batch_wait_timeout_s`` (the linger of :attr:`max_wait_s`);
        the keyword arguments are the defaults of the keys not given."""
        config = dict(config or {})
        unknown = set(config) - set(BATCH_KEYS)
        if unknown:
            raise ValueError(f"unknown batch setting(s) {sorted(unknown)}; use {list(BATCH_KEYS)}")
        return cls(
            fn,
            max_batch_size=config.get("max_batch_size", max_batch_size),
            max_concurrent=config.get("max_concurrent_batches", max_concurrent),
            max_wait_s=config.get("batch_wait_timeout_s", max_wait_s),
        )

    def stats(self) -> dict[str, Any]:
        """Batches run, items run, the mean batch size, and the calls queued and batches in flight now."""
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_size": round(self.items / self.batches, 2) if self.batches else None,
            "queued": self.queued,
            "running": self.running,
        }
