"""The Transcriber's model work, one call at a time on one worker thread, the most urgent first (Ray-free).

A replica's model runs one call at a time (on a GPU, concurrent calls only contend). Each kind of work comes from
its own batch queue (``@serve.batch`` per priority), so when the model finishes a call, the next one it runs is the
most urgent waiting: a live turn's final, then a first pass (a final-to-be, cancelled while it waits if speech
resumes, so under load speculative work gives way), then a live partial, then a file's segments, then background
jobs'. A live final therefore waits for at most the one call already running, however long the
upload beside it. Within a priority, calls run in the order they came.

Calls of one priority for one model also run *together* when the model frees up (``submit_items``): Serve forms a
batch from what arrives within its window, then the batch waits here behind the running call, so under load
several small batches queue up (each stream's partial, each job segment as an earlier one is collected). Taking
the waiting ones as one model call, up to the call's limit, is continuous batching at the model: full batches
where Serve's window caught one or two, and no call waits longer than it would have.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

# lower runs first; CONTROL is the model's own work (loading, warm-up)
CONTROL = -1
PRIORITIES = {"final": 0, "draft": 1, "partial": 2, "file": 3, "job": 4}
LIVE = ("final", "draft", "partial")


def segments_per_call(priority: str, whole: int, job_segments: int, file_segments: int | str, on_gpu: bool,
                      live_about: bool, others_about: bool) -> int:
    """The most segments one model call of ``priority`` work holds: ``whole`` (the batch size) but for background
    and bulk work, which more urgent work that comes meanwhile must not wait behind in full. A job's call holds
    ``job_segments`` while other work is about (``others_about``: any but jobs', lately), and the whole batch when
    jobs have the model to themselves (nothing waits behind them then, and fuller calls are faster); a file's, while
    live work is about, ``file_segments`` ("auto": one on CPU, where a call of four long segments takes about a
    second, and the whole batch on a GPU, where a call takes tens of ms)."""
    if priority == "job":
        return min(whole, job_segments) if others_about else whole
    if priority == "file" and live_about:
        if file_segments == "auto":
            return whole if on_gpu else 1
        return min(whole, int(file_segments))
    return whole


@dataclass(order=True)
class _Call:
    priority: int
    order: int
    future: Future = field(compare=False)
    work: Callable = field(compare=False)
    args: tuple = field(compare=False, default=())
    group: Hashable | None = field(compare=False, default=None)  # calls of one group may run as one: work(items)
    # the most items a call of the group may hold; a function is asked when the call starts (what is due then)
    most: int | Callable[[], int] = field(compare=False, default=0)


class ModelQueue:
    def __init__(self, name: str = "parakeet"):
        self._heap: list[_Call] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self.started = {priority: 0 for priority in (CONTROL, *PRIORITIES.values())}  # calls started, by priority
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, work: Callable, *args: Any) -> Future:
        """Run ``work(*args)`` on the worker thread, after every more urgent call waiting then."""
        return self._push(_Call(priority, next(self._order), Future(), work, args))

    def submit_items(self, priority: int, group: Hashable, items: Sequence, work: Callable[[list], list],
                     most: int | Callable[[], int]) -> Future:
        """Run ``work(items)`` (one result per item) like ``submit``; if other calls of the same priority and
        ``group`` wait when it starts, as many as fit in ``most`` items go with it, in order, as one
        ``work(all their items)`` call (``most`` a function: its answer when the call starts). The future holds
        this call's own results."""
        return self._push(_Call(priority, next(self._order), Future(), work, (list(items),), group, most))

    def started_below(self, priority: int) -> int:
        """Calls less urgent than ``priority`` started so far (a live call's wait is counted in these)."""
        return sum(count for level, count in self.started.items() if level > priority)

    def _push(self, call: _Call) -> Future:
        with self._ready:
            heapq.heappush(self._heap, call)
            self._ready.notify()
        return call.future

    def _next(self) -> list[_Call]:
        """The most urgent waiting call, with the waiting calls of its group that fit (the lock is held)."""
        while self._heap:
            head = heapq.heappop(self._heap)
            if head.future.set_running_or_notify_cancel():
                break
        else:
            return []
        if head.group is None:
            return [head]
        taken, size, kept, full = [head], len(head.args[0]), [], False
        most = head.most() if callable(head.most) else head.most
        for call in sorted(self._heap):
            # the group's calls in order, up to the first that does not fit (no later call goes ahead of it)
            if not full and call.priority == head.priority and call.group == head.group:
                full = size + len(call.args[0]) > most
                if full:
                    kept.append(call)
                elif call.future.set_running_or_notify_cancel():  # (a call cancelled while it waited is dropped)
                    taken.append(call)
                    size += len(call.args[0])
            else:
                kept.append(call)
        if len(kept) < len(self._heap):
            self._heap[:] = kept  # (sorted: a valid heap)
        return taken

    def _work(self) -> None:
        while True:
            with self._ready:
                taken = self._next()
                if not taken:
                    self._ready.wait()
                    continue
                self.started[taken[0].priority] += 1
            head = taken[0]
            try:
                if head.group is None:
                    head.future.set_result(head.work(*head.args))
                    continue
                results = head.work([item for call in taken for item in call.args[0]])
                for call in taken:
                    mine, results = results[:len(call.args[0])], results[len(call.args[0]):]
                    call.future.set_result(mine)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller(s)
                for call in taken:
                    if not call.future.done():
                        call.future.set_exception(exc)
