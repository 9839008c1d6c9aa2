"""One live stream: audio pieces in, ``partial`` / ``final`` events out, in order (Ray-free; the Ingress wires it).

VAD runs on the Segmenter replicas (``live_vad.py``): each step sends the new audio with the stream's VAD state and
gets back the final speech segments. Here the segments are joined into utterances (pauses shorter than
``end_of_utterance_ms`` keep talking in one utterance, as the offline path merges segments), each utterance's audio
is sent to the model, and partials of the open utterance are requested every ``partial_interval_ms`` of audio.

Three cooperating tasks per stream, all cancelled together when the consumer stops (client gone):
- the reader pulls audio from the transport into a small queue (when it is full, reading stops: TCP backpressure);
- the segmenter takes everything queued at once (so fast senders make big VAD steps), runs a VAD step and issues a
  transcription per finished utterance (and per due partial) without waiting for it;
- the consumer (this generator) awaits those in the order they were issued and yields the events.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Literal

import numpy as np

from .live_vad import LiveVadState, LiveVadStep
from .parakeet_defaults import SAMPLE_RATE
from .protocol import FinalEvent, LiveEvent, PartialEvent, SpeechStarted, SpeechStopped
from .schemas import Segment, SegmentTokens, SpeechSegment, Word, token_logprobs
from .settings import StreamSettings, VadSettings

VadStep = Callable[[LiveVadState, np.ndarray, bool], Awaitable[LiveVadStep]]
Transcribe = Callable[[np.ndarray], Awaitable[SegmentTokens]]
Align = Callable[[list[tuple[SegmentTokens, float, float]], float], Awaitable[tuple[list[Word], list[Segment]]]]
_END = object()


@dataclass
class Utterance:
    """What the joiner decided: an utterance (turn) began, a partial of the open one is due, or one is final."""

    id: int
    start: int  # samples from the start of the stream (16 kHz)
    end: int
    kind: Literal["start", "partial", "final"]

    @property
    def final(self) -> bool:
        return self.kind == "final"


class UtteranceJoiner:
    """Final VAD segments -> utterances; says when a partial of the open utterance is due."""

    def __init__(self, stream: StreamSettings, vad: VadSettings, partials: bool):
        self.end_gap = int(stream.end_of_utterance_ms * SAMPLE_RATE / 1000)
        self.max_length = int(vad.max_segment_s * SAMPLE_RATE)
        self.min_speech = int(vad.min_speech_duration_ms * SAMPLE_RATE / 1000)
        self.partial_every = int(stream.partial_interval_ms * SAMPLE_RATE / 1000) if partials else 0
        self.pending: SpeechSegment | None = None  # final segments not yet sent as an utterance
        self.turn_open = False  # an utterance has begun (its "start" was announced) and is not final yet
        self.next_id = 0
        self.last_partial_at = 0

    def update(self, step: LiveVadStep) -> list[Utterance]:
        out: list[Utterance] = []
        for segment in step.segments:
            pending = self.pending
            if pending is not None and (segment.start - pending.end >= self.end_gap
                                        or segment.end - pending.start > self.max_length):
                out.append(self._final(step.position))
                pending = None
            if pending is None:
                self._start(segment.start, out)
            self.pending = segment if pending is None else SpeechSegment(start=pending.start, end=segment.end)
        # the utterance is over when no later segment can start within end_of_utterance_ms of its end
        if self.pending is not None and (step.open_from is None or step.open_from - self.pending.end >= self.end_gap):
            out.append(self._final(step.position))
        if step.speech_open and step.open_from is not None:
            self._start(step.open_from, out)
        partial = self._partial(step)
        return out + ([partial] if partial else [])

    def _start(self, sample: int, out: list[Utterance]) -> None:
        if not self.turn_open:
            self.turn_open = True
            out.append(Utterance(self.next_id, sample, sample, "start"))

    def keep_from(self, step: LiveVadStep) -> int:
        """Audio before this sample is never transcribed again."""
        marks = [m for m in (self.pending.start if self.pending else None, step.open_from) if m is not None]
        return min(marks, default=step.position)

    def _partial(self, step: LiveVadStep) -> Utterance | None:
        if not (self.partial_every and step.speech_open and step.open_from is not None
                and step.position - self.last_partial_at >= self.partial_every):
            return None
        start = self.pending.start if self.pending else step.open_from
        if step.position - start < self.min_speech:
            return None
        self.last_partial_at = step.position
        return Utterance(self.next_id, start, step.position, "partial")

    def _final(self, position: int) -> Utterance:
        utterance = Utterance(self.next_id, self.pending.start, self.pending.end, "final")
        self.pending = None
        self.turn_open = False
        self.next_id += 1
        self.last_partial_at = position
        return utterance


class AudioWindow:
    """The stream's audio from sample ``base`` on (older audio is dropped once no utterance can need it)."""

    def __init__(self):
        self.base = 0
        self.samples = np.zeros(0, np.float32)

    def append(self, samples: np.ndarray) -> None:
        self.samples = np.concatenate([self.samples, samples])

    def cut(self, start: int, end: int) -> np.ndarray:
        return self.samples[max(start, self.base) - self.base:end - self.base].copy()

    def drop_before(self, sample: int) -> None:
        if sample > self.base:
            self.samples = self.samples[sample - self.base:]
            self.base = sample


