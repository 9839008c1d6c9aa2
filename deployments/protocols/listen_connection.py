"""One WebSocket on ``/v1/listen``: Deepgram's live protocol over the same live pipeline as ``/v1/audio/stream``.

Client -> server: binary linear16 audio of any size; ``{"type": "KeepAlive"}``; ``{"type": "Finalize"}`` (the open
turn is final now: a ``Results`` with ``from_finalize: true``, an empty one with no turn open; the stream goes on);
``{"type": "CloseStream"}`` (the last finals, then ``Metadata``, then a normal close).
Server -> client: ``Results`` (interim: the whole hypothesis of the open turn; final: ``is_final``, and
``speech_final`` when the turn's pause ended it), ``SpeechStarted`` (``vad_events``), ``UtteranceEnd``
(``utterance_end_ms`` of audio without speech after a final's last word), ``Metadata``.
A query that cannot be served is refused at the upgrade with 400 (a 4xx tells clients not to retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import AsyncIterator

import numpy as np
from fastapi import WebSocketDisconnect

from deployments.protocols.access import chosen_subprotocol, deny_websocket
from deployments.speech import audio as audio_io
from deployments.speech import deepgram
from deployments.speech.errors import ApiError, PayloadTooLarge
from deployments.speech.live import Control, Finalize
from deployments.speech.parakeet_defaults import SAMPLE_RATE
from deployments.speech.protocol import FinalEvent, NothingToFinalize, PartialEvent, SpeechStarted
from deployments.protocols.stream_connection import NORMAL, TRY_LATER, ClientGone, LiveSocket

log = logging.getLogger("ray.serve")
KEEP_ALIVE, FINALIZE, CLOSE_STREAM = "KeepAlive", "Finalize", "CloseStream"


class ListenConnection(LiveSocket):
    async def serve(self) -> str:
        try:
            options = deepgram.ListenOptions.from_query(self.websocket.query_params, live=True)
            choice = await self.pipeline.checked(self.catalog.choose(options.model, options.language,
                                                                     options.keyterms))
        except ApiError as exc:
            await deny_websocket(self.websocket, exc)
            return "bad_config"
        await self.websocket.accept(subprotocol=chosen_subprotocol(self.websocket.scope))
        if not self.slots.take():
            await self._close(TRY_LATER)
            return "refused"
        self.options = options
        self.identity = deepgram.Identity(choice.model.id)
        self.received = 0  # 16 kHz samples of the stream so far
        self.turn_start = 0.0
        self.utterance_end_due: float | None = None  # audio time (s) an UtteranceEnd is due at, if no speech
        self.last_word_end = 0.0
        self._send_lock = asyncio.Lock()
        try:
            rules = self.settings.stream.turn_rules
            if options.endpointing_ms is not None:
                rules = rules.model_copy(update={"end_of_utterance_ms": options.endpointing_ms})
            events = self.pipeline.live(self._audio(), timestamps=True, partials=options.interim_results,
                                        model=choice, turns=True, logprobs=True, rules=rules)
            async with contextlib.aclosing(events):
                async for event in events:
                    await self._forward(event)
            await self._send({"type": "Metadata", **self.identity.metadata(self.received / SAMPLE_RATE, 1)})
            await self._close(NORMAL)
            return "done"
        except (WebSocketDisconnect, ClientGone):
            return "disconnected"
        except ApiError as exc:
            log.warning("A /v1/listen stream failed: %s", exc.message)
            with contextlib.suppress(Exception):
                await self._send({"type": "Error", "description": exc.message, "message": exc.message,
                                  "variant": exc.code or "error"})
            await self._close(1011)
            return "error"
        finally:
            self.slots.give_back()

    async def _audio(self) -> AsyncIterator[np.ndarray | Control]:
        resample = audio_io.Resampler(self.options.sample_rate)
        channels = self.options.channels
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise ClientGone()
            if message.get("bytes") is not None:
                data = message["bytes"]
                if len(data) > self.settings.stream.max_frame_bytes:
                    raise PayloadTooLarge(f"Frames are limited to {self.settings.stream.max_frame_bytes} bytes.",
                                          code="frame_too_large")
                samples = audio_io.pcm16_to_float(data[:len(data) // (2 * channels) * 2 * channels])
                if channels > 1:
                    samples = samples.reshape(-1, channels).mean(axis=1)
                samples = resample(samples)
                self.received += len(samples)
                await self._utterance_end_if_due()
                yield samples
                continue
            kind = _message_type(message.get("text"))
            if kind == FINALIZE:
                yield Finalize()
            elif kind == CLOSE_STREAM:
                yield resample(np.zeros(0, np.float32), last=True)
                return
            # KeepAlive, and anything else a client may send, is ignored

    async def _forward(self, event) -> None:
        identity, now = self.identity, self.received / SAMPLE_RATE
        if isinstance(event, SpeechStarted):
            self.turn_start = event.start
            self.utterance_end_due = None
            if self.options.vad_events:
                await self._send(deepgram.speech_started(event.start))
        elif isinstance(event, PartialEvent):
            score = _mean([p.logprob for p in event.logprobs or []])
            await self._send(deepgram.results(identity, event.text, self.turn_start, now, False, False, False, [],
                                              deepgram.confidence([], score)))
        elif isinstance(event, FinalEvent):
            words = event.words or []
            await self._send(deepgram.results(
                identity, event.text, event.start, event.end, True, not event.from_finalize,
                bool(event.from_finalize), words, deepgram.confidence(words)))
            self.last_word_end = words[-1].end if words else event.end
            if self.options.utterance_end_ms is not None and event.text:
                self.utterance_end_due = self.last_word_end + self.options.utterance_end_ms / 1000
                await self._utterance_end_if_due()
        elif isinstance(event, NothingToFinalize):
            await self._send(deepgram.results(identity, "", now, now, True, False, True, [], 0.0))

    async def _utterance_end_if_due(self) -> None:
        if self.utterance_end_due is not None and self.received / SAMPLE_RATE >= self.utterance_end_due:
            self.utterance_end_due = None
            await self._send(deepgram.utterance_end(self.last_word_end))

    async def _send(self, message: dict) -> None:
        async with self._send_lock:  # the receive loop (UtteranceEnd) and the event loop both send
            await self.websocket.send_text(json.dumps(message))

    async def _close(self, code: int) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code)


def _message_type(text: str | None) -> str | None:
    try:
        message = json.loads(text or "")
    except ValueError:
        return None
    return message.get("type") if isinstance(message, dict) else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
