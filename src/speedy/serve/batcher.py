"""Dynamic batching: requests that arrive together are answered by one model call.

Each request puts its items on a queue and awaits a future. One worker task takes the first waiting item, then
keeps taking items until ``max_batch`` are gathered or ``max_wait`` seconds have passed since the first, runs the
batch in a worker thread (the model call releases the GIL, the event loop keeps accepting requests), and sets
each future (with an exception for an input that ``run_batch`` returns one for). A future whose client has gone
away is simply skipped. A batch that fails is run again one input at a time, so that an input the model cannot
take fails its own request only, never its neighbours nor the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class InputFailed(Exception):
    """The input at ``index`` of a request could not be answered: ``error`` says why."""

    def __init__(self, index: int, error: Exception):
        super().__init__(f"inputs[{index}]: {error}")
        self.index, self.error = index, error


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    busy_seconds: float = 0.0
    sizes: list[int] = field(default_factory=list)

    def add(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.busy_seconds += seconds
        self.sizes = (self.sizes + [size])[-1000:]


class DynamicBatcher:
    def __init__(self, run_batch: Callable[[list], list], max_batch: int = 32, max_wait: float = 0.005):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.stats = BatchStats()

    async def start(self) -> None:
        """Start the worker on the running event loop (again, if the app now runs on another loop)."""
        loop = asyncio.get_running_loop()
        if self.worker is None or self.worker.done() or self.worker.get_loop() is not loop:
            self.queue = asyncio.Queue()
            self.worker = loop.create_task(self._work())

    async def stop(self) -> None:
        """Finish every item already queued, then stop."""
        if self.worker is None:
            return
        await self.queue.join()
        self.worker.cancel()
        try:
            await self.worker
        except asyncio.CancelledError:
            pass
        self.worker = None

    async def submit(self, items: list) -> list:
        """The results of ``items``, in order (they may be answered in different batches); ``InputFailed`` names
        the first input that could not be answered."""
        await self.start()
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            future = loop.create_future()
            futures.append(future)
            await self.queue.put((item, future))
        results = await asyncio.gather(*futures, return_exceptions=True)
        for index, result in enumerate(results):
            if isinstance(result, Exception):
                raise InputFailed(index, result) from result
        return results

    async def _gather(self) -> list:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._gather()
            live = [(item, future) for item, future in batch if not future.done()]  # cancelled: client gone
            try:
                if live:
                    await self._answer(live)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _answer(self, live: list) -> None:
        try:
            start = time.perf_counter()
            results = await asyncio.to_thread(self.run_batch, [item for item, _ in live])
            self.stats.add(len(live), time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 - the requests get the error, the worker lives on
            if len(live) > 1:  # one input may fail a whole batch: only a failure of its own is its request's
                for one in live:
                    if not one[1].done():
                        await self._answer([one])
            elif not live[0][1].done():
                live[0][1].set_exception(error)
            return
        for (_, future), result in zip(live, results):
            if not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
