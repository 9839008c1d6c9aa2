"""Segmenter deployment: Silero VAD on CPU for files (speech segments in samples) and for live streams (a step at
a time, each stream's state carried with its calls, concurrent streams' steps batched)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import numpy as np
from ray import serve

from deployments.metrics import SegmenterMetrics
from deployments.speech.errors import InvalidRequest
from deployments.speech.live_vad import LiveVad, LiveVadState, LiveVadStep
from deployments.speech.parakeet_defaults import SAMPLE_RATE
from deployments.speech.schemas import SpeechSegment
from deployments.speech.settings import VadSettings


@serve.deployment
class Segmenter:
    def __init__(self, settings: VadSettings):
        from deployments.speech.vad import SpeechDetector

        self.detector = SpeechDetector(settings)
        self.live = LiveVad(settings)
        # ONNX Runtime releases the GIL, so each thread is one more file (or batch of live steps) in VAD at once.
        self._executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="vad")
        self._metrics = SegmenterMetrics()
        self._stages = self._metrics.stages
        self.vad_seconds = 0.0  # time spent in VAD steps (operators; the benchmark's per-stage time)
        self.live_steps = 0
        self.live_batches = 0
        self._stats_lock = threading.Lock()  # steps of concurrent files finish on different threads

    async def segments(self, audio: np.ndarray) -> list[SpeechSegment]:
        """Every speech segment of the file at once."""
        found: list[SpeechSegment] = []
        async for batch in self.segments_stream(audio):
            found += batch
        return found

    async def segments_stream(self, audio: np.ndarray) -> AsyncIterator[list[SpeechSegment]]:
        """The same segments, streamed as soon as each is final (``handle.options(stream=True)``), so the caller
        can start transcribing while VAD reads the rest of the file. Each VAD step runs on a worker thread."""
        if not isinstance(audio, np.ndarray) or audio.ndim != 1:
            raise InvalidRequest("The Segmenter takes mono 16 kHz samples.", code="invalid_audio_array")
        if len(audio):
            self._metrics.audio_seconds.inc(len(audio) / SAMPLE_RATE, tags={"path": "file"})
        loop = asyncio.get_running_loop()
        steps = self.detector.iter_segments(audio)
        started = time.perf_counter()
        try:
            while (found := await loop.run_in_executor(self._executor, self._timed, next, steps, None)) is not None:
                if found:
                    self._count_speech(found, "file")
                    yield found
            self._stages.observe("vad", time.perf_counter() - started)
        finally:
            # a cancelled request stops reading its file (if a step is running on its thread right now, that one
            # block finishes and the generator is dropped)
            with contextlib.suppress(ValueError):
                steps.close()

    async def live_tick(self, calls: list[tuple[LiveVadState, np.ndarray, bool]]) -> list[LiveVadStep]:
        """Live streams' steps, one ``LiveVadStep`` each, in order: each step is a stream's new 16 kHz samples and
        its state (the state comes with every call, so any replica can take any stream's next step). An Ingress
        sends its streams' steps of one tick together (``speech/step_batcher.py``); they run as one batch."""
        for _, samples, _ in calls:
            if not isinstance(samples, np.ndarray) or samples.ndim != 1:
                raise InvalidRequest("A live VAD step takes mono 16 kHz samples.", code="invalid_audio_array")
        if seconds := sum(len(samples) for _, samples, _ in calls) / SAMPLE_RATE:  # (Ray counters take values > 0)
            self._metrics.audio_seconds.inc(seconds, tags={"path": "live"})
        self.live_steps += len(calls)
        self.live_batches += 1
        loop = asyncio.get_running_loop()
        with self._stages.timed("vad_live"):
            steps = await loop.run_in_executor(self._executor, self._timed, self.live.step, calls)
        for step in steps:
            self._count_speech(step.segments, "live")
        return steps

    def _count_speech(self, segments: list[SpeechSegment], path: str) -> None:
        if seconds := sum(s.end - s.start for s in segments) / SAMPLE_RATE:
            self._metrics.speech_seconds.inc(seconds, tags={"path": path})

    def _timed(self, work, *args):
        started = time.perf_counter()
        try:
            return work(*args)
        finally:
            with self._stats_lock:
                self.vad_seconds += time.perf_counter() - started

    def stats(self) -> dict:
        return {"replica": serve.get_replica_context().replica_id.unique_id, "vad_seconds": self.vad_seconds,
                "live_steps": self.live_steps, "live_batches": self.live_batches}

    def ready(self) -> bool:
        return True
