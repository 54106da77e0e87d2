"""Server-side batching for an asyncio server: what TorchServe's batchSize / maxBatchDelay do.

Requests that arrive within `max_delay_s` of the first one waiting (up to `max_size`) are
answered by one call of `answer_batch`, run in one worker thread so the event loop keeps
accepting requests while the model runs. Each caller gets its own item of the answer.
With max_delay_s = 0 batching is greedy: a batch is whatever queued up while the previous one
ran, so a lone request never waits (the measured best for the kserve predictor,
docs/deployment.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(self, answer_batch: Callable[[list[In]], list[Out]], max_size: int = 8, max_delay_s: float = 0.005):
        if max_size < 1 or max_delay_s < 0:
            raise ValueError("max_size must be at least 1 and max_delay_s not negative")
        self.answer_batch = answer_batch
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self.batch_sizes: list[int] = []  # for tests and logs: how the requests were grouped
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def answer(self, item: In) -> Out:
        """The answer for one item, computed in a batch with whatever arrived alongside it."""
        if self._queue is None:  # created lazily, inside the server's running event loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_delay_s
            while len(batch) < self.max_size:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            self.batch_sizes.append(len(batch))
            try:
                answers = await loop.run_in_executor(self._executor, self.answer_batch, [item for item, _ in batch])
            except Exception as err:  # a bug in answer_batch fails this batch's callers, not the server
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():  # the caller may have gone (client disconnect)
                    future.set_result(answer)
