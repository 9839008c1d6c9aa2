"""The Transcriber's model work, one call at a time on one worker thread, the most urgent first (Ray-free).

A replica's model runs one call at a time (on a GPU, concurrent calls only contend). Each kind of work comes from
its own batch queue (``@serve.batch`` per priority), so when the model finishes a call, the next one it runs is the
most urgent waiting: a live turn's final, then a first pass (a final-to-be, cancelled while it waits if speech
resumes, so under load speculative work gives way), then a live partial, then a file's segments, then background
jobs'. A live final therefore waits for at most the one call already running, however long the
upload beside it. Within a priority, calls run in the order they came.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import Future
from typing import Any, Callable

# lower runs first; CONTROL is the model's own work (loading, warm-up)
CONTROL = -1
PRIORITIES = {"final": 0, "draft": 1, "partial": 2, "file": 3, "job": 4}
LIVE = ("final", "draft", "partial")


class ModelQueue:
    def __init__(self, name: str = "parakeet"):
        self._heap: list[tuple[int, int, Future, Callable, tuple]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self.started = {priority: 0 for priority in (CONTROL, *PRIORITIES.values())}  # calls started, by priority
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, work: Callable, *args: Any) -> Future:
        """Run ``work(*args)`` on the worker thread, after every more urgent call waiting then."""
        future: Future = Future()
        with self._ready:
            heapq.heappush(self._heap, (priority, next(self._order), future, work, args))
            self._ready.notify()
        return future

    def started_below(self, priority: int) -> int:
        """Calls less urgent than ``priority`` started so far (a live call's wait is counted in these)."""
        return sum(count for level, count in self.started.items() if level > priority)

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._heap:
                    self._ready.wait()
                priority, _, future, work, args = heapq.heappop(self._heap)
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited
                self.started[priority] += 1
            try:
                future.set_result(work(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)
