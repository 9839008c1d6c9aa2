"""Ingress deployment: the HTTP routes, the WebSocket streams and the Python handle API, each a thin method.

What a request goes through lives in ``deployments.speech.pipeline`` (Ray-free), the WebSocket protocol in
``deployments.protocols.stream_connection``, the calls to the other deployments in ``deployments.backends``.
"""

# (no ``from __future__ import annotations``: FastAPI must see the route parameters' real types through Ray's
# ingress wrapper)
import asyncio
import contextlib
import os
import socket
from typing import AsyncIterator, NamedTuple, Optional

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.protocols.access import AccessMiddleware, configure_access
from deployments.backends import GraphBackends, Readiness
from deployments.protocols.http_api import (CONFLICT, DEMO_PAGE, ERROR_RESPONSES, JOB_FORM, LEGACY_FORM,
                                            LISTEN_BODY, OPENAI_FORM, OPENAI_RESPONSES, install_error_handlers,
                                            install_openapi_components, json_responses, openai_response, read_body,
                                            read_job_submit, read_upload)
from deployments.protocols.listen_connection import ListenConnection
from deployments.metrics import IngressMetrics, RequestTiming
from deployments.protocols.realtime_connection import RealtimeConnection
from deployments.speech import deepgram, formats
from deployments.speech.catalog import ModelCatalog
from deployments.speech.admission import Admission, Ticket
from deployments.speech.job_runner import Jobs
from deployments.speech.jobs import JOB_PATH, JobOptions
from deployments.speech.pipeline import AudioInput, LoadedAudio, TranscriptionPipeline
from deployments.speech.protocol import DoneEvent, LegacyRequest, OpenAIRequest, event_dict, sse_frame
from deployments.speech.schemas import TranscriptionResult
from deployments.speech.settings import AppSettings
from deployments.protocols.stream_connection import StreamConnection, StreamSlots

api = FastAPI(title="Parakeet speech-to-text", version="1.0",
              description="OpenAI-compatible transcription with NVIDIA Parakeet-TDT-0.6B-v2 on Ray Serve.")
install_error_handlers(api)
install_openapi_components(api)
api.add_middleware(AccessMiddleware)  # the API key and CORS (this replica's settings, set in __init__)


# (module helpers the Ingress uses come before it: Ray pickles the decorated class with the globals defined so far)
async def _frames(events: AsyncIterator, ticket: Ticket) -> AsyncIterator[str]:
    """SSE frames; the admission ticket is held until the stream ends."""
    try:
        async for event in events:
            yield sse_frame(event)
    finally:
        ticket.release()