def _pieces(samples: np.ndarray, most: int, ended: bool) -> list[tuple[np.ndarray, bool]]:
    """What arrived as VAD steps of at most ``most`` samples (the last one carries ``ended``). A client sending
    faster than real time still gets its segments block by block, so the model works while VAD reads on (as for
    files), and a partial every ``partial_interval_ms`` of audio."""
    starts = range(0, max(len(samples), 1), most)
    return [(samples[start:start + most], ended and start == starts[-1]) for start in starts]


async def live_events(chunks: AsyncIterator[np.ndarray], vad_step: VadStep, transcribe: Transcribe,
                      align: Align | None, stream: StreamSettings, vad: VadSettings, partials: bool = True,
                      turns: bool = False, logprobs: bool = False) -> AsyncIterator[LiveEvent]:
    """``partial`` / ``final`` events for the audio ``chunks`` (16 kHz float32), in order; with ``turns`` also
    ``speech_started`` when an utterance begins and ``speech_stopped`` as soon as it is known to be over (before
    its transcription); with ``logprobs`` each token's log-probability in partials and finals."""
    incoming: asyncio.Queue = asyncio.Queue(maxsize=max(4, int(stream.max_buffered_s * SAMPLE_RATE) // 512))
    results: asyncio.Queue = asyncio.Queue(maxsize=8)  # events being computed; a slow model stops the segmenter
    joiner = UtteranceJoiner(stream, vad, partials)
    step_samples = min(joiner.partial_every or vad.frames_per_call * 512, vad.frames_per_call * 512)
    audio = AudioWindow()
    partial_in_flight: list[asyncio.Future] = []

    async def read() -> None:
        try:
            async for chunk in chunks:
                await incoming.put(chunk)
        except BaseException as exc:  # noqa: BLE001 - hand transport errors to the consumer
            await incoming.put(exc)
            return
        await incoming.put(_END)

    async def event_for(utterance: Utterance, samples: np.ndarray) -> LiveEvent | None:
        tokens = await transcribe(samples)
        scores = token_logprobs(tokens) if logprobs else None
        if not utterance.final:
            return PartialEvent(id=utterance.id, text=tokens.text, logprobs=scores) if tokens.text else None
        start, end = utterance.start / SAMPLE_RATE, utterance.end / SAMPLE_RATE
        event = FinalEvent(id=utterance.id, text=tokens.text, start=round(start, 3), end=round(end, 3),
                           logprobs=scores)
        if align is not None:
            event.words, _ = await align([(tokens, start, end)], end)
        return event

    async def announce(event: LiveEvent) -> None:
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(event)
        await results.put(done)

    async def issue(utterances: list[Utterance]) -> None:
        for utterance in utterances:
            if utterance.kind == "start":
                if turns:
                    await announce(SpeechStarted(id=utterance.id, start=round(utterance.start / SAMPLE_RATE, 3)))
                continue
            if utterance.final and turns:
                await announce(SpeechStopped(id=utterance.id, end=round(utterance.end / SAMPLE_RATE, 3)))
            if not utterance.final:
                if partial_in_flight and not partial_in_flight[0].done():
                    continue  # one partial at a time: a slow model gets fewer, fresher partials
                partial_in_flight.clear()
            future = asyncio.ensure_future(event_for(utterance, audio.cut(utterance.start, utterance.end)))
            if not utterance.final:
                partial_in_flight.append(future)
            await results.put(future)

    async def segment() -> None:
        state = LiveVadState.new(vad)
        try:
            ended = False
            while not ended:
                pieces = [await incoming.get()]
                while not incoming.empty():
                    pieces.append(incoming.get_nowait())
                if any(isinstance(p, BaseException) for p in pieces):
                    raise next(p for p in pieces if isinstance(p, BaseException))
                ended = any(p is _END for p in pieces)
                new = [p for p in pieces if isinstance(p, np.ndarray) and p.size]
                joined = np.concatenate(new) if new else np.zeros(0, np.float32)
                audio.append(joined)
                for piece, last in _pieces(joined, step_samples, ended):
                    step = await vad_step(state, piece, last)
                    state = step.state
                    await issue(joiner.update(step))
                    audio.drop_before(joiner.keep_from(step))
            await results.put(_END)
        except BaseException as exc:  # noqa: BLE001
            await results.put(exc)

    tasks = [asyncio.create_task(read()), asyncio.create_task(segment())]
    try:
        while True:
            item = await results.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            event = await item
            if event is not None:
                yield event
    finally:
        for task in tasks:
            task.cancel()
        while not results.empty():
            item = results.get_nowait()
            if isinstance(item, asyncio.Future):
                item.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
