"""Segmenter deployment: Silero VAD on CPU, returning speech segments in samples."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import numpy as np
from ray import serve
from ray.serve.metrics import Counter

from deployments.speech.errors import InvalidRequest
from deployments.speech.schemas import SpeechSegment
from deployments.speech.settings import VadSettings


@serve.deployment(max_ongoing_requests=16, health_check_period_s=10)
class Segmenter:
    def __init__(self, settings: VadSettings):
        from deployments.speech.vad import SpeechDetector

        self.detector = SpeechDetector(settings)
        # ONNX Runtime releases the GIL, so each thread is one more file in VAD at once.
        self._executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="vad")
        self._audio_seconds = Counter("parakeet_vad_audio_seconds", "Audio seconds run through VAD")
        self.vad_seconds = 0.0  # time spent in VAD steps (operators; the benchmark's per-stage time)
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
        self._audio_seconds.inc(len(audio) / 16000)
        loop = asyncio.get_running_loop()
        steps = self.detector.iter_segments(audio)

        def step() -> list[SpeechSegment] | None:
            started = time.perf_counter()
            try:
                return next(steps, None)
            finally:
                with self._stats_lock:
                    self.vad_seconds += time.perf_counter() - started

        try:
            while (found := await loop.run_in_executor(self._executor, step)) is not None:
                if found:
                    yield found
        finally:
            # a cancelled request stops reading its file (if a step is running on its thread right now, that one
            # block finishes and the generator is dropped)
            with contextlib.suppress(ValueError):
                steps.close()

    def stats(self) -> dict:
        return {"vad_seconds": self.vad_seconds}

    def ready(self) -> bool:
        return True
