"""Ingress deployment: the HTTP routes, the WebSocket streams and the Python handle API, each a thin method.

What a request goes through lives in ``deployments.speech.pipeline`` (Ray-free), the WebSocket protocol in
``deployments.stream_connection``, the calls to the other deployments in ``deployments.backends``.
"""

# (no ``from __future__ import annotations``: FastAPI must see the route parameters' real types through Ray's
# ingress wrapper)
import asyncio
import contextlib
from typing import AsyncIterator

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.backends import GraphBackends
from deployments.http_api import install_error_handlers, openai_response, read_upload
from deployments.metrics import IngressMetrics
from deployments.realtime_connection import RealtimeConnection
from deployments.speech import formats
from deployments.speech.pipeline import AudioInput, TranscriptionPipeline
from deployments.speech.protocol import DoneEvent, LegacyRequest, OpenAIRequest, event_dict, sse_frame
from deployments.speech.schemas import TranscriptionResult
from deployments.speech.settings import AppSettings
from deployments.stream_connection import StreamConnection, StreamSlots

api = FastAPI(title="Parakeet speech-to-text", version="1.0",
              description="OpenAI-compatible transcription with NVIDIA Parakeet-TDT-0.6B-v2 on Ray Serve.")
install_error_handlers(api)


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, segmenter: DeploymentHandle, transcriber: DeploymentHandle, aligner: DeploymentHandle,
                 settings: AppSettings):
        self.settings = settings
        self.backends = GraphBackends(segmenter, transcriber, aligner)
        self.pipeline = TranscriptionPipeline(self.backends, settings)
        self.metrics = IngressMetrics()
        self.slots = StreamSlots(settings.stream.max_streams)

    # ---------------------------------------------------------------- Python handle API

    async def transcribe(self, audio: AudioInput, sample_rate: int | None = None, timestamps: bool = False,
                         vad: bool = True) -> TranscriptionResult:
        """``handle.transcribe.remote(audio, timestamps=True)``: encoded bytes, or samples with ``sample_rate``."""
        async with self.metrics.request("handle"):
            loaded = await self.pipeline.load(audio, sample_rate)
            return await self.pipeline.transcribe(loaded, timestamps=timestamps, vad=vad)

    async def transcribe_stream(self, audio: AudioInput, sample_rate: int | None = None, timestamps: bool = False,
                                partials: bool = True, chunk_ms: int = 100) -> AsyncIterator[dict]:
        """The WebSocket's events for a whole recording fed as a live stream in ``chunk_ms`` pieces:
        ``handle.options(stream=True).transcribe_stream.remote(audio, sample_rate=16000)`` yields ``partial`` /
        ``final`` dicts and a last ``{"type": "done"}``."""
        loaded = await self.pipeline.load(audio, sample_rate)
        events = self.pipeline.replay(loaded, chunk_ms=chunk_ms, timestamps=timestamps, partials=partials)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event_dict(event)
        yield event_dict(DoneEvent())

    async def stream_stats(self) -> dict:
        """Open streams and live asyncio tasks on this replica (operators; the tests' leak check)."""
        return {"active_streams": self.slots.active, "tasks": len(asyncio.all_tasks())}

    # ---------------------------------------------------------------- live streams

    @api.websocket("/v1/audio/stream")
    async def stream(self, websocket: WebSocket) -> None:
        connection = StreamConnection(websocket, self.pipeline, self.settings.stream, self.slots)
        self.metrics.stream_ended(await connection.serve())

    @api.websocket("/ws")
    async def stream_alias(self, websocket: WebSocket) -> None:
        await self.stream(websocket)

    @api.websocket("/v1/realtime")
    async def realtime(self, websocket: WebSocket) -> None:
        """OpenAI's Realtime transcription protocol (``?intent=transcription``) over the same live pipeline."""
        connection = RealtimeConnection(websocket, self.pipeline, self.settings, self.slots)
        self.metrics.stream_ended(await connection.serve())

    # ---------------------------------------------------------------- HTTP

    @api.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription")
    async def openai_transcriptions(self, request: Request) -> Response:
        async with self.metrics.request("openai"):
            options, data = await read_upload(request, OpenAIRequest.from_form, self.settings.limits.max_upload_bytes)
            loaded = await self.pipeline.load(data)
            if options.stream:
                frames = (sse_frame(event) async for event in self.pipeline.text_events(loaded, vad=options.vad))
                return StreamingResponse(frames, media_type="text/event-stream")
            result = await self.pipeline.transcribe(loaded, timestamps=options.timestamps, vad=options.vad)
            return openai_response(result, options)

    @api.post("/transcribe", summary="The previous server's endpoint")
    async def legacy_transcribe(self, request: Request) -> JSONResponse:
        async with self.metrics.request("legacy"):
            options, data = await read_upload(request, LegacyRequest.from_form, self.settings.limits.max_upload_bytes)
            loaded = await self.pipeline.load(data)
            result = await self.pipeline.transcribe(loaded, timestamps=options.include_timestamps,
                                                    vad=options.should_chunk)
            return JSONResponse(formats.legacy(result, options.include_timestamps))

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="Model loaded and every deployment answering")
    async def readyz(self) -> JSONResponse:
        try:
            model = await asyncio.wait_for(self.backends.ready(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return JSONResponse({"status": "not ready", "reason": type(exc).__name__}, status_code=503,
                                headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "model": model})

    @api.get("/v1/models", summary="The served model (OpenAI list format)")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "nvidia", "root": self.settings.model}]}
