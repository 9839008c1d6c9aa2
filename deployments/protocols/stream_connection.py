"""One WebSocket on ``/v1/audio/stream`` (alias ``/ws``): the project's live protocol over the live pipeline.

Client -> server: an optional ``StreamConfig`` text message, binary PCM16 frames, at any time ``{"type":
"finalize"}`` (end the open turn now) or ``{"type": "configure", ...}`` (new turn rules or keyterms), then
``{"type": "end"}``.
Server -> client: ``partial`` / ``final`` events (``nothing_to_finalize`` for a finalize with no turn open), then
``done`` and a normal close; or one ``error`` event and a close whose code says why (``CLOSE_CODES``). A bad
``configure`` gets an ``error`` event naming the field, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import AsyncIterator, Callable

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from deployments.protocols.access import chosen_subprotocol
from deployments.speech import audio as audio_io
from deployments.speech.catalog import Choice, ModelCatalog
from deployments.speech.errors import ApiError, InvalidRequest, PayloadTooLarge, TooBusy
from deployments.speech.live import KEEP, Control, Finalize, Reconfigure
from deployments.speech.pipeline import TranscriptionPipeline
from deployments.speech.protocol import (STREAM_MESSAGE, ConfigureStream, DoneEvent, EndOfStream, FinalizeTurn,
                                         StreamConfig, StreamError, event_dict)
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

    def refusal(self, retry_after_s: int = 2) -> TooBusy:
        """What a stream refused for want of a slot is told (every live protocol, the handle's stream)."""
        return TooBusy(f"Too many concurrent streams ({self.limit} per replica); retry shortly.", retry_after_s,
                       code="too_many_streams")

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


def validation_detail(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


class StreamConnection(LiveSocket):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._send_lock = asyncio.Lock()  # events and a configure's error are sent from two tasks
    async def serve(self) -> str:
        """Run the stream to its end; returns the outcome (for the streams metric)."""
        await self.websocket.accept(subprotocol=chosen_subprotocol(self.websocket.scope))
        if not self.slots.take():
            refused = self.slots.refusal()
            await self._fail(refused.message, TRY_LATER, refused.code)
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
                await self._fail(f"Invalid stream config: {validation_detail(exc)}", BAD_CONFIG, "invalid_config")
                return "bad_config"
        try:
            choice = await self.pipeline.checked(self.catalog.choose(config.model, config.language, config.keyterms,
                                                                     config.keyterms_boost))
        except ApiError as exc:
            await self._fail(exc.message, BAD_CONFIG, exc.code)
            return "bad_config"
        rules = config.turn_rules(self.settings.stream.turn_rules)
        events = self.pipeline.live(self._audio(config, opening, rules, choice), timestamps=config.timestamps,
                                    partials=config.partials, model=choice, rules=rules,
                                    first_pass=config.first_pass)
        async with contextlib.aclosing(events):
            async for event in events:
                await self._send(event_dict(event))
        await self._send(event_dict(DoneEvent()))
        await self.websocket.close(NORMAL)
        return "done"

    async def _audio(self, config: StreamConfig, opening: bytes | None, rules, choice: Choice
                     ) -> AsyncIterator[np.ndarray | Control]:
        """The client's frames as 16 kHz float32 pieces and its finalize / configure messages, in order, until
        ``{"type": "end"}``."""
        resample = audio_io.Resampler(config.sample_rate)
        if opening:
            yield resample(self._samples(opening))
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise ClientGone()
            if message.get("bytes") is not None:
                yield resample(self._samples(message["bytes"]))
                continue
            command = self._command(message.get("text"))
            if isinstance(command, EndOfStream):
                yield resample(np.zeros(0, np.float32), last=True)
                return
            if isinstance(command, FinalizeTurn):
                yield Finalize()
            elif isinstance(command, ConfigureStream):
                keyterms = KEEP
                if command.keyterms is not None:
                    try:
                        asked = self.catalog.keyterms(command.keyterms, command.keyterms_boost)
                        await self.pipeline.checked(dataclasses.replace(choice, keyterms=asked))
                        keyterms = asked
                    except ApiError as exc:  # the stream goes on with what it had
                        await self._send(event_dict(StreamError(
                            message=f"Invalid configure: {exc.message} The stream goes on unchanged.", code=exc.code,
                            param=getattr(exc, "param", None))))
                        continue
                rules = command.applied_to(rules)
                yield Reconfigure(rules, keyterms)
            else:  # a configure with a bad value: the stream goes on with the rules it had
                await self._send(event_dict(command))

    @staticmethod
    def _command(text: str | None) -> EndOfStream | FinalizeTurn | ConfigureStream | StreamError:
        """A text message after the config; a configure with a bad value becomes the error event to send."""
        try:
            return STREAM_MESSAGE.validate_json(text or "")
        except ValidationError as exc:
            error = exc.errors()[0]
            if error["loc"][:1] == ("configure",) and len(error["loc"]) > 1:
                field = ".".join(map(str, error["loc"][1:]))
                return StreamError(message=f"Invalid configure: {field}: {error['msg']}; the stream goes on with "
                                           "its turn rules unchanged.", code="invalid_configure", param=field)
        raise InvalidRequest('Text messages after the config must be {"type": "finalize"}, {"type": "configure", '
                             '...} or {"type": "end"}.', code="invalid_frame")

    def _samples(self, frame: bytes) -> np.ndarray:
        if len(frame) > self.settings.stream.max_frame_bytes:
            raise PayloadTooLarge(f"Frames are limited to {self.settings.stream.max_frame_bytes} bytes.",
                                  code="frame_too_large")
        return audio_io.pcm16_to_float(frame)

    async def _send(self, event: dict) -> None:
        async with self._send_lock:
            await self.websocket.send_json(event)

    async def _fail(self, message: str, close_code: int, code: str | None) -> None:
        with contextlib.suppress(Exception):  # the client may already be gone
            await self._send(event_dict(StreamError(message=message, code=code)))
            await self.websocket.close(close_code)
