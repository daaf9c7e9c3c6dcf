"""Feeds the engine's running batch from concurrent requests on the server's event loop.

One task drives the engine: before every decoding step it admits waiting requests (up to
``max_batch_size`` rows in all), runs the step off the event loop, and hands each row's
delta to the request waiting for it. Requests join and leave between steps (continuous
batching), so the batch stays full under a steady load instead of being formed once per
batch as ``@serve.batch`` does: there, batches are cut from the queue while the previous
one still runs, and under a closed-loop load they settled at 1-3 requests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import AsyncIterator

from stages.deploy.engine import Delta, Engine, GenRequest, Row


@dataclass(eq=False)
class _Waiter:
    request: GenRequest
    deltas: asyncio.Queue = field(default_factory=asyncio.Queue)
    row: Row | None = None
    cancelled: bool = False


class Scheduler:
    def __init__(self, engine: Engine, max_batch_size: int = 16, batch_wait_s: float = 0.02):
        self.engine, self.max_batch_size, self.batch_wait_s = engine, max_batch_size, batch_wait_s
        self.waiting: list[_Waiter] = []
        self.rows_per_step: Counter[int] = Counter()  # how many rows each decoding step ran
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def generate(self, request: GenRequest) -> AsyncIterator[Delta]:
        """This request's deltas as its row produces them; leaving early frees the row."""
        waiter = _Waiter(request)
        self.waiting.append(waiter)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            while True:
                item = await waiter.deltas.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            waiter.cancelled = True
            if waiter.row is not None:
                waiter.row.cancelled = True

    async def _run(self) -> None:
        while True:
            if not self.engine.rows and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                if self.batch_wait_s:  # an idle server gives a burst of requests a moment to arrive together
                    await asyncio.sleep(self.batch_wait_s)
            free = self.max_batch_size - len(self.engine.rows)
            self.waiting = [w for w in self.waiting if not w.cancelled]
            joining, self.waiting = self.waiting[:free], self.waiting[free:]
            try:
                produced = await asyncio.to_thread(self._advance, joining)
            except Exception as exc:  # the batch is lost: every request in it gets the error, the server goes on
                for waiter in {row.owner for row in self.engine.rows} | set(joining):
                    waiter.deltas.put_nowait(exc)
                self.engine.reset()
                continue
            for waiter, delta in produced:
                waiter.deltas.put_nowait(delta)

    def _advance(self, joining: list[_Waiter]) -> list[tuple[_Waiter, Delta]]:
        for waiter, row in zip(joining, self.engine.add([w.request for w in joining], joining)):
            waiter.row = row
            row.cancelled = waiter.cancelled
        if self.engine.rows:
            self.rows_per_step[len(self.engine.rows)] += 1
        return [(row.owner, delta) for row, delta in self.engine.step()]