class Admitted(NamedTuple):
    """A request being served: its route (metrics), admission ticket and timing."""
    route: str
    ticket: Ticket
    timing: RequestTiming


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, segmenter: DeploymentHandle, transcriber: DeploymentHandle, aligner: DeploymentHandle,
                 settings: AppSettings):
        self.settings = settings
        self.backends = GraphBackends(segmenter, transcriber, aligner,
                                      step_window_s=settings.stream.step_window_ms / 1000,
                                      steps_per_call=settings.vad.live_max_batch)
        default = settings.default_model
        self.readiness = Readiness(self.backends, fallback={"model": default.source, "id": default.id})
        self.pipeline = TranscriptionPipeline(self.backends, settings)
        self.catalog = ModelCatalog(settings.served_models, settings.model_aliases, settings.keyterms)
        self.metrics = IngressMetrics()
        self.slots = StreamSlots(settings.stream.max_streams, on_change=self.metrics.active_streams)
        self.admission = Admission(settings.admission)
        configure_access(settings.api_key.get_secret_value() if settings.api_key else None, settings.cors_origins)
        self.jobs = Jobs(self.pipeline, self.catalog, settings, owner=f"{socket.gethostname()}:{os.getpid()}")
        self._loops: dict[str, asyncio.Task] = {}
        self._run_background_loops()

    def _run_background_loops(self) -> None:
        """The replica's job loop, its metrics flush and its readiness checks: started with the replica (so that a
        replica added under load has an answer before its first probe), restarted by the health check should any
        ever end."""
        with contextlib.suppress(RuntimeError):  # no running loop (outside a replica)
            loop = asyncio.get_running_loop()
            for name, run in (("jobs", self.jobs.run_forever), ("metrics", self.metrics.buffer.flush_forever)):
                if name not in self._loops or self._loops[name].done():
                    self._loops[name] = loop.create_task(run())
            self.readiness.prepare()

    async def check_health(self) -> None:
        self._run_background_loops()

    def __del__(self):
        """Serve calls it when the replica stops (scale-down, redeploy): what the last second counted is recorded,
        not dropped with the buffer."""
        if hasattr(self, "metrics"):
            self.metrics.buffer.take().record()

    @contextlib.asynccontextmanager
    async def _request(self, route: str) -> AsyncIterator[Admitted]:
        """Counted (metrics) and admitted (or refused at once with 429) before any work is done."""
        async with self.metrics.request(route) as timing:
            with self.admission.request() as ticket:
                yield Admitted(route, ticket, timing)

    async def _load(self, admitted: Admitted, audio: AudioInput, sample_rate: int | None = None,
                    multichannel: bool = False) -> LoadedAudio:
        with self.metrics.stages.timed("decode"):
            loaded = await self.pipeline.load(audio, sample_rate, multichannel)
        admitted.ticket.admit_audio(loaded.work_s)
        self.metrics.audio_in(admitted.route, admitted.timing, loaded.work_s)
        return loaded

    # ---------------------------------------------------------------- Python handle API

    async def transcribe(self, audio: AudioInput, sample_rate: int | None = None, timestamps: bool = False,
                         vad: bool = True, model: str | None = None, language: str | None = None,
                         logprobs: bool = False, multichannel: bool = False, keyterms: list[str] | None = None,
                         keyterms_boost: float | None = None) -> TranscriptionResult:
        """``handle.transcribe.remote(audio, timestamps=True)``: encoded bytes, or samples with ``sample_rate``;
        ``model`` picks a served model by id (default: the first); ``multichannel`` transcribes each channel on
        its own (samples: [n, channels]); ``keyterms`` are words and phrases to boost."""
        async with self._request("handle") as admitted:
            choice = await self.pipeline.checked(self.catalog.choose(model, language, keyterms, keyterms_boost))
            loaded = await self._load(admitted, audio, sample_rate, multichannel)
            return await self.pipeline.transcribe(loaded, timestamps=timestamps, vad=vad, model=choice,
                                                  logprobs=logprobs)

    async def transcribe_stream(self, audio: AudioInput, sample_rate: int | None = None, timestamps: bool = False,
                                partials: bool = True, chunk_ms: int = 100, model: str | None = None,
                                language: str | None = None, keyterms: list[str] | None = None,
                                keyterms_boost: float | None = None) -> AsyncIterator[dict]:
        """The WebSocket's events for a whole recording fed as a live stream in ``chunk_ms`` pieces:
        ``handle.options(stream=True).transcribe_stream.remote(audio, sample_rate=SAMPLE_RATE)`` yields ``partial`` /
        ``final`` dicts and a last ``{"type": "done"}``."""
        choice = await self.pipeline.checked(self.catalog.choose(model, language, keyterms, keyterms_boost))
        if not self.slots.take():  # a live stream: counted with the WebSocket streams
            raise self.slots.refusal(self.settings.admission.retry_after_s)
        try:
            loaded = await self.pipeline.load(audio, sample_rate)
            events = self.pipeline.replay(loaded, chunk_ms=chunk_ms, timestamps=timestamps, partials=partials,
                                          model=choice)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event_dict(event)
            yield event_dict(DoneEvent())
        finally:
            self.slots.give_back()

    async def stream_stats(self) -> dict:
        """Open streams, admitted requests and live asyncio tasks on this replica (operators; leak checks)."""
        return {"active_streams": self.slots.active, "tasks": len(asyncio.all_tasks()),
                "requests": self.admission.requests, "audio_s": self.admission.audio_s, "shed": self.admission.shed}

    async def submit_job(self, audio: Optional[bytes] = None, url: Optional[str] = None,
                         webhook_url: Optional[str] = None, **options) -> dict:
        """A transcription job (``/v1/audio/transcriptions/jobs``): encoded ``audio`` bytes or a ``url``;
        ``options`` are ``JobOptions``' fields (``response_format``, ``model``, ``keyterms`` ...). Returns the
        job's status; follow it with ``job``, ``job_result``, ``delete_job``, ``list_jobs``."""
        async with self._request("jobs"):
            job = JobOptions(url=url, webhook_url=webhook_url, **options)
            return (await self.jobs.submit(job, bytes(audio) if audio is not None else None)).view().model_dump()

    async def job(self, job_id: str) -> dict:
        return self.jobs.get(job_id).view().model_dump()

    async def job_result(self, job_id: str, response_format: Optional[str] = None):
        """The finished transcript: a ``TranscriptionResult`` (or, with ``response_format``, that format's body)."""
        if response_format is None:
            return self.jobs.result(job_id)[1]
        options, result = self.jobs.result_as(job_id, response_format)
        return formats.render(result, options.response_format, options.granularities)

    async def delete_job(self, job_id: str) -> dict:
        return self.jobs.delete(job_id).model_dump()

    async def list_jobs(self, limit: int = 20, after: Optional[str] = None) -> dict:
        return self.jobs.page(limit, after).model_dump()

    # ---------------------------------------------------------------- live streams

    @api.websocket("/v1/audio/stream")
    async def stream(self, websocket: WebSocket) -> None:
        connection = StreamConnection(websocket, self.pipeline, self.catalog, self.settings, self.slots)
        self.metrics.stream_ended(await connection.serve())

    @api.websocket("/ws")
    async def stream_alias(self, websocket: WebSocket) -> None:
        await self.stream(websocket)

    @api.websocket("/v1/listen")
    async def listen(self, websocket: WebSocket) -> None:
        """Deepgram's live protocol (the subset Pipecat's and LiveKit's Deepgram plugins use)."""
        connection = ListenConnection(websocket, self.pipeline, self.catalog, self.settings, self.slots)
        self.metrics.stream_ended(await connection.serve())

    @api.websocket("/v1/realtime")
    async def realtime(self, websocket: WebSocket) -> None:
        """OpenAI's Realtime transcription protocol (``?intent=transcription``) over the same live pipeline."""
        connection = RealtimeConnection(websocket, self.pipeline, self.catalog, self.settings, self.slots)
        self.metrics.stream_ended(await connection.serve())

    # ---------------------------------------------------------------- HTTP

    @api.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription", openapi_extra=OPENAI_FORM,
              responses=OPENAI_RESPONSES)
    async def openai_transcriptions(self, request: Request) -> Response:
        async with self._request("openai") as admitted:
            options, data = await read_upload(request, OpenAIRequest.from_form, self.settings.limits.max_upload_bytes)
            choice = await self.pipeline.checked(self.catalog.choose(options.model, options.language,
                                                                     options.keyterms, options.keyterms_boost))
            loaded = await self._load(admitted, data, multichannel=options.multichannel)
            if options.stream:  # the ticket is held until the stream ends
                events = self.pipeline.text_events(loaded, vad=options.vad, model=choice)
                admitted.timing.streamed = True
                ticket = admitted.ticket.keep()
                return StreamingResponse(_frames(events, ticket), media_type="text/event-stream",
                                         background=BackgroundTask(ticket.release))
            result = await self.pipeline.transcribe(loaded, timestamps=options.timestamps, vad=options.vad,
                                                    model=choice, logprobs=options.logprobs)
            return openai_response(result, options)

    @api.post("/v1/listen", summary="Deepgram-compatible pre-recorded transcription (the audio is the body)",
              openapi_extra=LISTEN_BODY, responses=ERROR_RESPONSES)
    async def listen_prerecorded(self, request: Request) -> JSONResponse:
        async with self._request("listen") as admitted:
            options = deepgram.ListenOptions.from_query(request.query_params, live=False)
            choice = await self.pipeline.checked(self.catalog.choose(options.model, options.language,
                                                                     options.keyterms))
            data = await read_body(request, self.settings.limits.max_upload_bytes)
            loaded = await self._load(admitted, data, multichannel=options.multichannel)
            result = await self.pipeline.transcribe(loaded, timestamps=True, vad=True, model=choice)
            return JSONResponse(deepgram.prerecorded(deepgram.Identity(choice.model.id), result, data))

    @api.post("/transcribe", summary="The previous server's endpoint", openapi_extra=LEGACY_FORM,
              responses=ERROR_RESPONSES)
    async def legacy_transcribe(self, request: Request) -> JSONResponse:
        async with self._request("legacy") as admitted:
            options, data = await read_upload(request, LegacyRequest.from_form, self.settings.limits.max_upload_bytes)
            choice = await self.pipeline.checked(self.catalog.choose(options.model, None, options.keyterms,
                                                                     options.keyterms_boost))
            loaded = await self._load(admitted, data, multichannel=options.multichannel)
            result = await self.pipeline.transcribe(loaded, timestamps=options.include_timestamps,
                                                    vad=options.should_chunk, model=choice)
            return JSONResponse(formats.legacy(result, options.include_timestamps))

    @api.post(JOB_PATH, status_code=202, summary="Submit a transcription job (answered at once; poll it or get a "
              "webhook)", openapi_extra=JOB_FORM, responses=json_responses("JobView", 202, "the job, queued"))
    async def submit_job_http(self, request: Request) -> JSONResponse:
        async with self._request("jobs"):
            options, data = await read_job_submit(request, self.settings.limits.max_upload_bytes)
            record = await self.jobs.submit(options, data)
            return JSONResponse(record.view().model_dump(), status_code=202,
                                headers={"Location": f"{JOB_PATH}/{record.id}"})

    @api.get(JOB_PATH, summary="Jobs, newest first", responses=json_responses("JobList"))
    async def list_jobs_http(self, limit: int = 20, after: Optional[str] = None) -> JSONResponse:
        return JSONResponse(self.jobs.page(limit, after).model_dump())

    @api.get(JOB_PATH + "/{job_id}", summary="A job's status and progress", responses=json_responses("JobView"))
    async def job_http(self, job_id: str) -> JSONResponse:
        return JSONResponse(self.jobs.get(job_id).view().model_dump())

    @api.get(JOB_PATH + "/{job_id}/result", summary="A completed job's transcript, in any response_format",
             responses={**OPENAI_RESPONSES, **CONFLICT})
    async def job_result_http(self, job_id: str, request: Request) -> Response:
        asked = request.query_params
        granularities = asked.getlist("timestamp_granularities[]") or asked.getlist("timestamp_granularities")
        options, result = self.jobs.result_as(job_id, asked.get("response_format"), granularities)
        return openai_response(result, options)

    @api.delete(JOB_PATH + "/{job_id}", summary="Cancel an unfinished job; delete a finished one",
                responses=json_responses("JobDeleted"))
    async def delete_job_http(self, job_id: str) -> JSONResponse:
        return JSONResponse(self.jobs.delete(job_id).model_dump())

    @api.get("/demo", summary="A browser demo: a file with its words highlighted as it plays, the microphone live",
             response_class=HTMLResponse)
    async def demo(self) -> HTMLResponse:
        return HTMLResponse(DEMO_PAGE)

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="Model loaded and every deployment answering",
             responses={503: {"description": "not ready (Retry-After)"}, 401: ERROR_RESPONSES[401]})
    async def readyz(self) -> JSONResponse:
        try:
            model = await self.readiness.check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return JSONResponse({"status": "not ready", "reason": str(exc) or type(exc).__name__}, status_code=503,
                                headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "model": model})

    @api.get("/v1/models", summary="The served models (OpenAI list format)", responses={401: ERROR_RESPONSES[401]})
    async def models(self) -> dict:
        return self.catalog.listing()
