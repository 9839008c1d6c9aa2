"""Transcriber deployment: Parakeet on the replica's GPU (or CPU), requests batched with ``@serve.batch``.

Several checkpoints can be served (``models``): each request names one (Serve's model multiplexing routes it to a
replica that holds it, loading it there on demand, least recently used evicted past ``max_models_per_replica``).

Batching (``BatchSettings``) is the deployment's ``user_config``: Ray calls ``reconfigure`` after start-up and on
every change, and a batch bigger than any run so far is warmed up there before traffic uses it.

Each kind of work has its own batch queue (live finals, first passes, partials, file segments, background jobs), all with the
same batching, and the model takes the most urgent waiting batch next (``speech/model_queue.py``): a live turn's
final never waits behind an upload's segments, only behind the one model call already running. Batches of one kind
for one model that wait together run as one model call of up to ``max_batch_size`` segments.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import os
import time
from typing import Callable, NamedTuple

import numpy as np
from ray import serve

from deployments.metrics import TranscriberMetrics
from deployments.speech.batching import ItemFailure, run_isolated
from deployments.speech.errors import InvalidRequest, ModelUnavailable, NotFound
from deployments.speech.keyterms import Keyterms
from deployments.speech.model_queue import CONTROL, LIVE, PRIORITIES, ModelQueue, segments_per_call
from deployments.speech.parakeet_defaults import SAMPLE_RATE
from deployments.speech.schemas import SegmentTokens
from deployments.speech.settings import AppSettings, BatchSettings

log = logging.getLogger("ray.serve")
DEFAULT_BATCHING = BatchSettings()
# Live work this recent on a replica means live streams use it: its file segments run in smaller model calls
# (stream.file_segments_per_call). Longer than a turn's usual pause, so a voice agent's next turn finds it so.
LIVE_RECENT_S = 10.0
# Any work but jobs' this recent means interactive clients use the replica: its job segments run in smaller model
# calls (jobs.segments_per_model_call). Longer than the gap between a busy client's requests; short, because a job
# with the replica to itself runs faster in whole batches, and a client that comes back later waits behind one.
OTHER_WORK_RECENT_S = 2.0


class LoadedModel:
    """One model on this replica. Serve's multiplexing calls ``__del__`` when it evicts the least recently used
    model (Python may call it again at collection: it is idempotent)."""

    def __init__(self, model_id: str, recognizer, on_unload: Callable[[str], None]):
        self.model_id = model_id
        self.recognizer = recognizer
        self.warmed_batch = 0
        self._on_unload = on_unload

    def __del__(self):
        if self.recognizer is not None:
            self.recognizer = None
            self._on_unload(self.model_id)


class Arrival(NamedTuple):
    """When a segment reached the replica, and how many less urgent model calls had started by then."""
    at: float
    bulk_started: int


@serve.deployment
class Transcriber:
    def __init__(self, settings: AppSettings):
        import torch

        from deployments.speech.parakeet import resolve_device

        cpus = _assigned_cpus(settings.transcriber_cpus)
        torch.set_num_threads(cpus)  # each replica uses its share, not every core of the node
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.specs = {spec.id: spec for spec in settings.served_models}
        self.default_model = settings.default_model.id
        # One worker thread: model work (and loading) is serialised, most urgent first, never on the event loop.
        self._queue = ModelQueue()
        self._batchers = {priority: getattr(self, _batch_name(priority)) for priority in PRIORITIES}
        # per live segment (the last 1000): less urgent model calls started while it waited (tests, operators)
        self.live_waits: collections.deque[int] = collections.deque(maxlen=1000)
        self.live_seen_at = -math.inf  # (time.monotonic) the last live call's arrival
        self.others_seen_at = -math.inf  # (time.monotonic) the last arrival of any call but a job's
        self.file_calls_beside_live: dict[int, int] = {}  # file model calls sized while live work was about, by size
        self._file_call_beside_live = False  # (worker thread) how the file call about to run was sized
        self.batching = DEFAULT_BATCHING
        self.loaded: dict[str, LoadedModel] = {}
        self.load_seconds: dict[str, float] = {}
        self.evictions = 0
        self.items_by_priority = {priority: 0 for priority in PRIORITIES}  # segments transcribed, by kind of work
        # Serve batches, by kind of work (a batch may hold several models' segments)
        self.batches_by_priority = {priority: 0 for priority in PRIORITIES}
        self.audio_seconds_by_priority = {priority: 0.0 for priority in PRIORITIES}  # audio the model ran, by kind
        self.batch_sizes: dict[int, int] = {}
        self.model_batch_sizes: dict[str, dict[int, int]] = {}  # model calls: each holds one model's segments
        self.model_seconds = 0.0  # time inside the model (worker thread), for operators and the benchmark
        self._metrics = TranscriberMetrics()
        self._stages = self._metrics.stages

        async def load(model_id: str) -> LoadedModel:
            return await self._load(model_id)

        # Requests for a model go to replicas that hold it; past max_models_per_replica the least recently used
        # model is evicted (Serve's model multiplexing).
        self._model = serve.multiplexed(max_num_models_per_replica=settings.max_models_per_replica)(load)
        log.info("Transcriber on %s, %d torch threads, models: %s", self.device, cpus, ", ".join(self.specs))

    async def reconfigure(self, user_config: dict) -> None:
        """``user_config`` (serve_config.yaml, or ``serve deploy`` on a running service): the batching knobs.
        The default model is loaded (and warmed up at the new size) before the replica takes traffic."""
        batching = BatchSettings(**(user_config or {}))
        self.batching = batching
        await self._model(self.default_model)
        for model in list(self.loaded.values()):
            await self._warm_up(model)
        for batcher in self._batchers.values():
            batcher.set_max_batch_size(batching.max_batch_size)
            batcher.set_batch_wait_timeout_s(batching.batch_ms / 1000)
        log.info("Transcriber batching: %s", batching)

    async def _load(self, model_id: str) -> LoadedModel:
        from deployments.speech.parakeet import ParakeetRecognizer

        spec = self.specs[model_id]
        started = time.perf_counter()
        settings = self.settings
        recognizer = await asyncio.wrap_future(self._queue.submit(
            CONTROL, lambda: ParakeetRecognizer.load(
                spec.source, device=settings.device, use_bf16=settings.use_bf16,
                local_attention_above_s=settings.local_attention_above_s,
                max_batch_audio_s=settings.max_batch_audio_s, confidence=settings.confidence, name=model_id,
                keyterm_trees=settings.keyterms.trees_per_model)))
        model = LoadedModel(model_id, recognizer, self._unloaded)
        await self._warm_up(model)
        self.loaded[model_id] = model
        self.load_seconds[model_id] = round(time.perf_counter() - started, 3)
        log.info("Model %s loaded from %s in %.1f s (%s)", model_id, spec.source, self.load_seconds[model_id],
                 recognizer.dtype)
        return model

    def _unloaded(self, model_id: str) -> None:
        self.loaded.pop(model_id, None)
        self.evictions += 1
        log.info("Model %s evicted (least recently used)", model_id)

    async def _warm_up(self, model: LoadedModel) -> None:
        """Run the largest batch once so CUDA graphs, kernels and the allocator are ready before traffic."""
        size = self.batching.max_batch_size
        if not self.settings.warmup or size <= model.warmed_batch:
            return
        seconds = self.settings.vad.max_segment_s if self.device.startswith("cuda") else 1.0
        silence = [np.zeros(int(seconds * SAMPLE_RATE), np.float32)] * size
        await asyncio.wrap_future(self._queue.submit(CONTROL, model.recognizer.transcribe, silence))
        model.warmed_batch = size

    async def check_keyterms(self, keyterms: Keyterms) -> None:
        """A 400 naming any term the routed model cannot spell (or a model without keyterm support), before a
        request or stream spends work on audio; builds the set's tree at once, so its first segment does not."""
        model_id = self._routed_model()
        recognizer = (await self._model(model_id)).recognizer
        await asyncio.wrap_future(self._queue.submit(CONTROL, recognizer.keyterms.prepare, keyterms))

    async def transcribe(self, audio: np.ndarray, start: int = 0, end: int | None = None,
                         priority: str = "file", keyterms: Keyterms | None = None) -> SegmentTokens:
        """Tokens for ``audio[start:end]`` (the whole file arrives by reference; only the view is used) by the model
        the request was routed for (``handle.options(multiplexed_model_id=...)``; none: the default), boosting
        ``keyterms`` if given. ``priority`` (``final``, ``draft``, ``partial``, ``file``, ``job``) picks the batch
        queue: the model takes the most urgent first."""
        model_id = self._routed_model()
        if priority not in PRIORITIES:
            raise InvalidRequest(f"priority must be one of {', '.join(PRIORITIES)}.", code="invalid_priority")
        if keyterms is not None and not isinstance(keyterms, Keyterms):
            raise InvalidRequest("keyterms must be a Keyterms (deployments.speech.keyterms.parse_keyterms).",
                                 code="invalid_keyterms")
        if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.dtype != np.float32:
            raise InvalidRequest("The Transcriber takes float32 mono 16 kHz samples.", code="invalid_audio_array")
        end = len(audio) if end is None else end
        if not 0 <= start < end <= len(audio):
            raise InvalidRequest(f"Segment [{start}, {end}) is outside the audio (0..{len(audio)}).",
                                 code="invalid_segment")
        if priority in LIVE:
            self.live_seen_at = time.monotonic()
        if priority != "job":
            self.others_seen_at = time.monotonic()
        arrival = Arrival(time.perf_counter(), self._queue.started_below(PRIORITIES[priority]))
        result = await self._batchers[priority](audio[start:end], model_id, keyterms, arrival)
        if isinstance(result, ItemFailure):
            raise result.error
        return result

    def _routed_model(self) -> str:
        model_id = serve.get_multiplexed_model_id() or self.default_model
        if model_id not in self.specs:
            raise NotFound(f"The model {model_id!r} is not served here; served models: {', '.join(self.specs)}.",
                           code="model_not_found")
        return model_id

    # The design's batching, one queue per priority (made by _priority_batch below the class); reconfigure() applies
    # the user_config's values to each before the replica takes traffic.

    async def _transcribe_batch(self, priority: str, segments: list[np.ndarray], model_ids: list[str],
                                keyterms: list[Keyterms | None], arrivals: list["Arrival"]
                                ) -> list[SegmentTokens | ItemFailure]:
        """One Serve batch; each model's segments in it are one model call (a batch never mixes models)."""
        now = time.perf_counter()
        for arrival in arrivals:  # one batch of a queue runs at a time: its start is when the queue wait ends
            self._stages.observe("queue", now - arrival.at)
        self.items_by_priority[priority] += len(segments)
        self.batches_by_priority[priority] += 1
        self.batch_sizes[len(segments)] = self.batch_sizes.get(len(segments), 0) + 1
        results: list[SegmentTokens | ItemFailure | None] = [None] * len(segments)
        for model_id in dict.fromkeys(model_ids):
            rows = [i for i, m in enumerate(model_ids) if m == model_id]
            outcome = await self._run_model(model_id, [segments[i] for i in rows], priority,
                                            [arrivals[i] for i in rows], [keyterms[i] for i in rows])
            for i, result in zip(rows, outcome):
                results[i] = result
        return results  # type: ignore[return-value]

    async def _run_model(self, model_id: str, segments: list[np.ndarray], priority: str = "file",
                         arrivals: list["Arrival"] | None = None, keyterms: list[Keyterms | None] | None = None
                         ) -> list[SegmentTokens | ItemFailure]:
        try:
            recognizer = (await self._model(model_id)).recognizer
        except Exception as exc:  # noqa: BLE001 - a model that cannot be loaded fails its requests, clearly
            log.error("Model %s could not be loaded: %s", model_id, exc)
            return [ItemFailure(ModelUnavailable(f"The model {model_id!r} could not be loaded on this replica."))
                    ] * len(segments)
        items = list(zip(segments, keyterms or [None] * len(segments), arrivals or [None] * len(segments)))
        # one queue call per segment: the queue joins the waiting ones into model calls of the size due when the
        # model frees up (smaller ones while live work is about, even for segments that came before it)
        most = functools.partial(self._segments_per_call, priority)
        calls = [asyncio.wrap_future(self._queue.submit_items(
            PRIORITIES[priority], (model_id, id(recognizer)), [item],
            functools.partial(self._run_batch, model_id, recognizer, priority), most)) for item in items]
        return [result for outcome in await asyncio.gather(*calls) for result in outcome]

    def _segments_per_call(self, priority: str) -> int:
        """(model_queue.segments_per_call, asked on the worker thread when the model frees up; the file call it sizes
        runs next on that thread, and counts itself by this same answer)"""
        now = time.monotonic()
        live_about = now - self.live_seen_at < LIVE_RECENT_S
        if priority == "file":
            self._file_call_beside_live = live_about
        return segments_per_call(priority, self.batching.max_batch_size, self.settings.jobs.segments_per_model_call,
                                 self.settings.stream.file_segments_per_call, self.device.startswith("cuda"),
                                 live_about, others_about=now - self.others_seen_at < OTHER_WORK_RECENT_S)

    def _run_batch(self, model_id: str, recognizer, priority: str,
                   items: list[tuple[np.ndarray, Keyterms | None, Arrival | None]]
                   ) -> list[SegmentTokens | ItemFailure]:
        """One model call (on the worker thread): the segments of every call the queue took together."""
        sizes = self.model_batch_sizes.setdefault(model_id, {})
        sizes[len(items)] = sizes.get(len(items), 0) + 1
        lengths = [len(segment) for segment, _, _ in items]
        self._metrics.batch_size.observe(len(items), tags={"model": model_id})
        self._metrics.audio_seconds.inc(sum(lengths) / SAMPLE_RATE, tags={"model": model_id})
        self.audio_seconds_by_priority[priority] += sum(lengths) / SAMPLE_RATE
        plan = recognizer.plan_batches(lengths)  # (planned once: the padding metric and the call use the same plan)
        if padding := recognizer.padding_samples(lengths, plan):
            self._metrics.padding_seconds.inc(padding / SAMPLE_RATE, tags={"model": model_id})
        if priority == "file" and self._file_call_beside_live:
            self.file_calls_beside_live[len(items)] = self.file_calls_beside_live.get(len(items), 0) + 1
        if priority in LIVE:  # how many less urgent calls went ahead of these live segments (at most the running one)
            below = self._queue.started_below(PRIORITIES[priority])
            self.live_waits.extend(below - arrival.bulk_started for _, _, arrival in items if arrival is not None)
        started = time.perf_counter()
        try:
            # (the plan is the whole call's; an item retried alone after a failed call is planned on its own)
            return run_isolated(lambda batch: recognizer.transcribe(
                [s for s, _, _ in batch], [k for _, k, _ in batch], plan if len(batch) == len(items) else None), items)
        finally:
            elapsed = time.perf_counter() - started
            self.model_seconds += elapsed
            self._metrics.batch_latency.observe(elapsed * 1000)
            self._stages.observe("asr", elapsed)

    def stats(self) -> dict:
        """Batching and model counters for tests and operators (per replica)."""
        stats = {"batches": sum(self.batches_by_priority.values()), "items": sum(self.items_by_priority.values()),
                 "items_by_priority": dict(self.items_by_priority),
                 "batches_by_priority": dict(self.batches_by_priority), "batch_sizes": dict(self.batch_sizes),
                 "audio_seconds_by_priority": dict(self.audio_seconds_by_priority),
                 "model_batch_sizes": {m: dict(sizes) for m, sizes in self.model_batch_sizes.items()},
                 "model_seconds": self.model_seconds, "batching": self.batching.model_dump(),
                 "loaded_models": list(self.loaded), "load_seconds": dict(self.load_seconds),
                 "evictions": self.evictions, "live_waits": list(self.live_waits),
                 "file_calls_beside_live": dict(self.file_calls_beside_live),
                 "calls_started": {level: count for level, count in self._queue.started.items()}}
        if self.device.startswith("cuda"):
            import torch

            stats["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        return stats

    def ready(self) -> dict:
        default = self.loaded.get(self.default_model)
        dtype = str(default.recognizer.dtype) if default is not None and default.recognizer is not None else None
        return {"model": self.settings.default_model.source, "id": self.default_model, "device": self.device,
                "dtype": dtype, "loaded": list(self.loaded)}


def _batch_name(priority: str) -> str:
    return f"_{priority}_batch"


def _priority_batch(priority: str):
    """The Transcriber's ``@serve.batch`` queue for one priority (the design's batching: max_batch_size 4 and a
    batch_ms window by default, both retuned by ``reconfigure``)."""
    async def batch(self, segments: list[np.ndarray], model_ids: list[str], keyterms: list[Keyterms | None],
                    arrivals: list[Arrival]) -> list[SegmentTokens | ItemFailure]:
        return await self._transcribe_batch(priority, segments, model_ids, keyterms, arrivals)

    # Serve recognises a batched method by its name on the instance
    batch.__name__ = batch.__qualname__ = _batch_name(priority)
    return serve.batch(max_batch_size=DEFAULT_BATCHING.max_batch_size,
                       batch_wait_timeout_s=DEFAULT_BATCHING.batch_ms / 1000)(batch)


for _priority in PRIORITIES:  # (set on the class Serve wraps, so each replica's instance has them)
    setattr(Transcriber.func_or_class, _batch_name(_priority), _priority_batch(_priority))


def _assigned_cpus(default: float) -> int:
    try:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", default)
    except Exception:  # noqa: BLE001 - outside Ray (unit use)
        assigned = default
    return max(1, min(int(round(assigned)), os.cpu_count() or 1))
