"""One WebSocket on ``/v1/realtime?intent=transcription``: OpenAI's Realtime transcription protocol over the same
live pipeline as ``/v1/audio/stream`` (VAD on the Segmenter replicas, utterances to the batched Transcriber).

- ``server_vad`` (and ``semantic_vad``) sessions: appended audio feeds a live run; its turns become
  ``input_audio_buffer.speech_started`` / ``speech_stopped`` / ``committed``, ``...transcription.delta`` (from
  partials) and ``...completed``. A client ``commit`` ends the open turn now (the run goes on; with no turn open it
  is ignored, not an error: voice-agent clients treat an error as a broken connection); a change of the turn's
  pause (``silence_duration_ms``, ``eagerness``) applies to the running turn; other session changes end the run
  (its open turn is transcribed) and a ``clear`` drops it; the next append starts another, with times continuing
  from where the session is.
- manual sessions (``turn_detection: null``): appended audio is buffered; each ``commit`` transcribes the buffer
  through the offline path (VAD segments, batched model) as one item.
- every client event that cannot be applied gets an ``error`` event naming the field; the connection stays open.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import uuid
from typing import AsyncIterator, Awaitable, Callable, Optional

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from deployments.protocols.access import chosen_subprotocol
from deployments.speech import audio as audio_io
from deployments.speech.catalog import ModelCatalog
from deployments.speech.errors import ApiError, InternalError, RealtimeError
from deployments.speech.parakeet_defaults import SAMPLE_RATE
from deployments.speech.pipeline import LoadedAudio, TranscriptionPipeline
from deployments.speech.live import Control, Finalize, Reconfigure
from deployments.speech.protocol import FinalEvent, LiveEvent, NothingToFinalize, SpeechStarted, SpeechStopped
from deployments.speech.realtime import EventIds, TranscriptionSession, TurnDeltas, decode_append
from deployments.speech.realtime_events import (BufferCleared, BufferCommitted, ServerEvent, SessionCreated,
                                                SessionUpdated, SpeechStartedEvent, SpeechStoppedEvent,
                                                TranscriptionCompleted, TranscriptionDelta, TranscriptionFailed,
                                                error_event)
from deployments.speech.settings import AppSettings
from deployments.protocols.stream_connection import BAD_CONFIG, TRY_LATER, LiveSocket, StreamSlots

log = logging.getLogger("ray.serve")
_END = object()


class RealtimeConnection(LiveSocket):
    def __init__(self, websocket: WebSocket, pipeline: TranscriptionPipeline, catalog: ModelCatalog,
                 settings: AppSettings, slots: StreamSlots):
        super().__init__(websocket, pipeline, catalog, settings, slots)
        self.session = TranscriptionSession()
        self.ids = EventIds(uuid.uuid4().hex[:12])
        self.session_id = f"sess_{self.ids.prefix}"
        self.run: LiveRun | None = None
        self.buffer: list[np.ndarray] = []  # manual mode: 16 kHz audio since the last commit
        self.buffered = 0
        self.position = 0  # 16 kHz samples of the session handed to runs or commits so far
        self.resampler = audio_io.Resampler(self.session.input_rate)
        self.last_item: str | None = None
        self.tasks: set[asyncio.Task] = set()
        self._send_lock = asyncio.Lock()

    # ---------------------------------------------------------------- the connection

    async def serve(self) -> str:
        await self.websocket.accept(subprotocol=chosen_subprotocol(self.websocket.scope))
        if self.websocket.query_params.get("intent") != "transcription":
            await self._close_with(error_event(self.ids.event(), "Only transcription sessions are served here: "
                                               "connect with ?intent=transcription.", code="unsupported_intent",
                                               param="intent"), BAD_CONFIG)
            return "bad_config"
        if not self.slots.take():
            refused = self.slots.refusal()
            await self._close_with(error_event(self.ids.event(), refused.message, type_="server_error",
                                               code=refused.code), TRY_LATER)
            return "refused"
        try:
            await self._send(SessionCreated(event_id=self.ids.event(), session=self._describe()))
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return "disconnected"
                await self._handle(message)
        except WebSocketDisconnect:
            return "disconnected"
        finally:
            self.slots.give_back()
            if self.run is not None:
                await self.run.cancel()
            for task in list(self.tasks):
                task.cancel()

    async def _handle(self, message: dict) -> None:
        client_event_id = None
        try:
            if message.get("text") is None:
                raise RealtimeError("Send client events as JSON text messages.", code="invalid_event")
            try:
                event = json.loads(message["text"])
            except json.JSONDecodeError:
                raise RealtimeError("The event is not valid JSON.", code="invalid_json") from None
            if not isinstance(event, dict):
                raise RealtimeError("An event is a JSON object with a 'type'.", code="invalid_event")
            client_event_id = event.get("event_id")
            handler = self.HANDLERS.get(event.get("type"))
            if handler is None:
                raise RealtimeError(f"Unknown or unsupported event type {event.get('type')!r} in a transcription "
                                    f"session; supported: {', '.join(self.HANDLERS)}.", code="unknown_event",
                                    param="type")
            await handler(self, event)
        except ApiError as exc:
            await self._send(error_event(self.ids.event(), exc.message, code=exc.code,
                                         param=getattr(exc, "param", None), client_event_id=client_event_id))

    # ---------------------------------------------------------------- client events

    async def _session_update(self, event: dict) -> None:
        session = self.session.updated(event.get("session"), self.catalog)
        choice = session.model(self.catalog)
        try:
            await self.pipeline.checked(choice)  # the model can spell the keyterms
        except ApiError as exc:
            raise RealtimeError(exc.message, code=exc.code,
                                param="session.audio.input.transcription.keyterms") from None
        if session.pipeline_key() != self.session.pipeline_key():
            await self._end_run(flush=True)  # the audio so far is transcribed with the settings it came with
        elif self.run is not None:  # only the pause or the keyterms changed: the running turn goes on
            await self.run.control(Reconfigure(session.turn_rules(self.settings.stream.turn_rules),
                                               choice.keyterms))
        self.session = session
        self.resampler = audio_io.Resampler(session.input_rate)
        if session.server_vad and self.buffer:  # manual audio not committed yet goes on to turn detection
            buffered, self.buffer, self.buffered = self.buffer, [], 0
            for samples in buffered:
                await self._live_run().feed(samples)
        await self._send(SessionUpdated(event_id=self.ids.event(), session=self._describe()))

    async def _append(self, event: dict) -> None:
        raw = decode_append(event.get("audio"), self.session, self.settings.stream.max_frame_bytes)
        samples = self.resampler(raw)
        if self.session.server_vad:
            await self._live_run().feed(samples)
            return
        limit = int(self.settings.stream.max_commit_s * SAMPLE_RATE)
        if self.buffered + len(samples) > limit:
            raise RealtimeError(f"The input audio buffer holds at most {self.settings.stream.max_commit_s:g} s; "
                                "commit it before appending more.", code="buffer_full", param="audio")
        self.buffer.append(samples)
        self.buffered += len(samples)

    async def _commit(self, event: dict) -> None:
        if self.session.server_vad:
            if self.run is not None:
                await self.run.commit()
            return
        minimum = int(self.settings.limits.min_audio_ms * SAMPLE_RATE / 1000)
        if self.buffered < max(minimum, 1):
            raise RealtimeError(f"The input audio buffer holds {self.buffered / SAMPLE_RATE * 1000:.0f} ms; a commit "
                                f"needs at least {self.settings.limits.min_audio_ms:g} ms.",
                                code="input_audio_buffer_commit_empty")
        samples = np.concatenate(self.buffer)
        self.buffer, self.buffered = [], 0
        self.position += len(samples)
        item = self.ids.item()
        await self._send(BufferCommitted(event_id=self.ids.event(), item_id=item,
                                         previous_item_id=self._next_item(item)))
        self._spawn(self._transcribe_commit(item, samples))

    async def _clear(self, event: dict) -> None:
        if self.run is not None:
            await self.run.cancel()
            self.position += self.run.fed
            self.run = None
        self.buffer, self.buffered = [], 0
        await self._send(BufferCleared(event_id=self.ids.event()))

    HANDLERS = {"session.update": _session_update, "input_audio_buffer.append": _append,
                "input_audio_buffer.commit": _commit, "input_audio_buffer.clear": _clear}

    # ---------------------------------------------------------------- transcription

    async def _transcribe_commit(self, item: str, samples: np.ndarray) -> None:
        try:
            loaded = LoadedAudio(samples, len(samples) / SAMPLE_RATE)
            result = await self.pipeline.transcribe(loaded, timestamps=False, vad=True,
                                                    model=self.session.model(self.catalog),
                                                    logprobs=self.session.logprobs)
            await self._send(TranscriptionCompleted.of(self.ids.event(), item, result.text, loaded.duration,
                                                       result.logprobs))
        except ApiError as exc:
            await self._send(TranscriptionFailed.of(self.ids.event(), item, exc))

    def _live_run(self) -> "LiveRun":
        """The run server-VAD audio goes to: a new one if there is none, or if the last one failed (its items got
        ``.failed`` events)."""
        if self.run is not None and self.run.task.done():
            self.position += self.run.fed
            self.run = None
        if self.run is None:
            session, settings = self.session, self.settings
            self.run = LiveRun(lambda chunks: self.pipeline.live(
                chunks, timestamps=False, partials=True, turns=True, model=session.model(self.catalog),
                logprobs=session.logprobs, vad=session.vad_settings(settings.vad),
                rules=session.turn_rules(settings.stream.turn_rules)),
                self.ids, self._send, self._next_item, self.position)
        return self.run

    def _next_item(self, item: str) -> str | None:
        """``item`` is committed: the one committed before it (the ``previous_item_id`` clients chain on)."""
        previous, self.last_item = self.last_item, item
        return previous

    async def _end_run(self, flush: bool) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        if flush:
            await run.finish(self.resampler(np.zeros(0, np.float32), last=True))
        else:
            await run.cancel()
        self.position += run.fed

    # ---------------------------------------------------------------- plumbing

    def _describe(self) -> dict:
        session = self.session
        return {"id": self.session_id, **session.describe(session.vad_settings(self.settings.vad),
                                                          session.turn_rules(self.settings.stream.turn_rules),
                                                          session.model(self.catalog))}

    def _spawn(self, work) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, event: ServerEvent) -> None:
        async with self._send_lock:  # the receive loop and the runs' event tasks both send
            await self.websocket.send_text(json.dumps(event.wire()))

    async def _close_with(self, event: ServerEvent, code: int) -> None:
        with contextlib.suppress(Exception):
            await self._send(event)
            await self.websocket.close(code)


class LiveRun:
    """A stretch of a server_vad session's audio through the live pipeline; ends with a commit, a clear, a session
    change or the connection."""

    def __init__(self, open_events: Callable[[AsyncIterator], AsyncIterator[LiveEvent]], ids: EventIds,
                 send: Callable[[ServerEvent], Awaitable[None]], next_item: Callable[[str], Optional[str]],
                 offset_samples: int):
        """``open_events``: the live pipeline over an audio iterator; ``send``: the connection's ordered send;
        ``next_item(item)``: records ``item`` as committed and returns the one committed before it."""
        self.ids = ids
        self.send = send
        self.next_item = next_item
        self.offset_s = offset_samples / SAMPLE_RATE
        self.fed = 0
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=64)  # full: the receive loop waits (TCP backpressure)
        self.items: dict[int, str] = {}  # the live pipeline's utterance id -> this session's item id
        self.deltas: dict[int, TurnDeltas] = {}  # per utterance
        self.commits: collections.deque[asyncio.Future] = collections.deque()  # commits whose turn is not out yet
        self.task = asyncio.create_task(self._forward(open_events(self._chunks())))

    async def feed(self, samples: np.ndarray) -> None:
        if self.task.done():  # failed: the connection starts another run for the next audio
            return
        self.fed += len(samples)
        await self.queue.put(samples)

    async def control(self, control: Control) -> None:
        """New turn rules, in order with the audio fed so far."""
        if not self.task.done():
            await self.queue.put(control)

    async def commit(self) -> None:
        """End the open turn now; returns once its events (or none, with no turn open) are sent, so a commit's
        events come before those of the client's next event, as OpenAI orders them."""
        if self.task.done():
            return
        answered = asyncio.get_running_loop().create_future()
        self.commits.append(answered)
        await self.queue.put(Finalize())
        await asyncio.wait({answered, self.task}, return_when=asyncio.FIRST_COMPLETED)

    async def finish(self, tail: np.ndarray) -> None:
        self.fed += len(tail)
        if not self.task.done():
            await self.queue.put(tail)
            await self.queue.put(_END)
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def cancel(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _chunks(self) -> AsyncIterator[np.ndarray | Control]:
        while (samples := await self.queue.get()) is not _END:
            yield samples

    async def _forward(self, events: AsyncIterator[LiveEvent]) -> None:
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    for out in self._translate(event):
                        await self.send(out)
                    if isinstance(event, NothingToFinalize) or isinstance(event, FinalEvent) and event.from_finalize:
                        self._answered()
        except ApiError as exc:
            for item in self.items.values():
                await self.send(TranscriptionFailed.of(self.ids.event(), item, exc))
        except Exception:  # noqa: BLE001 - never show internals; the log has them
            log.exception("Realtime transcription failed")
            for item in self.items.values():
                await self.send(TranscriptionFailed.of(self.ids.event(), item,
                                                       InternalError("Transcription failed.")))
        finally:
            while self.commits:
                self._answered()

    def _answered(self) -> None:
        """The oldest commit's turn (or its absence) has been sent."""
        if self.commits:
            answered = self.commits.popleft()
            if not answered.done():
                answered.set_result(None)

    def _translate(self, event: LiveEvent) -> list[ServerEvent]:
        ids = self.ids
        if isinstance(event, NothingToFinalize):
            return []  # a commit with no turn open (see the module's docstring)
        if isinstance(event, SpeechStarted):
            self.items[event.id] = ids.item()
            return [SpeechStartedEvent(event_id=ids.event(), item_id=self.items[event.id],
                                       audio_start_ms=self._ms(event.start))]
        item = self.items[event.id]
        if isinstance(event, SpeechStopped):
            return [SpeechStoppedEvent(event_id=ids.event(), item_id=item, audio_end_ms=self._ms(event.end)),
                    BufferCommitted(event_id=ids.event(), item_id=item, previous_item_id=self.next_item(item))]
        deltas = self.deltas.setdefault(event.id, TurnDeltas())
        out = self._delta(item, deltas.final(event.text) if isinstance(event, FinalEvent) else
                          deltas.partial(event.text))
        if isinstance(event, FinalEvent):
            del self.items[event.id], self.deltas[event.id]
            out.append(TranscriptionCompleted.of(ids.event(), item, event.text, event.end - event.start,
                                                 event.logprobs))
        return out

    def _delta(self, item: str, text: str) -> list[ServerEvent]:
        return [TranscriptionDelta(event_id=self.ids.event(), item_id=item, delta=text)] if text else []

    def _ms(self, seconds: float) -> int:
        return int(round((self.offset_s + seconds) * 1000))

