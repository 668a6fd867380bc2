"""Dynamic batching: concurrent requests share model calls, all made on one worker thread.

Each request becomes a job (its lines, how many translations each line needs, an asyncio future) in one
queue. One worker thread makes every translation call. It takes the oldest job, waits at most `max_wait` seconds for
company, adds the waiting jobs that fit the token budget and use the same beam, translates all their lines
in one `translate_nbest` call, and hands every job its share back on its event loop. So:

- the event loop never runs the model: it keeps accepting requests while a batch is translated;
- translations never run on two threads at once: one batched call at a time has the CPU's cores to itself;
- an idle server makes a lone request wait at most `max_wait` for company;
- a busy one expects the clients it just answered back: their next requests come within milliseconds, but
  while the next batch runs they would wait for all of it, and the batches would split into halves that take
  turns. So after a batch the worker waits (at most COMEBACK · `max_wait`) until as many lines are queued as
  that batch had. Batches grow with the load, up to the token budget, which bounds the time and memory of
  one call.

Other work for the model (explain traces, `call`) runs on a second thread of its own, one call at a time, at
most `max_calls` waiting: a trace takes seconds, and translations must not wait behind it. The two threads
share the model safely: in inference its forward only reads the weights (packed once at warm-up) and keeps
its caches per call.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

COMEBACK = 4  # after a batch, its clients get up to this many max_waits to come back before the next one starts
TranslateFn = Callable[[list[str], int], list[list[Any]]]  # (lines, nbest) → per line its n-best list
CostFn = Callable[[str], int]  # a line → its source tokens


class QueueFull(Exception):
    """More work is waiting than the server queues; the client should retry later."""

    def __init__(self, queued: int, limit: int, what: str = "lines") -> None:
        super().__init__(f"the server is busy: {queued} {what} are waiting (at most {limit}); retry shortly")


class BatcherClosed(Exception):
    """The server is shutting down and takes no new work."""


@dataclass(eq=False)
class _Job:
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    lines: list[str]
    nbest: int
    group: int  # jobs share a model call only within a group: the beam the translator will use
    enqueued: float = field(default_factory=time.monotonic)
    cost: int = -1  # source tokens, counted by the worker when it first considers the job


class Batcher:
    """The queue and its worker thread. `translate(lines, nbest)` and `call(fn)` are awaited on the event loop."""

    def __init__(self, translate: TranslateFn, cost: CostFn, *, beam: int, batch_tokens: int, max_wait: float,
                 max_queue: int, max_calls: int = 4, on_batch: Callable[[int, float], None] | None = None,
                 on_start: Callable[[], None] | None = None) -> None:
        self._translate, self._cost, self._beam = translate, cost, beam
        self.batch_tokens, self.max_wait, self.max_queue, self.max_calls = batch_tokens, max_wait, max_queue, max_calls
        self._side = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zhen-serve-calls")
        self._calls = 0  # calls waiting or running; changed on the event loop only
        self._on_batch = on_batch or (lambda lines, seconds: None)
        self._on_start = on_start or (lambda: None)  # run first on the worker thread (its CPU threads)
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued = 0  # lines in self._jobs
        self._running = 0  # lines in the model call under way
        self._ready = threading.Condition()
        self._free_since = 0.0  # when the worker finished its last batch (time.monotonic)
        self._last_lines = 0  # lines in that batch
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="zhen-serve-model", daemon=True)

    # ------------------------------------------------------------------ the event loop's side

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        """Lines waiting for the model (not counting the batch being translated)."""
        return self._queued

    @property
    def running(self) -> int:
        """Lines in the model call under way."""
        return self._running

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    async def translate(self, lines: Sequence[str], nbest: int = 1) -> list[list[Any]]:
        """Each line's `nbest` best translations, best first, as `Translator.translate_nbest` gives them."""
        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future(), loop, list(lines), nbest, max(self._beam, nbest))
        return await self._submit(job)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the second thread (one call at a time, beside the translations) and return its result."""
        if self._closing:
            raise BatcherClosed("the server is shutting down")
        if self._calls >= self.max_calls:
            raise QueueFull(self._calls, self.max_calls, "explain requests")
        self._calls += 1
        try:
            return await asyncio.wrap_future(self._side.submit(fn))
        finally:
            self._calls -= 1

    def close(self, timeout: float | None = None) -> None:
        """Take no new jobs, finish the queued ones and the calls, and stop both threads."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._side.shutdown(wait=True)

    async def _submit(self, job: _Job) -> Any:
        with self._ready:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            # A lone job larger than the limit still goes through when nothing else waits.
            if self._queued and self._queued + len(job.lines) > self.max_queue:
                raise QueueFull(self._queued, self.max_queue)
            self._jobs.append(job)
            self._queued += len(job.lines)
            self._ready.notify()
        return await job.future

    # ------------------------------------------------------------------ the worker thread's side

    def _work(self) -> None:
        self._on_start()
        while batch := self._take():
            self._execute(batch)
            self._free_since = time.monotonic()

    def _take(self) -> list[_Job]:
        """The next batch: jobs of the oldest job's group within the token budget. Blocks until there is work;
        [] once closing and empty."""
        with self._ready:
            while not self._jobs and not self._closing:
                self._ready.wait()
            if not self._jobs:
                return []
            first = self._jobs[0]
            deadline, expected = self._company(first)
            while True:
                batch, full = self._fitting(first.group)
                enough = sum(len(job.lines) for job in batch) >= expected
                remaining = deadline - time.monotonic()
                if full or enough or remaining <= 0 or self._closing:
                    break
                self._ready.wait(remaining)  # a new job notifies: see whether it fits
            for job in batch:
                self._jobs.remove(job)
                self._queued -= len(job.lines)
            return batch

    def _company(self, first: _Job) -> tuple[float, float]:
        """Until when to wait for company, and for how many lines (see the module doc): after a batch, for as
        many as it had; on an idle server, `max_wait` for whoever comes."""
        comeback = self._free_since + COMEBACK * self.max_wait
        if first.enqueued < comeback:  # queued while the last batch ran, or just after it
            return comeback, self._last_lines
        return first.enqueued + self.max_wait, float("inf")

    def _fitting(self, group: int) -> tuple[list[_Job], bool]:
        """Waiting jobs of `group`, oldest first, up to the token budget (the first always); and whether the
        budget is full (a job of the group did not fit), so waiting longer cannot help."""
        batch: list[_Job] = []
        tokens = 0
        for job in self._jobs:
            if job.group != group:
                continue
            if job.cost < 0:
                job.cost = sum(self._cost(line) for line in job.lines)
            if batch and tokens + job.cost > self.batch_tokens:
                return batch, True
            batch.append(job)
            tokens += job.cost
        return batch, tokens >= self.batch_tokens

    def _execute(self, batch: list[_Job]) -> None:
        lines = [line for job in batch for line in job.lines]
        start = time.perf_counter()
        self._running = self._last_lines = len(lines)
        try:
            results = self._translate(lines, max(job.nbest for job in batch))
        except Exception as error:
            results = error
        finally:
            self._running = 0
        if isinstance(results, Exception):
            if len(batch) == 1:
                _deliver(batch[0], error=results)
            else:  # find the request that fails, so that the others still get their answers
                for job in batch:
                    self._execute([job])
            return
        self._on_batch(len(lines), time.perf_counter() - start)
        offset = 0
        for job in batch:
            share = results[offset : offset + len(job.lines)]
            offset += len(job.lines)
            _deliver(job, [hyps[: job.nbest] for hyps in share])


def _deliver(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    """Settle the job's future on its own event loop (futures are not thread-safe)."""

    def settle() -> None:
        if job.future.done():  # cancelled: the client went away
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(settle)
