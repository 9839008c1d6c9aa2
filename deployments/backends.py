"""The pipeline's ``Backends`` over Ray Serve handles: the only place the Ingress's requests meet Ray.

Every call's failure is turned back into the ``ApiError`` a client should see: a deployment's own client error
(raised inside a replica) passes through; full queues become 503 + Retry-After; a replica that died under a call
becomes 503 + Retry-After, after one retry on a healthy replica for the calls that are safe to repeat (a segment's
transcription, a live VAD step, an alignment); anything else becomes a 500 without internals (the log keeps them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
import ray
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.speech.errors import ApiError, InternalError, Overloaded, ReplicaGone
from deployments.speech.keyterms import Keyterms
from deployments.speech.live_vad import LiveVadState, LiveVadStep
from deployments.speech.schemas import Segment, SegmentTokens, SpeechSegment, Word
from deployments.speech.step_batcher import StepBatcher

log = logging.getLogger("ray.serve")


async def downstream(call: Awaitable):
    """Await a handle call, turning Ray's wrappers back into the ApiError a client should see."""
    try:
        return await call
    except ApiError:
        raise
    except (BackPressureError, DeploymentUnavailableError):
        raise Overloaded("The service is at capacity; retry shortly.", retry_after_s=2) from None
    except ray.exceptions.RayActorError:  # the replica died (ActorDiedError, ActorUnavailableError)
        log.warning("A replica died under a request")
        raise ReplicaGone() from None
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, ApiError):
            raise exc.cause from None
        log.error("Downstream failure: %s", exc)
        raise InternalError("A model worker failed while processing this request.") from None


async def retried(make_call: Callable[[], DeploymentResponse], first: DeploymentResponse | None = None):
    """An idempotent call (``first`` if it was already sent), sent again (to a healthy replica) once if its replica
    died under it."""
    try:
        return await downstream(first if first is not None else make_call())
    except ReplicaGone:
        return await downstream(make_call())


class SegmentCall:
    """One segment's transcription, issued at once and collected later; re-issued once if its replica died."""

    def __init__(self, issue: Callable[[], DeploymentResponse]):
        self.issue = issue
        self.response = issue()

    def cancel(self) -> None:
        self.response.cancel()

    async def result(self) -> SegmentTokens:
        return await retried(self._reissue, first=self.response)

    def _reissue(self) -> DeploymentResponse:
        self.response = self.issue()  # the call to cancel from now on
        return self.response


