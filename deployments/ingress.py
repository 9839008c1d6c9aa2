"""Ingress deployment: HTTP routes, the Python handle API and the orchestration of the graph.

The Ingress owns each request: it decodes the audio once, puts it in the object store once, asks the Segmenter
where the speech is, fans the segments out to the batched Transcriber by reference, and calls the Aligner only when
timestamps were asked for. Audio maths lives in ``deployments.speech``.
"""


import asyncio
import contextlib
import json
import logging
import time
from typing import AsyncIterator, Awaitable, Callable

import numpy as np
import ray
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.requests import LegacyRequest, OpenAIRequest
from deployments.speech import audio as audio_io
from deployments.speech import formats
from deployments.speech.errors import ApiError, InternalError, InvalidRequest, Overloaded, PayloadTooLarge
from deployments.speech.fan_out import transcribe_as_found
from deployments.speech.live import stream_events
from deployments.speech.parakeet_defaults import SAMPLE_RATE
from deployments.speech.schemas import SegmentTokens, SpeechSegment, TranscriptionResult
from deployments.speech.settings import AppSettings
from deployments.speech.streaming import Resampler, StreamConfig, StreamSegmenter
from deployments.speech.timestamps import join_text
from deployments.speech.uploads import read_form
from deployments.speech.vad import whole_file

log = logging.getLogger("ray.serve")
api = FastAPI(title="Parakeet speech-to-text", version="1.0",
              description="OpenAI-compatible transcription with NVIDIA Parakeet-TDT-0.6B-v2 on Ray Serve.")


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error_response(InvalidRequest(f"Invalid request: {exc.errors()}", code="invalid_request"))


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = ApiError(str(exc.detail), code=str(exc.status_code))
    error.status, error.type = exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _error_response(error)


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("Unhandled error", exc_info=exc)
    return _error_response(InternalError("Internal server error."))


async def _downstream(call: Awaitable):
    """Await a handle call, turning Ray's wrappers back into the ApiError a client should see."""
    try:
        return await call
    except ApiError:
        raise
    except (BackPressureError, DeploymentUnavailableError):
        raise Overloaded("The service is at capacity; retry shortly.", retry_after_s=2) from None
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, ApiError):
            raise exc.cause from None
        log.error("Downstream failure: %s", exc)
        raise InternalError("A model worker failed while processing this request.") from None


class _ClientGone(Exception):
    """The client closed the WebSocket mid-stream."""


async def _ws_error(websocket: WebSocket, message: str, code: int) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_json({"type": "error", "message": message})
        await websocket.close(code)


def _sse_event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@serve.deployment(max_ongoing_requests=128, health_check_period_s=10)
@serve.ingress(api)
class Ingress:
    def __init__(self, segmenter: DeploymentHandle, transcriber: DeploymentHandle, aligner: DeploymentHandle,
                 settings: AppSettings):
        self.segmenter = segmenter
        self.transcriber = transcriber
        self.aligner = aligner
        self.settings = settings
        self._requests = Counter("parakeet_requests", "Transcription requests", tag_keys=("route", "status"))
        self._active_streams = 0
        from deployments.speech.vad import SpeechDetector

        # Live streams run VAD here, per connection; the ONNX session itself is stateless and thread-safe.
        self._vad_session = SpeechDetector(settings.vad).session
        self._streams = Counter("parakeet_streams", "WebSocket and handle streams", tag_keys=("outcome",))
        self._latency = Histogram("parakeet_request_latency_ms", "End-to-end request latency",
                                  boundaries=[50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000],
                                  tag_keys=("route",))

    # ---------------------------------------------------------------- orchestration

    async def _decode(self, data: bytes) -> tuple[np.ndarray, float]:
        audio = await asyncio.to_thread(audio_io.decode, data)
        return audio, audio_io.validate(audio, self.settings.limits)

    async def _speech_segments(self, audio_ref, total_samples: int, vad: bool
                               ) -> AsyncIterator[list[SpeechSegment]]:
        """Segments as the Segmenter finds them (VAD on), or the whole file as one segment (VAD off)."""
        if not vad:
            yield whole_file(total_samples)
            return
        stream = self.segmenter.options(stream=True).segments_stream.remote(audio_ref)
        try:
            while True:
                try:
                    found = await _downstream(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield found
        finally:
            stream.cancel()

    async def _run(self, audio: np.ndarray, duration: float, timestamps: bool, vad: bool,
                   on_text: Callable[[str], Awaitable[None]] | None = None) -> TranscriptionResult:
        """The graph for one request. ``on_text`` receives each segment's text, in order, as soon as it is ready.

        Each segment goes to the Transcriber the moment the Segmenter hands it out, so transcription overlaps
        VAD; results are collected in order.
        """
        audio_ref = ray.put(audio)  # once; every downstream call gets the reference, not the samples
        segments, tokens = await transcribe_as_found(
            self._speech_segments(audio_ref, len(audio), vad),
            issue=lambda segment: self.transcriber.transcribe.remote(audio_ref, segment.start, segment.end),
            collect=_downstream, on_text=on_text)
        result = TranscriptionResult(duration=round(duration, 3), text=join_text([t.text for t in tokens]))
        if timestamps:
            pieces = [(t, s.start / SAMPLE_RATE, s.end / SAMPLE_RATE) for t, s in zip(tokens, segments)]
            result.words, result.segments = await _downstream(self.aligner.align.remote(pieces, duration))
        return result

    async def _timed(self, route: str, work: Awaitable):
        started = time.perf_counter()
        status = "200"
        try:
            return await asyncio.wait_for(work, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            status = "503"
            raise Overloaded(f"The request took longer than {self.settings.request_timeout_s:g} s.",
                             code="timeout") from None
        except ApiError as exc:
            status = str(exc.status)
            raise
        finally:
            self._requests.inc(tags={"route": route, "status": status})
            self._latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})

    # ---------------------------------------------------------------- Python handle API

    async def transcribe(self, audio: bytes | np.ndarray | list, sample_rate: int | None = None,
                         timestamps: bool = False, vad: bool = True) -> TranscriptionResult:
        """``handle.transcribe.remote(audio, timestamps=True)``: encoded bytes, or samples with ``sample_rate``."""
        async def work():
            if isinstance(audio, (bytes, bytearray, memoryview)):
                samples, duration = await self._decode(bytes(audio))
            else:
                samples = await asyncio.to_thread(audio_io.from_array, audio, sample_rate)
                duration = audio_io.validate(samples, self.settings.limits)
            return await self._run(samples, duration, timestamps, vad)

        return await self._timed("handle", work())

    async def transcribe_stream(self, audio: bytes | np.ndarray | list, sample_rate: int | None = None,
                                timestamps: bool = False, partials: bool = True, chunk_ms: int = 100):
        """The WebSocket's events for a whole recording fed as a live stream in ``chunk_ms`` pieces.

        ``handle.options(stream=True).transcribe_stream.remote(audio, sample_rate=16000)`` yields
        ``partial`` / ``final`` dicts and a last ``{"type": "done"}``.
        """
        if isinstance(audio, (bytes, bytearray, memoryview)):
            samples, _ = await self._decode(bytes(audio))
        else:
            samples = await asyncio.to_thread(audio_io.from_array, audio, sample_rate)
            audio_io.validate(samples, self.settings.limits)
        step = max(1, int(chunk_ms * SAMPLE_RATE / 1000))

        async def chunks():
            for start in range(0, len(samples), step):
                yield samples[start:start + step]

        config = StreamConfig(timestamps=timestamps, partials=partials)
        async with contextlib.aclosing(self._events(chunks(), config)) as events:
            async for event in events:
                yield event
        yield {"type": "done"}

    async def stream_stats(self) -> dict:
        """Open streams and live asyncio tasks on this replica (operators; the tests' leak check)."""
        return {"active_streams": self._active_streams, "tasks": len(asyncio.all_tasks())}

    # ---------------------------------------------------------------- live streams

    def _segmenter_for(self, config: StreamConfig) -> StreamSegmenter:
        return StreamSegmenter(self.settings.vad, self._vad_session, self.settings.stream.partial_interval_ms,
                               partials=config.partials,
                               end_of_utterance_ms=self.settings.stream.end_of_utterance_ms)

    def _events(self, chunks, config: StreamConfig):
        async def transcribe(samples: np.ndarray) -> SegmentTokens:
            return await _downstream(self.transcriber.transcribe.remote(samples))

        async def align(pieces, duration):
            return await _downstream(self.aligner.align.remote(pieces, duration))

        return stream_events(chunks, self._segmenter_for(config), transcribe, align if config.timestamps else None,
                             max_queued_samples=int(self.settings.stream.max_buffered_s * SAMPLE_RATE))

    @api.websocket("/v1/audio/stream")
    async def stream(self, websocket: WebSocket) -> None:
        await self._serve_stream(websocket)

    @api.websocket("/ws")
    async def stream_alias(self, websocket: WebSocket) -> None:
        await self._serve_stream(websocket)

    async def _serve_stream(self, websocket: WebSocket) -> None:
        await websocket.accept()
        limit = self.settings.stream.max_streams
        if self._active_streams >= limit:
            self._streams.inc(tags={"outcome": "refused"})
            await _ws_error(websocket, f"Too many concurrent streams ({limit} per replica); retry shortly.", 1013)
            return
        self._active_streams += 1
        outcome = "done"
        try:
            first = await websocket.receive()
            if first["type"] == "websocket.disconnect":
                outcome = "disconnected"
                return
            config, opening = StreamConfig(), first.get("bytes")
            if first.get("text") is not None:
                try:
                    config = StreamConfig.model_validate_json(first["text"])
                except ValidationError as exc:
                    outcome = "bad_config"
                    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                    await _ws_error(websocket, f"Invalid stream config: {detail}", 1008)
                    return
            chunks = self._ws_chunks(websocket, config, opening)
            async with contextlib.aclosing(self._events(chunks, config)) as events:
                async for event in events:
                    await websocket.send_json(event)
            await websocket.send_json({"type": "done"})
            await websocket.close(1000)
        except (WebSocketDisconnect, _ClientGone):
            outcome = "disconnected"  # every task and buffer of this stream was cancelled with the generator
        except ApiError as exc:
            outcome = "error"
            await _ws_error(websocket, exc.message, 1009 if exc.status == 413 else 1007 if exc.status == 400
                            else 1011)
        finally:
            self._active_streams -= 1
            self._streams.inc(tags={"outcome": outcome})

    async def _ws_chunks(self, websocket: WebSocket, config: StreamConfig, opening: bytes | None):
        resample = Resampler(config.sample_rate)
        max_bytes = self.settings.stream.max_frame_bytes
        if opening:
            yield resample(audio_io.pcm16_to_float(opening))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise _ClientGone()
            if message.get("bytes") is not None:
                if len(message["bytes"]) > max_bytes:
                    raise PayloadTooLarge(f"Frames are limited to {max_bytes} bytes.", code="frame_too_large")
                yield resample(audio_io.pcm16_to_float(message["bytes"]))
                continue
            try:
                control = json.loads(message.get("text") or "")
            except json.JSONDecodeError:
                control = None
            if isinstance(control, dict) and control.get("type") == "end":
                yield resample(np.zeros(0, np.float32), last=True)
                return
            raise InvalidRequest('Text messages after the config must be {"type": "end"}.', code="invalid_frame")

    # ---------------------------------------------------------------- HTTP

    async def _read_upload(self, request: Request, parse_options):
        """Form (byte-counted as it arrives) -> validated options, then the decoded, validated audio."""
        form = await read_form(request.headers.get("content-type"), request.headers.get("content-length"),
                               request.stream(), self.settings.limits.max_upload_bytes)
        options = parse_options(form)
        if form.file is None:
            raise InvalidRequest("Attach the audio as the 'file' form field.", code="missing_file")
        audio, duration = await self._decode(form.file)
        return options, audio, duration

    @api.post("/v1/audio/transcriptions", summary="OpenAI-compatible transcription")
    async def openai_transcriptions(self, request: Request) -> Response:
        options, audio, duration = await self._read_upload(request, OpenAIRequest.from_form)
        if options.stream:
            return StreamingResponse(self._sse(audio, duration, options.vad), media_type="text/event-stream")
        result = await self._timed("openai", self._run(audio, duration, options.timestamps, options.vad))
        body = formats.render(result, options.response_format, options.granularities)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=formats.MEDIA_TYPES[options.response_format])

    async def _sse(self, audio: np.ndarray, duration: float, vad: bool) -> AsyncIterator[str]:
        """OpenAI's transcript.text.delta events, one per finished segment, then transcript.text.done."""
        queue: asyncio.Queue = asyncio.Queue()

        async def on_text(text: str) -> None:
            await queue.put(text)

        async def run() -> TranscriptionResult:
            try:
                return await self._timed("openai_stream", self._run(audio, duration, False, vad, on_text))
            finally:
                await queue.put(None)

        task = asyncio.create_task(run())
        try:
            first = True
            while (text := await queue.get()) is not None:
                delta = text if first else " " + text
                first = False
                yield _sse_event({"type": "transcript.text.delta", "delta": delta})
            result = await task
            yield _sse_event({"type": "transcript.text.done", "text": result.text})
        except ApiError as exc:
            yield _sse_event({"type": "error", **exc.body()["error"]})
        finally:
            if not task.done():
                task.cancel()

    @api.post("/transcribe", summary="The previous server's endpoint")
    async def legacy_transcribe(self, request: Request) -> JSONResponse:
        options, audio, duration = await self._read_upload(request, LegacyRequest.from_form)
        result = await self._timed("legacy", self._run(audio, duration, options.include_timestamps,
                                                        options.should_chunk))
        return JSONResponse(formats.legacy(result, options.include_timestamps))

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="Model loaded and every deployment answering")
    async def readyz(self) -> JSONResponse:
        try:
            model, *_ = await asyncio.wait_for(asyncio.gather(
                self.transcriber.ready.remote(), self.segmenter.ready.remote(), self.aligner.ready.remote()),
                timeout=10)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return JSONResponse({"status": "not ready", "reason": type(exc).__name__}, status_code=503,
                                headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "model": model})

    @api.get("/v1/models", summary="The served model (OpenAI list format)")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "nvidia", "root": self.settings.model}]}
