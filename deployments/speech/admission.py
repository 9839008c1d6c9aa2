"""Admission control by work: a bound on requests in flight and on their audio seconds (Ray-free).

A request over either bound is refused at once (429 with Retry-After), instead of waiting in queues until it times
out. Long files may fill only a share of the audio budget, so short requests still get in while long files queue;
a single file longer than the whole budget is still admitted when nothing else is in flight (``limits`` bound how
long a file may be). Live streams have their own bound (``stream.max_streams``), so files never starve them.

A refusal's ``Retry-After`` is the time this replica needs to finish the audio it has already admitted, at the rate
it finished audio lately: under a burst, refused clients come back when there is room rather than every two seconds
(a storm of refusals costs the replica's event loop what its health probes need). It is jittered, so the clients
refused together do not come back as one wave. The rate is measured over the time the replica has been busy (at
most the last ``DRAIN_WINDOW_S``): over a fixed 10 s, a burst's first seconds read the idle time before it as
slowness, and clients were told to wait up to 28 s for audio that was done in 3.
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import time
from typing import Callable, Iterator

from .errors import TooBusy
from .settings import AdmissionSettings

DRAIN_WINDOW_S = 10.0  # the finished audio the drain rate is measured over: long enough to span several batches
MIN_DRAIN_SPAN_S = 1.0  # a rate is never measured over less (one request finishing at once is not a rate)


class Ticket:
    """One admitted request; its audio counts against the budget from ``admit_audio`` until it ends."""

    def __init__(self, admission: "Admission"):
        self.admission = admission
        self.audio_s = 0.0
        self.long = False
        self.kept = False  # a streamed response keeps its ticket past the handler and releases it at the end
        self.released = False

    def admit_audio(self, seconds: float) -> None:
        self.admission._take_audio(self, seconds)

    def keep(self) -> "Ticket":
        self.kept = True
        return self

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._give_back(self)


class Admission:
    def __init__(self, settings: AdmissionSettings, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random):
        self.settings = settings
        self.requests = 0
        self.audio_s = 0.0
        self.long_audio_s = 0.0
        self.shed = 0
        self._clock, self._jitter = clock, jitter
        self._finished: collections.deque[tuple[float, float]] = collections.deque()  # (when, audio seconds)
        self._busy_since = self._clock()  # the start of the current stretch with requests in flight

    def retry_after_s(self) -> int:
        """When a refused client should come back: the admitted audio's drain time (twice the shortest while
        nothing has finished since the replica became busy, as at a burst's start), jittered down by up to half,
        within ``[retry_after_s, max_retry_after_s]``."""
        now = self._clock()
        since = max(now - DRAIN_WINDOW_S, self._busy_since)
        self._forget_before(since)
        rate = sum(seconds for _, seconds in self._finished) / max(now - since, MIN_DRAIN_SPAN_S)
        low, high = self.settings.retry_after_s, self.settings.max_retry_after_s
        drain_s = self.audio_s / rate if rate > 1e-9 else 2 * low
        return max(low, min(high, math.ceil(drain_s * (1 - self._jitter() / 2))))

    @contextlib.contextmanager
    def request(self) -> Iterator[Ticket]:
        if self.requests >= self.settings.max_requests:
            self._refuse(f"The service is at capacity ({self.settings.max_requests} requests in flight on this "
                         "replica); retry shortly.")
        if self.requests == 0:
            self._busy_since = self._clock()
        self.requests += 1
        ticket = Ticket(self)
        try:
            yield ticket
        except BaseException:
            ticket.release()
            raise
        if not ticket.kept:
            ticket.release()

    def _forget_before(self, since: float) -> None:
        """Drop the finished audio older than ``since`` (so the record holds at most the window's requests)."""
        while self._finished and self._finished[0][0] < since:
            self._finished.popleft()

    def _give_back(self, ticket: Ticket) -> None:
        if ticket.audio_s > 0:
            now = self._clock()
            self._finished.append((now, ticket.audio_s))
            self._forget_before(now - DRAIN_WINDOW_S)
        self.requests -= 1
        self.audio_s -= ticket.audio_s
        if ticket.long:
            self.long_audio_s -= ticket.audio_s
        if self.requests == 0:  # exactly empty: sums of floats leave residues that would read as "busy"
            self.audio_s = self.long_audio_s = 0.0

    def _take_audio(self, ticket: Ticket, seconds: float) -> None:
        limit = self.settings.max_audio_s
        long = seconds > self.settings.long_file_s
        busy = self.audio_s > 0
        if busy and self.audio_s + seconds > limit:
            self._refuse(f"The service has {self.audio_s:.0f} s of audio in flight (limit {limit:g} s on this "
                         "replica); retry shortly.")
        if busy and long and self.long_audio_s + seconds > limit * self.settings.long_files_share:
            self._refuse(f"Long files already fill {self.settings.long_files_share:.0%} of this replica's audio "
                         "budget (short requests keep the rest); retry shortly.")
        ticket.audio_s, ticket.long = seconds, long
        self.audio_s += seconds
        if long:
            self.long_audio_s += seconds

    def _refuse(self, message: str) -> None:
        self.shed += 1
        raise TooBusy(message, self.retry_after_s())
