"""Dynamic batching for one model in a replica: texts from concurrent requests share one model call.

One call runs at a time, and the next batch is formed only when it ends, from the texts that queued meanwhile (up
to `max_batch_size`); a batch that is not full waits for more until `wait_timeout_s` after its first text
arrived, so texts that already waited out a call go at once. The busier the model, the larger its batches.
Ray Serve's `@serve.batch` (Ray 2.60) forms each batch as soon as its wait ends, also while the previous batch's
call still runs, and queues it behind that call: under load its batches hold what arrived within one wait,
however many texts are waiting.
"""

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class Batcher:
    """`await batcher(item)` → `call`'s result for that item, where `call(items)` returns one result per item, in
    order. An error raised by `call` reaches every caller of that batch; the next batch runs as usual.
    `on_queue_length(n)`, where given, hears how many items wait for a call (`queued`) each time an item arrives
    and each time a batch is formed."""

    def __init__(self, call: Callable[[list], Awaitable[list]], *, max_batch_size: int, wait_timeout_s: float,
                 on_queue_length: Callable[[int], None] | None = None):
        if max_batch_size < 1 or wait_timeout_s < 0:
            raise ValueError(f"max_batch_size must be at least 1 and wait_timeout_s not negative, not "
                             f"{max_batch_size} and {wait_timeout_s}")
        self._call, self.max_batch_size, self.wait_timeout_s = call, max_batch_size, wait_timeout_s
        self._on_queue_length = on_queue_length or (lambda n: None)
        # Made on first use, inside the event loop that serves the requests (there is none at construction in
        # every caller, and a test's `asyncio.run` makes a loop of its own).
        self._queue: asyncio.Queue | None = None
        self._loop_task: asyncio.Task | None = None

    async def __call__(self, item):
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._loop_task is None or self._loop_task.done():
            # In a context of its own: not the first caller's (Serve's request id would stamp every later batch).
            self._loop_task = loop.create_task(self._serve_batches(), context=contextvars.Context())
        future = loop.create_future()
        self._queue.put_nowait((item, future, loop.time()))
        self._report_queue_length()
        return await future

    @property
    def queued(self) -> int:
        """Items waiting for a call (not those of a batch being formed or run)."""
        return self._queue.qsize() if self._queue is not None else 0

    def _report_queue_length(self) -> None:
        try:
            self._on_queue_length(self.queued)
        except Exception:  # a metrics hook must not stop the batches nor fail a caller
            logger.exception("the batcher's on_queue_length hook failed")

    async def _serve_batches(self) -> None:
        while True:
            batch = [(item, future) for item, future, _ in await self._next_batch() if not future.cancelled()]
            self._report_queue_length()
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
            except BaseException:  # this loop is being stopped: its callers must not wait for ever
                for _, future in batch:
                    future.cancel()
                raise
            for (_, future), result in zip(batch, results):
                if not future.done():  # its caller may have gone meanwhile
                    future.set_result(result)

    async def _next_batch(self) -> list[tuple]:
        """The queued items, up to max_batch_size: waiting for a first one, then for more until the batch is full
        or wait_timeout_s has passed since the first was queued."""
        queue, loop = self._queue, asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = batch[0][2] + self.wait_timeout_s
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
