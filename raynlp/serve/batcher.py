"""Dynamic batching for one model in a replica: texts from concurrent requests share one model call.

One call runs at a time, and the next batch is formed only when it ends, from every text that queued meanwhile
(up to `max_batch_size`); a batch that is not full waits up to `wait_timeout_s` from its first text for more.
So the busier the model, the larger its batches. Ray Serve's `@serve.batch` (Ray 2.60) forms each batch as soon
as its wait ends, also while the previous batch's call still runs, and queues it behind that call: under load its
batches hold what arrived within one wait, a text or two, however many texts are waiting.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """`await batcher(item)` → `call`'s result for that item, where `call(items)` returns one result per item, in
    order. An error raised by `call` reaches every caller of that batch; the next batch runs as usual."""

    def __init__(self, call: Callable[[list[Item]], Awaitable[list[Result]]], *, max_batch_size: int,
                 wait_timeout_s: float):
        if max_batch_size < 1 or wait_timeout_s < 0:
            raise ValueError(f"max_batch_size must be at least 1 and wait_timeout_s not negative, not "
                             f"{max_batch_size} and {wait_timeout_s}")
        self._call, self.max_batch_size, self.wait_timeout_s = call, max_batch_size, wait_timeout_s
        # Made on first use, on the event loop that serves the requests (not the one that built the replica).
        self._queue: asyncio.Queue | None = None
        self._loop_task: asyncio.Task | None = None

    async def __call__(self, item: Item) -> Result:
        if self._loop_task is None or self._loop_task.done():
            self._queue = asyncio.Queue()
            self._loop_task = asyncio.get_running_loop().create_task(self._serve_batches())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _serve_batches(self) -> None:
        while True:
            batch = await self._next_batch()
            batch = [(item, future) for item, future in batch if not future.cancelled()]
            if not batch:
                continue
            try:
                results = await self._call([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch call returned {len(results)} results for {len(batch)} items")
            except Exception as error:  # every caller of the batch hears of it; the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def _next_batch(self) -> list:
        """Every item queued (up to max_batch_size), waiting for the first one, then for more until the batch is
        full or wait_timeout_s has passed since the first."""
        queue, loop = self._queue, asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.wait_timeout_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch
