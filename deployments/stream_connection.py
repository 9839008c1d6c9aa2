"""One WebSocket on ``/v1/audio/stream`` (alias ``/ws``): the project's live protocol over the live pipeline.

Client -> server: an optional ``StreamConfig`` text message, binary PCM16 frames, then ``{"type": "end"}``.
Server -> client: ``partial`` / ``final`` events, then ``done`` and a normal close; or one ``error`` event and a
close whose code says why (``CLOSE_CODES``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from deployments.access import chosen_subprotocol
from deployments.speech import audio as audio_io
from deployments.speech.catalog import ModelCatalog
from deployments.speech.errors import ApiError, InvalidRequest, PayloadTooLarge
from deployments.speech.pipeline import TranscriptionPipeline
from deployments.speech.protocol import DoneEvent, EndOfStream, StreamConfig, StreamError, event_dict
from deployments.speech.settings import AppSettings

log = logging.getLogger("ray.serve")

NORMAL, BAD_CONFIG, BAD_FRAME, FRAME_TOO_LARGE, SERVER_ERROR, TRY_LATER = 1000, 1008, 1007, 1009, 1011, 1013
CLOSE_CODES = {400: BAD_FRAME, 413: FRAME_TOO_LARGE}  # by the error's HTTP status; anything else: SERVER_ERROR


class ClientGone(Exception):
    """The client closed the WebSocket mid-stream."""


class StreamSlots:
    """Concurrent streams on this replica, bounded by ``stream.max_streams``."""

    def __init__(self, limit: int, on_change: Callable[[int], None] = lambda active: None):
        self.limit = limit
        self.active = 0
        self._on_change = on_change  # the active-streams gauge

    def take(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        self._on_change(self.active)
        return True

    def give_back(self) -> None:
        self.active -= 1
        self._on_change(self.active)


class LiveSocket:
    """What every live WebSocket (this protocol, the Realtime one) works with."""

    def __init__(self, websocket: WebSocket, pipeline: TranscriptionPipeline, catalog: ModelCatalog,
                 settings: AppSettings, slots: StreamSlots):
        self.websocket = websocket
        self.pipeline = pipeline
        self.catalog = catalog
        self.settings = settings
        self.slots = slots


class StreamConnection(LiveSocket):
    async def serve(self) -> str:
        """Run the stream to its end; returns the outcome (for the streams metric)."""
        await self.websocket.accept(subprotocol=chosen_subprotocol(self.websocket.scope))
        if not self.slots.take():
            await self._fail(f"Too many concurrent streams ({self.slots.limit} per replica); retry shortly.",
                             TRY_LATER, "too_many_streams")
            return "refused"
        try:
            return await self._run()
        except (WebSocketDisconnect, ClientGone):
            return "disconnected"  # every task and buffer of this stream was cancelled with the event generator
        except ApiError as exc:
            await self._fail(exc.message, CLOSE_CODES.get(exc.status, SERVER_ERROR), exc.code)
            return "error"
        finally:
            self.slots.give_back()

    async def _run(self) -> str:
        first = await self.websocket.receive()
        if first["type"] == "websocket.disconnect":
            return "disconnected"
        config, opening = StreamConfig(), first.get("bytes")
        if first.get("text") is not None:
            try:
                config = StreamConfig.model_validate_json(first["text"])
            except ValidationError as exc:
                detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                await self._fail(f"Invalid stream config: {detail}", BAD_CONFIG, "invalid_config")
                return "bad_config"
        try:
            choice = self.catalog.choose(config.model, config.language)
        except ApiError as exc:
            await self._fail(exc.message, BAD_CONFIG, exc.code)
            return "bad_config"
        events = self.pipeline.live(self._audio(config, opening), timestamps=config.timestamps,
                                    partials=config.partials, model=choice)
        async with contextlib.aclosing(events):
            async for event in events:
                await self.websocket.send_json(event_dict(event))
        await self.websocket.send_json(event_dict(DoneEvent()))
        await self.websocket.close(NORMAL)
        return "done"

    async def _audio(self, config: StreamConfig, opening: bytes | None):
        """The client's frames as 16 kHz float32 pieces, until ``{"type": "end"}``."""
        resample = audio_io.Resampler(config.sample_rate)
        if opening:
            yield resample(self._samples(opening))
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise ClientGone()
            if message.get("bytes") is not None:
                yield resample(self._samples(message["bytes"]))
            elif EndOfStream.matches(message.get("text")):
                yield resample(np.zeros(0, np.float32), last=True)
                return
            else:
                raise InvalidRequest('Text messages after the config must be {"type": "end"}.',
                                     code="invalid_frame")

    def _samples(self, frame: bytes) -> np.ndarray:
        if len(frame) > self.settings.stream.max_frame_bytes:
            raise PayloadTooLarge(f"Frames are limited to {self.settings.stream.max_frame_bytes} bytes.",
                                  code="frame_too_large")
        return audio_io.pcm16_to_float(frame)

    async def _fail(self, message: str, close_code: int, code: str | None) -> None:
        with contextlib.suppress(Exception):  # the client may already be gone
            await self.websocket.send_json(event_dict(StreamError(message=message, code=code)))
            await self.websocket.close(close_code)
