"""An Ingress's live VAD steps, sent to the Segmenter together (Ray-free, so it is unit-tested on its own).

A real-time client sends 20 ms frames; its stream goes through VAD in steps of ``stream.min_step_ms``. Sent one
call per stream, each step costs both replicas a Ray round trip, serialisation, routing and an access-log line:
more CPU than silero itself (8 real-time streams were ~125 Segmenter calls a second on 2 cores). So the streams of
one Ingress step on a shared clock (``next_tick``: every stream's step ends on the same boundaries of
``min_step_ms``), and the steps that reach the ``StepBatcher`` within ``window_s`` of the first waiting one go as one
Segmenter call. The Segmenter runs them as one batch (window ``w`` of every stream through silero's batched model),
which it did already for steps that happened to arrive together.
"""

from __future__ import annotations

import asyncio
import math
from typing import Awaitable, Callable, Generic, TypeVar

Call = TypeVar("Call")
Result = TypeVar("Result")


def next_tick(now: float, period_s: float) -> float:
    """The first boundary of the shared step clock after ``now`` (``time.monotonic`` seconds); ``now`` itself when
    the period is 0 (no waiting)."""
    return now if period_s <= 0 else (math.floor(now / period_s) + 1) * period_s


class StepBatcher(Generic[Call, Result]):
    """``await step(call)`` -> its result, from ``send([calls])`` made for every call waiting ``window_s`` after the
    first one came (at most ``most`` calls each). A failed send fails each of its callers; a caller that stops
    waiting leaves the others' results alone."""

    def __init__(self, send: Callable[[list[Call]], Awaitable[list[Result]]], window_s: float, most: int):
        self._send = send
        self._window_s = window_s
        self._most = max(1, most)
        self._waiting: list[tuple[Call, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task] = set()  # (a reference to each task, so none is collected mid-call)
        self.calls = 0  # sends made (tests, operators)

    async def step(self, call: Call) -> Result:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((call, future))
        if len(self._waiting) >= self._most:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [(call, future) for call, future in self._waiting if not future.done()]
        self._waiting = []
        if batch:
            task = asyncio.ensure_future(self._deliver(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: list[tuple[Call, asyncio.Future]]) -> None:
        self.calls += 1
        try:
            results = await self._send([call for call, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except BaseException as exc:  # noqa: BLE001 - each caller gets the send's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
