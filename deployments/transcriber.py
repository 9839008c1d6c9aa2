"""Transcriber deployment: Parakeet on the replica's GPU (or CPU), requests batched with ``@serve.batch``.

Batching (``BatchSettings``) is the deployment's ``user_config``: Ray calls ``reconfigure`` after start-up and on
every change, and a batch bigger than any run so far is warmed up there before traffic uses it.
"""

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
from deployments.speech.settings import AppSettings, BatchSettings

log = logging.getLogger("ray.serve")
DEFAULT_BATCHING = BatchSettings()


@serve.deployment
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
        self.batching = DEFAULT_BATCHING
        self._warmed_batch = 0
        self.batches = 0
        self.items = 0
        self.batch_sizes: dict[int, int] = {}
        self.model_seconds = 0.0  # time inside the model (worker thread), for operators and the benchmark
        self._batch_size_metric = Histogram("parakeet_batch_size", "Segments per model batch",
                                            boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 32])
        self._audio_seconds = Counter("parakeet_transcribed_audio_seconds", "Audio seconds through the model")
        self._batch_latency = Histogram("parakeet_batch_latency_ms", "Time one batch spends in the model",
                                        boundaries=[5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 20000])
        log.info("Transcriber loaded: %s on %s (%s), %d torch threads", settings.model, self.recognizer.device,
                 self.recognizer.dtype, cpus)

    async def reconfigure(self, user_config: dict) -> None:
        """``user_config`` (serve_config.yaml, or ``serve deploy`` on a running service): the batching knobs."""
        batching = BatchSettings(**(user_config or {}))
        if self.settings.warmup and batching.max_batch_size > self._warmed_batch:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._warm_up, batching.max_batch_size)
        self._transcribe_batch.set_max_batch_size(batching.max_batch_size)
        self._transcribe_batch.set_batch_wait_timeout_s(batching.batch_ms / 1000)
        self.batching = batching
        log.info("Transcriber batching: %s", batching)

    def _warm_up(self, batch_size: int) -> None:
        """Run the largest batch once so CUDA graphs, kernels and the allocator are ready before traffic."""
        seconds = self.settings.vad.max_segment_s if self.recognizer.device.startswith("cuda") else 1.0
        self.recognizer.transcribe([np.zeros(int(seconds * 16000), np.float32)] * batch_size)
        self._warmed_batch = batch_size

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

    # The design's batching; reconfigure() applies the user_config's values before the replica takes traffic.
    @serve.batch(max_batch_size=DEFAULT_BATCHING.max_batch_size,
                 batch_wait_timeout_s=DEFAULT_BATCHING.batch_ms / 1000)
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
                 "model_seconds": self.model_seconds, "batching": self.batching.model_dump()}
        if self.recognizer.device.startswith("cuda"):
            import torch

            stats["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        return stats

    def ready(self) -> dict:
        return {"model": self.settings.model, "device": self.recognizer.device, "dtype": str(self.recognizer.dtype)}


def _assigned_cpus(default: float) -> int:
    try:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", default)
    except Exception:  # noqa: BLE001 - outside Ray (unit use)
        assigned = default
    return max(1, min(int(round(assigned)), os.cpu_count() or 1))