class GraphBackends:
    def __init__(self, segmenter: DeploymentHandle, transcriber: DeploymentHandle, aligner: DeploymentHandle,
                 step_window_s: float, steps_per_call: int):
        self.segmenter = segmenter
        self.transcriber = transcriber
        self.aligner = aligner
        self._by_model: dict[str, DeploymentHandle] = {}
        # live streams' VAD steps: those of one tick go to the Segmenter as one call
        self.live_steps: StepBatcher[tuple[LiveVadState, np.ndarray, bool], LiveVadStep] = StepBatcher(
            lambda calls: retried(lambda: self.segmenter.live_tick.remote(calls)), step_window_s, steps_per_call)

    async def put(self, audio: np.ndarray) -> ray.ObjectRef:
        """The audio, stored once: every downstream call gets the reference, not the samples. On a worker thread:
        a put waits on the node's object store, which under load held this replica's event loop (and with it
        every probe and refusal) for ~1 s in 4 (py-spy, 200 clients)."""
        return await asyncio.to_thread(ray.put, audio)

    async def segments(self, audio_ref: ray.ObjectRef) -> AsyncIterator[list[SpeechSegment]]:
        stream = self.segmenter.options(stream=True).segments_stream.remote(audio_ref)
        try:
            while True:
                try:
                    found = await downstream(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield found
        finally:
            stream.cancel()

    def transcribe(self, audio_ref: ray.ObjectRef, start: int, end: int, model: str,
                   keyterms: Keyterms | None = None, priority: str = "file") -> SegmentCall:
        return SegmentCall(lambda: self._transcriber(model).transcribe.remote(audio_ref, start, end,
                                                                               priority=priority, keyterms=keyterms))

    async def collect(self, call: SegmentCall) -> SegmentTokens:
        return await call.result()

    async def transcribe_samples(self, samples: np.ndarray, model: str, priority: str = "final",
                                 keyterms: Keyterms | None = None) -> SegmentTokens:
        return await retried(lambda: self._transcriber(model).transcribe.remote(samples, priority=priority,
                                                                                 keyterms=keyterms))

    async def check_keyterms(self, model: str, keyterms: Keyterms) -> None:
        await retried(lambda: self._transcriber(model).check_keyterms.remote(keyterms))

    def _transcriber(self, model: str) -> DeploymentHandle:
        """The Transcriber handle for ``model``: Serve's multiplexing routes to replicas that hold it."""
        handle = self._by_model.get(model)
        if handle is None:
            handle = self._by_model[model] = self.transcriber.options(multiplexed_model_id=model)
        return handle

    async def align(self, pieces: list[tuple[SegmentTokens, float, float]], duration: float
                    ) -> tuple[list[Word], list[Segment]]:
        return await retried(lambda: self.aligner.align.remote(pieces, duration))

    async def vad_step(self, state: LiveVadState, samples: np.ndarray, last: bool) -> LiveVadStep:
        # the stream's state travels with the step, so another replica can take it over; this replica's streams'
        # steps of one tick go as one Segmenter call
        return await self.live_steps.step((state, samples, last))

    async def ready(self) -> Any:
        """The Transcriber's model description once every deployment answers."""
        model, _, _ = await downstream(_gather(self.transcriber.ready.remote(), self.segmenter.ready.remote(),
                                               self.aligner.ready.remote()))
        return model


class Readiness:
    """``/readyz`` without queueing behind request work. A background loop (started with the replica) checks every
    ``refresh_s``: Serve's controller says whether every deployment has a running replica (its health checks keep
    that current; asking it never waits in a deployment's request queue, which a burst fills). A probe is answered
    at once from the last check when that said ready; a "not ready" is confirmed by a fresh check first (up to
    ``confirm_s``), so a replica that just came up, or an application that just became ready, is not reported down
    from an old answer. The model description comes from a call through every deployment, in the background (a new
    replica's first check waits up to 2 s for it, then answers with ``fallback``, the configured model). Not ready
    (503) when a deployment has no running replica, or when no check has answered for ``stale_s``."""

    def __init__(self, backends: GraphBackends, fallback: Any = None, refresh_s: float = 2.0, stale_s: float = 15.0,
                 describe_every_s: float = 10.0, confirm_s: float = 10.0,
                 replicas_missing: Callable[[], list[str]] | None = None):
        self.backends = backends
        self.fallback = fallback  # what a new replica answers while the graph is too busy to describe its model
        self.refresh_s = refresh_s
        self.stale_s = stale_s
        self.describe_every_s = describe_every_s
        self.confirm_s = confirm_s
        if replicas_missing is None:  # the graph's other deployments (an Ingress that answers is running)
            names = [backends.segmenter.deployment_name, backends.transcriber.deployment_name,
                     backends.aligner.deployment_name]

            def replicas_missing() -> list[str]:
                return _deployments_without_a_running_replica(names)
        self.replicas_missing = replicas_missing
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readiness")
        self._model: Any = None
        self._missing: list[str] = []
        self._answered_at = float("-inf")
        self._error: str | None = "not checked yet"  # None after a check answered
        self._checking: asyncio.Task | None = None
        self._refreshing: asyncio.Task | None = None
        self._described_at = float("-inf")
        self._describing: asyncio.Task | None = None

    def prepare(self) -> None:
        """Start the background checks (on the running loop), before any probe asks; again if they ever ended."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def check(self) -> Any:
        """The model description; raises ``NotReady`` saying why not."""
        self.prepare()
        if not self._ready_now():
            await asyncio.wait({self._fresh_check()}, timeout=self.confirm_s)
        if self._model is None or self._stale():
            raise NotReady(self._error or f"no readiness check answered in the last {self.stale_s:g} s")
        if self._missing:
            raise NotReady(f"no running replica of {', '.join(self._missing)}")
        return self._model

    def _ready_now(self) -> bool:
        return self._model is not None and not self._missing and not self._stale()

    def _stale(self) -> bool:
        return time.monotonic() - self._answered_at > self.stale_s

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.wait({self._fresh_check()})
            await asyncio.sleep(self.refresh_s)

    def _fresh_check(self) -> asyncio.Task:
        """The check under way, or a new one: probes and the loop share it."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.get_running_loop().create_task(self._check())
        return self._checking

    async def _check(self) -> None:
        try:
            if time.monotonic() - self._described_at > self.describe_every_s and (
                    self._describing is None or self._describing.done()):
                self._describing = asyncio.create_task(self._describe())
                if self._model is None:  # a new replica: the description if the graph gives it soon
                    await asyncio.wait({self._describing}, timeout=2)
            self._missing = await asyncio.get_running_loop().run_in_executor(self._executor, self.replicas_missing)
            if self._model is None:  # a busy graph: the controller's view is the answer, with the configured model
                self._model = self.fallback
            self._answered_at = time.monotonic()
            self._error = None
        except Exception as exc:  # noqa: BLE001 - the probe reports it
            self._error = f"the deployments did not answer: {type(exc).__name__}"

    async def _describe(self) -> None:
        """The model description (the models loaded change), through every deployment; readiness does not wait
        for it."""
        try:
            self._model = await asyncio.wait_for(self.backends.ready(), 60)
        except Exception as exc:  # noqa: BLE001 - the controller's view decides readiness
            log.warning("The model description was not refreshed: %s", type(exc).__name__)
        self._described_at = time.monotonic()


class NotReady(Exception):
    pass


def _deployments_without_a_running_replica(names: list[str]) -> list[str]:
    """Of ``names``, those of this application's deployments with no running replica, in the controller's view. The
    controller's list of running replicas (small records), not ``serve.status()``: that validates every
    application's full details on this replica's threads, and taking ~0.6 s of the GIL every check stalled the
    Ingress's event loop for seconds under a burst."""
    from ray import serve
    from ray.serve.context import _get_global_client

    app = serve.get_replica_context().app_name
    running = ray.get(_get_global_client()._controller._all_running_replicas.remote(), timeout=30)
    serving = {deployment.name for deployment, replicas in running.items() if deployment.app_name == app and replicas}
    return sorted(set(names) - serving)


async def _gather(*calls: DeploymentResponse) -> list:
    return [await call for call in calls]
