"""Greedy batching: a batch is whatever queued while the previous one ran.

`@serve.batch` waits its full `batch_wait_timeout_s` unless a batch fills, so a lone request pays
the wait. Here a worker takes the first request as soon as it arrives, adds every request already
queued (up to `max_batch_size`), completes it on the event loop (`prepare`: the online features,
an async read) and runs it in a thread (ONNX Runtime releases the GIL) or, when it is known to be
quick, on the loop. Under load, batches grow by themselves; idle, a
request waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GreedyBatcher(Generic[T, R]):
    """Runs `fn(items) -> results` (one result per item, in order) on batches of submitted items.

    A batch runs in a worker thread, or on the event loop itself where `inline(items)` says so (a
    batch known to take a fraction of a millisecond costs less than the two thread switches).
    `prepare(items)`, awaited on the event loop first, may return the items completed (the online
    features of a batch, read by an async client without a thread).
    An exception of `fn` fails every item of its batch; the worker goes on with the next batch.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        max_batch_size: int,
        inline: Callable[[Sequence[T]], bool] | None = None,
        prepare: Callable[[Sequence[T]], Awaitable[Sequence[T]]] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.fn = fn
        self.inline = inline
        self.prepare = prepare
        self.max_batch_size = max_batch_size
        self.queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """The item's result, once its batch has run."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work())
        return await future

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """The results of several items, queued together (so they share batches)."""
        return list(await asyncio.gather(*(self.submit(i) for i in items)))

    def take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """What is queued now, up to a batch, without waiting."""
        batch: list[tuple[T, asyncio.Future[R]]] = []
        while len(batch) < self.max_batch_size and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _work(self) -> None:
        while not self.queue.empty():
            batch = [entry for entry in self.take() if not entry[1].done()]  # a cancelled caller is skipped
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            items: Sequence[T] = [item for item, _ in batch]
            try:
                if self.prepare is not None:
                    items = await self.prepare(items)
                if self.inline is not None and self.inline(items):
                    results = self.fn(items)
                    await asyncio.sleep(0)  # let the callers and the next requests run
                else:
                    results = await asyncio.to_thread(self.fn, items)
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} items")
            except Exception as err:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def stats(self) -> dict[str, Any]:
        return {
            "queued": self.queue.qsize(),
            "batches": self.batches,
            "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
        }
