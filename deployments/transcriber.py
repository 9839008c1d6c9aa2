"""Transcriber deployment: Parakeet on the replica's GPU (or CPU), requests batched with ``@serve.batch``."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve
from ray.serve.metrics import Counter, Histogram

from deployments.speech.batching import ItemFailure, run_isolated
from deployments.speech.errors import InvalidRequest
from deployments.speech.schemas import SegmentTokens
from deployments.speech.settings import AppSettings

log = logging.getLogger("ray.serve")
DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_BATCH_WAIT_S = 0.015
# Every speech segment is one small Transcriber request (an object reference and two ints), and a long file sends
# a hundred or more at once. They must all fit in the replica's own batch queue: requests beyond
# max_ongoing_requests wait in the caller's router, whose scheduling retries and queue-length probes burned CPU in
# the Ingress and in the Transcriber's event loop (slowing the model thread): 4 concurrent 15-minute files on
# 2 cores took 27 s with 64 and 14 s with 1024 (bench/results/README.md).
TRANSCRIBER_MAX_ONGOING = 1024


@serve.deployment(max_ongoing_requests=TRANSCRIBER_MAX_ONGOING, health_check_period_s=10, health_check_timeout_s=30)
class Transcriber:
    def __init__(self, settings: AppSettings):
        import torch

        from deployments.speech.parakeet import ParakeetRecognizer

        cpus = _assigned_cpus(settings.transcriber_cpus)
        torch.set_num_threads(cpus)  # each replica uses its share, not every core of the node
        self.settings = settings
        self.recognizer = ParakeetRecognizer.load(
            settings.model, device=settings.device, use_bf16=settings.use_bf16,
            local_attention_above_s=settings.local_attention_above_s, max_batch_audio_s=settings.max_batch_audio_s)
        # One worker thread: model work is serialised and never runs on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parakeet")
        self.batches = 0
        self.items = 0
        self.batch_sizes: dict[int, int] = {}
        self.model_seconds = 0.0  # time inside the model (worker thread), for operators and the benchmark
        self._batch_size_metric = Histogram("parakeet_batch_size", "Segments per model batch",
                                            boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 32])
        self._audio_seconds = Counter("parakeet_transcribed_audio_seconds", "Audio seconds through the model")
        self._batch_latency = Histogram("parakeet_batch_latency_ms", "Time one batch spends in the model",
                                        boundaries=[5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 20000])
        self.reconfigure({"max_batch_size": settings.max_batch_size, "batch_wait_timeout_s": settings.batch_ms / 1000})
        if settings.warmup:
            self._warm_up()
        log.info("Transcriber ready: %s on %s (%s), %d torch threads", settings.model, self.recognizer.device,
                 self.recognizer.dtype, cpus)

    def _warm_up(self) -> None:
        """Run the largest batch once so CUDA graphs, kernels and the allocator are ready before traffic."""
        seconds = self.settings.vad.max_segment_s if self.recognizer.device.startswith("cuda") else 1.0
        silence = [np.zeros(int(seconds * 16000), np.float32)] * self.max_batch_size
        self.recognizer.transcribe(silence)

    def reconfigure(self, user_config: dict) -> None:
        """Runtime tuning through ``user_config`` (serve_config.yaml or ``serve deploy``) without a restart."""
        size = int(user_config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        wait = float(user_config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_S))
        self.max_batch_size = size
        self._transcribe_batch.set_max_batch_size(size)
        self._transcribe_batch.set_batch_wait_timeout_s(wait)

    async def transcribe(self, audio: np.ndarray, start: int = 0, end: int | None = None) -> SegmentTokens:
        """Tokens for ``audio[start:end]`` (the whole file arrives by reference; only the view is used)."""
        if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.dtype != np.float32:
            raise InvalidRequest("The Transcriber takes float32 mono 16 kHz samples.", code="invalid_audio_array")
        end = len(audio) if end is None else end
        if not 0 <= start < end <= len(audio):
            raise InvalidRequest(f"Segment [{start}, {end}) is outside the audio (0..{len(audio)}).",
                                 code="invalid_segment")
        result = await self._transcribe_batch(audio[start:end])
        if isinstance(result, ItemFailure):
            raise result.error
        return result

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _transcribe_batch(self, segments: list[np.ndarray]) -> list[SegmentTokens | ItemFailure]:
        self.batches += 1
        self.items += len(segments)
        self.batch_sizes[len(segments)] = self.batch_sizes.get(len(segments), 0) + 1
        self._batch_size_metric.observe(len(segments))
        self._audio_seconds.inc(sum(len(s) for s in segments) / 16000)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_batch, segments)

    def _run_batch(self, segments: list[np.ndarray]) -> list[SegmentTokens | ItemFailure]:
        started = time.perf_counter()
        try:
            return run_isolated(self.recognizer.transcribe, segments)
        finally:
            elapsed = time.perf_counter() - started
            self.model_seconds += elapsed
            self._batch_latency.observe(elapsed * 1000)

    def stats(self) -> dict:
        """Batching counters for tests and operators (per replica)."""
        stats = {"batches": self.batches, "items": self.items, "batch_sizes": dict(self.batch_sizes),
                 "model_seconds": self.model_seconds}
        if self.recognizer.device.startswith("cuda"):
            import torch

            stats["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        return stats

    def ready(self) -> dict:
        return {"model": self.settings.model, "device": self.recognizer.device, "dtype": str(self.recognizer.dtype)}

    def check_health(self) -> None:
        if self.recognizer is None:
            raise RuntimeError("model not loaded")


def _assigned_cpus(default: float) -> int:
    try:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", default)
    except Exception:  # noqa: BLE001 - outside Ray (unit use)
        assigned = default
    return max(1, min(int(round(assigned)), os.cpu_count() or 1))
