"""The service's Prometheus series (Ray Serve metrics), defined here once and observed by each deployment.

Ray exports them with a ``ray_`` prefix (counters end in ``_total``) on each node's metrics port: 8080 under
``make serve`` and in the cluster manifests (``configs/``). ``configs/grafana-dashboard.json`` charts them all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any, AsyncIterator

from ray.serve.metrics import Counter, Gauge, Histogram

from deployments.speech.errors import ApiError, TooBusy

LATENCY_BOUNDARIES_MS = [50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]
STAGE_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 20000, 60000]
RTF_BOUNDARIES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2]
# The stages a request goes through, each timed where it runs: decode (Ingress), vad (Segmenter, a file's whole
# VAD), vad_live (Segmenter, one batch of live steps), queue (Transcriber: a segment's wait before its batch
# starts), asr (Transcriber: one model call), align (Aligner)
STAGES = ("decode", "vad", "vad_live", "queue", "asr", "align")
# How often the Ingress hands what its requests counted to Ray (which exports every few seconds anyway)
FLUSH_INTERVAL_S = 1.0


class RecordBuffer:
    """Counts and observations kept in memory and recorded into Ray's series in one go, on a worker thread.

    Each of Ray's record calls leaves and retakes the GIL. On a busy Ingress (decode threads, Serve's router and
    system loops) every retake waits its turn, so three per request on the event loop cost milliseconds each: py-spy
    under a 200-client burst found an eighth of the loop's time there, ahead of every probe. Counts with the same
    series and tags are summed before they are recorded."""

    def __init__(self):
        self._counts: dict[tuple[Any, tuple], float] = collections.defaultdict(float)
        self._observations: list[tuple[Any, float, dict]] = []

    def inc(self, counter: Counter, value: float, tags: dict[str, str]) -> None:
        self._counts[(counter, tuple(sorted(tags.items())))] += value

    def observe(self, histogram: Histogram, value: float, tags: dict[str, str]) -> None:
        self._observations.append((histogram, value, tags))

    def take(self) -> "RecordBuffer":
        """What was counted so far (to ``record``), leaving this buffer empty."""
        taken = RecordBuffer()
        taken._counts, self._counts = self._counts, collections.defaultdict(float)
        taken._observations, self._observations = self._observations, []
        return taken

    def record(self) -> None:
        for (counter, tags), value in self._counts.items():
            counter.inc(value, tags=dict(tags))
        for histogram, value, tags in self._observations:
            histogram.observe(value, tags=tags)

    async def flush_forever(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.take().record)


class StageLatency:
    """``parakeet_stage_latency_ms{stage}``: one histogram that every deployment observes its own stages into
    (through ``buffer`` where one is given)."""

    def __init__(self, buffer: RecordBuffer | None = None):
        self._histogram = Histogram("parakeet_stage_latency_ms", "Time spent in one stage of the pipeline",
                                    boundaries=STAGE_BOUNDARIES_MS, tag_keys=("stage",))
        self._buffer = buffer

    def observe(self, stage: str, seconds: float) -> None:
        if self._buffer is not None:
            self._buffer.observe(self._histogram, seconds * 1000, {"stage": stage})
        else:
            self._histogram.observe(seconds * 1000, tags={"stage": stage})

    @contextlib.contextmanager
    def timed(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - started)


class IngressMetrics:
    """The request path's series, recorded through a ``RecordBuffer`` (``flush_forever`` runs on the replica)."""

    def __init__(self):
        self.buffer = RecordBuffer()
        self._requests = Counter("parakeet_requests", "Requests by route and final HTTP status",
                                 tag_keys=("route", "status"))
        self._latency = Histogram("parakeet_request_latency_ms", "End-to-end request latency",
                                  boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",))
        self._rtf = Histogram("parakeet_real_time_factor", "Processing time / audio duration, per request",
                              boundaries=RTF_BOUNDARIES, tag_keys=("route",))
        self._audio_in = Counter("parakeet_audio_seconds_in", "Audio seconds received (files and handle calls)",
                                 tag_keys=("route",))
        self._shed = Counter("parakeet_requests_shed", "Requests and streams refused at once (429) by admission",
                             tag_keys=("route",))
        self._streams = Counter("parakeet_streams", "WebSocket streams by outcome", tag_keys=("outcome",))
        self._active_streams = Gauge("parakeet_active_streams", "Live streams open on this Ingress replica")
        self.stages = StageLatency(self.buffer)

    @contextlib.asynccontextmanager
    async def request(self, route: str) -> AsyncIterator["RequestTiming"]:
        """Count the request under its final status (a client error's, 500 for anything unexpected)."""
        timing = RequestTiming()
        status = "500"
        try:
            yield timing
            status = "200"
        except ApiError as exc:
            status = str(exc.status)
            if isinstance(exc, TooBusy):
                self.buffer.inc(self._shed, 1, {"route": route})
            raise
        except asyncio.CancelledError:
            status = "499"  # the client went away
            raise
        finally:
            elapsed = time.perf_counter() - timing.started
            self.buffer.inc(self._requests, 1, {"route": route, "status": status})
            self.buffer.observe(self._latency, elapsed * 1000, {"route": route})
            if status == "200" and timing.audio_s > 0 and not timing.streamed:
                self.buffer.observe(self._rtf, elapsed / timing.audio_s, {"route": route})

    def audio_in(self, route: str, timing: "RequestTiming", seconds: float) -> None:
        timing.audio_s = seconds
        if seconds > 0:
            self.buffer.inc(self._audio_in, seconds, {"route": route})

    def stream_ended(self, outcome: str) -> None:
        self.buffer.inc(self._streams, 1, {"outcome": outcome})
        if outcome == "refused":
            self.buffer.inc(self._shed, 1, {"route": "stream"})

    def active_streams(self, count: int) -> None:
        self._active_streams.set(count)


class TranscriberMetrics:
    """The model's work on one Transcriber replica: segments per batch, audio and padding through the model (padding
    / (padding + audio) is the padding waste of the batches formed), and each batch's time in the model."""

    def __init__(self):
        self.batch_size = Histogram("parakeet_batch_size", "Segments per model batch",
                                    boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 32], tag_keys=("model",))
        self.audio_seconds = Counter("parakeet_transcribed_audio_seconds", "Audio seconds through the model",
                                     tag_keys=("model",))
        self.batch_latency = Histogram("parakeet_batch_latency_ms", "Time one batch spends in the model",
                                       boundaries=[5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 20000])
        self.padding_seconds = Counter("parakeet_batch_padding_seconds",
                                       "Seconds of zeros the model ran on to pad segments to their batch's longest",
                                       tag_keys=("model",))
        self.stages = StageLatency()


class SegmenterMetrics:
    """VAD's work: audio in and the speech it found (speech / audio: the speech ratio, segments as handed to the
    model, padded and merged), by path (``file`` or ``live``)."""

    def __init__(self):
        self.audio_seconds = Counter("parakeet_vad_audio_seconds", "Audio seconds run through VAD",
                                     tag_keys=("path",))
        self.speech_seconds = Counter("parakeet_vad_speech_seconds", "Seconds of the speech segments VAD found",
                                      tag_keys=("path",))
        self.stages = StageLatency()


class AlignerMetrics:
    def __init__(self):
        self.calls = Counter("parakeet_aligner_calls", "Requests aligned (timestamps asked for)")
        self.stages = StageLatency()


class RequestTiming:
    """One request's start and audio length (for its real-time factor; an SSE response's handler returns before
    its stream ends, so it has none)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.audio_s = 0.0
        self.streamed = False
