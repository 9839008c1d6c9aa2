"""One live stream: audio pieces in, ``partial`` / ``final`` events out, in order (Ray-free; the Ingress wires it).

VAD runs on the Segmenter replicas (``live_vad.py``): each step sends the new audio with the stream's VAD state and
gets back the final speech segments, the speech that just ended (not final yet) and whether someone is speaking.
Here they are joined into utterances (turns) by the stream's ``TurnRules``:

- a turn ends when no speech has started for ``end_of_utterance_ms`` after the end of its last speech (counted from
  where the speech itself ended, not from its padded end); shorter pauses keep its segments in one final;
- **first pass**: the moment speech stops, the open turn is sent to the model, so when the pause rule (or the
  client's ``finalize``) then ends the turn its final is ready, or nearly; if speech resumes first, the first pass
  is dropped (cancelled if still queued). A final always covers exactly the audio it would without the first pass:
  a first pass is used only for the very span the final covers;
- ``finalize`` (a client's end of turn) ends the open turn at once: its final is sent, the stream goes on, and
  audio before the turn's end is never part of a later turn;
- partials of the open turn every ``partial_interval_ms`` of audio, each transcribing a window of bounded length
  (``PartialText``), so their cost does not grow with the turn.

Three cooperating tasks per stream, all cancelled together when the consumer stops (client gone):
- the reader pulls audio and control messages from the transport into a small queue (when it is full, reading
  stops: TCP backpressure);
- the segmenter takes everything queued at once (so fast senders make big VAD steps), runs the VAD steps and
  issues transcriptions (finals, first passes, partials) without waiting for them;
- the consumer (this generator) awaits those in the order they were issued and yields the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Literal, Optional, Union

import numpy as np

from .keyterms import Keyterms
from .live_vad import LiveVadState, LiveVadStep
from .parakeet_defaults import SAMPLE_RATE
from .protocol import FinalEvent, LiveEvent, NothingToFinalize, PartialEvent, SpeechStarted, SpeechStopped
from .schemas import Segment, SegmentTokens, SpeechSegment, Word, token_logprobs
from .segmentation import WINDOW_SAMPLES
from .settings import StreamSettings, TurnRules, VadSettings
from .step_batcher import next_tick
from .timestamps import segment_words

Priority = Literal["final", "draft", "partial"]
VadStep = Callable[[LiveVadState, np.ndarray, bool], Awaitable[LiveVadStep]]
Transcribe = Callable[[np.ndarray, Priority, Optional[Keyterms]], Awaitable[SegmentTokens]]
Align = Callable[[list[tuple[SegmentTokens, float, float]], float], Awaitable[tuple[list[Word], list[Segment]]]]
STEPS_BEHIND = 4  # ticks of audio waiting after which a stream steps without waiting for the next tick
_END = object()
DRAFT_BACKLOG = SAMPLE_RATE // 5  # no first pass while more than 200 ms of the stream's audio waits to be read


@dataclass(frozen=True)
class Finalize:
    """The client ended the turn (``{"type": "finalize"}``, a Realtime commit, Deepgram's ``Finalize``)."""


KEEP = "keep"  # a Reconfigure that leaves the keyterms as they are


@dataclass(frozen=True)
class Reconfigure:
    """New turn rules for the stream, from the next step on (the open turn included), and new keyterms (``None``:
    none) for every transcription issued after it."""

    rules: TurnRules | None = None
    keyterms: Keyterms | None | str = KEEP


Control = Union[Finalize, Reconfigure]


@dataclass
class Utterance:
    """What the joiner decided about a turn: it began, a partial or a first pass of it is due, it is final, or
    (``nothing``) a finalize found no turn open."""

    id: int
    start: int  # samples from the start of the stream (16 kHz)
    end: int
    kind: Literal["start", "partial", "first_pass", "final", "nothing"]
    from_finalize: bool = False

    @property
    def final(self) -> bool:
        return self.kind == "final"

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


@dataclass
class _Piece:
    """Audio of a turn: its padded span and where its speech itself began and ended (pauses count from there)."""

    start: int
    end: int
    speech_start: int
    speech_end: int

    def joined(self, later: "_Piece") -> "_Piece":
        return _Piece(self.start, max(self.end, later.end), self.speech_start, later.speech_end)


class UtteranceJoiner:
    """VAD steps -> turns (``Utterance`` decisions), by the stream's ``TurnRules``. Pure: no I/O, no clock."""

    def __init__(self, rules: TurnRules, vad: VadSettings, partials: bool, first_pass: bool = True,
                 tail_ms: int | None = None, end_lag_ms: int = 0):
        self.max_length = int(vad.max_segment_s * SAMPLE_RATE)
        self.min_speech = int(vad.min_speech_duration_ms * SAMPLE_RATE / 1000)
        self.pad = int(vad.speech_pad_ms * SAMPLE_RATE / 1000)
        # a turn's audio ends this far after its speech (None: the segment's whole padding)
        self.tail = self.pad if tail_ms is None else min(self.pad, int(tail_ms * SAMPLE_RATE / 1000))
        # pauses count from this long before where VAD says speech ended (it says so late)
        self.end_lag = int(end_lag_ms * SAMPLE_RATE / 1000)
        self.partials = partials
        self.first_pass = first_pass
        self.configure(rules)
        self.pending: _Piece | None = None  # final segments of the open turn, joined
        self.cut = 0  # audio before this sample belongs to turns already final
        self.turn_start: int | None = None  # the open turn's start, once announced
        self.next_id = 0
        self.last_partial_at = 0
        self.drafted: tuple[int, int] | None = None  # the span of the open turn's first pass
        self.paused_from: int | None = None  # the open turn's speech ended here and none has started since

    def configure(self, rules: TurnRules) -> None:
        self.end_gap = int(rules.end_of_utterance_ms * SAMPLE_RATE / 1000)
        self.partial_every = int(rules.partial_interval_ms * SAMPLE_RATE / 1000) if self.partials else 0

    def update(self, step: LiveVadStep, draft: bool = True) -> list[Utterance]:
        """The decisions a VAD step brings, in order. ``draft``: a first pass may be issued now (the caller says no
        while more audio is already waiting: the turn's end will be known before a first pass could help)."""
        out: list[Utterance] = []
        for segment, speech in zip(step.segments, step.speech):
            piece = self._clipped(segment, speech)
            if piece is not None:
                self._add(piece, out)
        waiting = self._clipped(step.tentative, step.tentative_speech)
        if waiting is not None and self.pending is not None and self._ends_turn(waiting):
            self._close(self.pending, out)
        candidate = self._with(waiting)
        if step.open_from is None:  # the stream is over: whatever is open is final
            if candidate is not None:
                self._close(candidate, out)
            return out
        speaking_from = None if step.speaking_from is None else max(step.speaking_from, self.cut)
        if speaking_from is not None:
            self.drafted = None  # speech resumed: a first pass no longer covers the turn
            if candidate is not None and speaking_from - candidate.speech_end >= self.end_gap:
                self._close(candidate, out)
                candidate = None
            self._start(max(self.cut, speaking_from - self.pad) if candidate is None else candidate.start, out)
        elif candidate is not None and step.position >= candidate.end:
            if step.position - candidate.speech_end >= max(self.end_gap, 1):
                self._close(candidate, out)
                candidate = None
            elif self.first_pass and draft and self.drafted != (candidate.start, candidate.end):
                self.drafted = (candidate.start, candidate.end)
                out.append(Utterance(self.next_id, candidate.start, candidate.end, "first_pass"))
        if candidate is not None:
            self._start(candidate.start, out)
        self.paused_from = candidate.speech_end if candidate is not None and speaking_from is None else None
        partial = self._partial(step, speaking_from)
        return out + ([partial] if partial else [])

    @property
    def pause_due(self) -> int | None:
        """The sample VAD must have read for the pause rule to end the open turn (None: no turn is in a pause). The
        stream steps as soon as its audio reaches it, not at the next tick of the step clock."""
        return None if self.paused_from is None else self.paused_from + max(self.end_gap, 1)

    def finalize(self, step: LiveVadStep) -> list[Utterance]:
        """The client ends the turn now (after ``step``, which read all its audio so far): the open turn is final
        up to where its speech (and padding) ends, or up to the last sample received while someone speaks."""
        out: list[Utterance] = []
        candidate = self._with(self._clipped(step.tentative, step.tentative_speech))
        if step.speaking_from is not None:
            start = self.turn_start if self.turn_start is not None else max(self.cut, step.speaking_from - self.pad)
            candidate = _Piece(start, step.received, start, step.received)
        if candidate is None or min(candidate.end, step.received) <= candidate.start:
            return [Utterance(self.next_id, self.cut, self.cut, "nothing", from_finalize=True)]
        candidate.end = min(candidate.end, step.received)
        self._close(candidate, out, from_finalize=True)
        return out

    def keep_from(self, step: LiveVadStep) -> int:
        """Audio before this sample is never transcribed again."""
        marks = [m for m in (self.turn_start, self.pending.start if self.pending else None,
                             step.tentative.start if step.tentative else None, step.open_from,
                             None if step.speaking_from is None else step.speaking_from - self.pad)
                 if m is not None]
        return max(self.cut, min(marks, default=step.position))

    # ------------------------------------------------------------------ internals

    def _clipped(self, segment: SpeechSegment | None, speech: tuple[int, int] | None) -> _Piece | None:
        """A segment without the audio of turns already final (None when no speech is left: a finalize that cut a
        turn before its padding had all arrived leaves the rest of that padding, which is no turn of its own),
        ending ``self.tail`` after VAD's end of speech; its speech (where pauses count from) ends ``self.end_lag``
        before that."""
        if segment is None or speech is None or speech[1] <= self.cut:  # (speech ends within its padded segment)
            return None
        start = max(speech[0], self.cut)
        return _Piece(max(segment.start, self.cut), min(segment.end, speech[1] + self.tail), start,
                      max(speech[1] - self.end_lag, start))

    def _ends_turn(self, later: _Piece) -> bool:
        """``later`` speech comes after a turn-ending pause, or would make the open turn too long."""
        pending = self.pending
        return later.speech_start - pending.speech_end >= self.end_gap or later.end - pending.start > self.max_length

    def _add(self, piece: _Piece, out: list[Utterance]) -> None:
        if self.pending is not None and self._ends_turn(piece):
            self._close(self.pending, out)
        self._start(piece.start, out)
        self.pending = piece if self.pending is None else self.pending.joined(piece)

    def _with(self, waiting: _Piece | None) -> _Piece | None:
        """The open turn: its final segments and the speech that just ended."""
        if waiting is None:
            return self.pending
        return waiting if self.pending is None else self.pending.joined(waiting)

    def _start(self, sample: int, out: list[Utterance]) -> None:
        if self.turn_start is None:
            self.turn_start = sample
            self.last_partial_at = max(self.last_partial_at, sample)
            out.append(Utterance(self.next_id, sample, sample, "start"))

    def _close(self, piece: _Piece, out: list[Utterance], from_finalize: bool = False) -> None:
        self._start(piece.start, out)
        out.append(Utterance(self.next_id, piece.start, piece.end, "final", from_finalize=from_finalize))
        self.pending = None
        self.turn_start = None
        self.drafted = None
        self.paused_from = None
        self.cut = max(self.cut, piece.end)
        self.next_id += 1
        self.last_partial_at = max(self.last_partial_at, piece.end)

    def _partial(self, step: LiveVadStep, speaking_from: int | None) -> Utterance | None:
        if not (self.partial_every and speaking_from is not None and self.turn_start is not None
                and step.position - self.last_partial_at >= self.partial_every
                and step.position - self.turn_start >= self.min_speech):
            return None
        self.last_partial_at = step.position
        return Utterance(self.next_id, self.turn_start, step.position, "partial")


class PartialText:
    """An open turn's partial text, each partial from a window of bounded length (so a partial of a 30-second turn
    costs what one of a 4-second turn does).

    A word is *committed* once it ended at least ``settle_s`` before the end of the window it was heard in (it had
    right context); a partial transcribes from ``context_s`` before the committed words' end (left context) to now,
    and adds the words whose middle lies after that end. NeMo's buffered streaming does the same with fixed left /
    chunk / right buffers and merges token sequences; TDT's token times let us merge by time instead."""

    WAITING_S = 4.0  # a window is never longer than its contexts and this (a turn where no word could be committed)

    def __init__(self, start: int, context_s: float, settle_s: float):
        self.start = start
        self.context = int(context_s * SAMPLE_RATE)
        self.settle = int(settle_s * SAMPLE_RATE)
        self.longest = int((context_s + settle_s + self.WAITING_S) * SAMPLE_RATE)
        self.words: list[str] = []
        self.until = start  # the committed words end here

    def window(self, position: int) -> int:
        """Where the partial at ``position`` begins."""
        begin = max(self.start, self.until - self.context)
        return max(begin, position - self.longest)

    def text(self, begin: int, position: int, tokens: SegmentTokens) -> str:
        """The partial for the window ``[begin, position)``, transcribed as ``tokens``; commits what is settled."""
        fresh = []
        for word in segment_words(tokens):
            start, end = begin + word.start * SAMPLE_RATE, begin + word.end * SAMPLE_RATE
            if (start + end) / 2 >= self.until:
                fresh.append((word.text, end))
        settled = position - self.settle
        while fresh and fresh[0][1] <= settled:
            text, end = fresh.pop(0)
            self.words.append(text)
            self.until = int(end)
        return " ".join(self.words + [text for text, _ in fresh])


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


def _runs(items: list) -> list[tuple[list[np.ndarray], Control | None]]:
    """Queued items as (audio before a control, the control) in arrival order; the last run's control may be None."""
    runs: list[tuple[list[np.ndarray], Control | None]] = [([], None)]
    for item in items:
        if isinstance(item, np.ndarray):
            runs[-1][0].append(item)
        elif isinstance(item, (Finalize, Reconfigure)):
            runs[-1] = (runs[-1][0], item)
            runs.append(([], None))
    return runs


@dataclass
class _Drafts:
    """The first pass of the open turn: its span and the transcription in flight."""

    span: tuple[int, int] | None = None
    tokens: asyncio.Future | None = None

    def drop(self) -> None:
        if self.tokens is not None and not self.tokens.done():
            self.tokens.cancel()
        self.span, self.tokens = None, None

    def take(self, span: tuple[int, int]) -> asyncio.Future | None:
        if self.span == span and self.tokens is not None:
            tokens, self.span, self.tokens = self.tokens, None, None
            return tokens
        self.drop()
        return None


async def live_events(chunks: AsyncIterator[np.ndarray | Control], vad_step: VadStep, transcribe: Transcribe,
                      align: Align | None, stream: StreamSettings, vad: VadSettings, partials: bool = True,
                      turns: bool = False, logprobs: bool = False, rules: TurnRules | None = None,
                      first_pass: bool | None = None, keyterms: Keyterms | None = None
                      ) -> AsyncIterator[LiveEvent]:
    """``partial`` / ``final`` events for the audio ``chunks`` (16 kHz float32, with ``Finalize`` / ``Reconfigure``
    controls in between), in order; with ``turns`` also ``speech_started`` when a turn begins and
    ``speech_stopped`` as soon as it is known to be over (before its transcription); with ``logprobs`` each token's
    log-probability in partials and finals. ``rules`` / ``first_pass``: the stream's own (default: ``stream``'s);
    ``keyterms``: boosted in every transcription until a ``Reconfigure`` changes them."""
    incoming: asyncio.Queue = asyncio.Queue(maxsize=max(4, int(stream.max_buffered_s * SAMPLE_RATE) // 512))
    results: asyncio.Queue = asyncio.Queue(maxsize=8)  # events being computed; a slow model stops the segmenter
    rules = rules or stream.turn_rules
    joiner = UtteranceJoiner(rules, vad, partials, first_pass=stream.first_pass if first_pass is None else first_pass,
                             tail_ms=stream.final_tail_ms, end_lag_ms=stream.vad_end_lag_ms)
    step_samples = vad.frames_per_call * 512
    audio = AudioWindow()
    partial_in_flight: list[asyncio.Future] = []
    partial_texts: dict[int, PartialText] = {}
    drafts = _Drafts()
    wall = {"partial": 0.0}
    boosted = [keyterms]  # the stream's keyterms now

    waiting = [0]  # samples queued for the segmenter

    async def read() -> None:
        try:
            async for chunk in chunks:
                if isinstance(chunk, np.ndarray):
                    waiting[0] += len(chunk)
                await incoming.put(chunk)
        except BaseException as exc:  # noqa: BLE001 - hand transport errors to the consumer
            await incoming.put(exc)
            return
        await incoming.put(_END)

    async def final_event(utterance: Utterance, tokens_due: Awaitable[SegmentTokens]) -> LiveEvent:
        tokens = await tokens_due
        start, end = utterance.start / SAMPLE_RATE, utterance.end / SAMPLE_RATE
        event = FinalEvent(id=utterance.id, text=tokens.text, start=round(start, 3), end=round(end, 3),
                           logprobs=token_logprobs(tokens) if logprobs else None,
                           from_finalize=True if utterance.from_finalize else None)
        if align is not None:
            event.words, _ = await align([(tokens, start, end)], end)
        return event

    async def partial_event(utterance: Utterance) -> LiveEvent | None:
        text = partial_texts.get(utterance.id)
        if text is None:
            text = partial_texts[utterance.id] = PartialText(utterance.start, stream.partial_context_s,
                                                             stream.partial_settle_s)
        begin = text.window(utterance.end)
        tokens = await transcribe(audio.cut(begin, utterance.end), "partial", boosted[0])
        shown = text.text(begin, utterance.end, tokens)
        scores = token_logprobs(tokens) if logprobs else None
        return PartialEvent(id=utterance.id, text=shown, logprobs=scores) if shown else None

    async def announce(event: LiveEvent) -> None:
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(event)
        await results.put(done)

    async def issue(utterances: list[Utterance]) -> None:
        for utterance in utterances:
            if utterance.kind == "start":
                if turns:
                    await announce(SpeechStarted(id=utterance.id, start=round(utterance.start / SAMPLE_RATE, 3)))
            elif utterance.kind == "nothing":
                await announce(NothingToFinalize())
            elif utterance.kind == "first_pass":
                drafts.drop()
                drafts.span = utterance.span
                drafts.tokens = asyncio.ensure_future(transcribe(audio.cut(*utterance.span), "draft", boosted[0]))
            elif utterance.final:
                if turns:
                    await announce(SpeechStopped(id=utterance.id, end=round(utterance.end / SAMPLE_RATE, 3)))
                partial_texts.pop(utterance.id, None)
                for stale in partial_in_flight:  # a partial of a turn now final would only hold its final back
                    stale.cancel()
                tokens = drafts.take(utterance.span) or transcribe(audio.cut(*utterance.span), "final", boosted[0])
                await results.put(asyncio.ensure_future(final_event(utterance, tokens)))
            else:  # a partial: one at a time, and no more often than every partial interval of wall-clock time
                # either (a client sending faster than real time gets fewer partials, not a model busy with stale
                # previews)
                if partial_in_flight and not partial_in_flight[0].done():
                    continue
                now = time.monotonic()
                if now - wall["partial"] < joiner.partial_every / SAMPLE_RATE / 2:
                    continue
                wall["partial"] = now
                partial_in_flight[:] = [asyncio.ensure_future(partial_event(utterance))]
                await results.put(partial_in_flight[0])
        if drafts.span is not None and joiner.drafted != drafts.span:
            drafts.drop()  # speech resumed (or the turn changed) before the first pass was used

    # a stream this far behind steps at once (a client sending faster than real time, or a busy service): catching up
    # matters more than sharing the call
    behind = int(STEPS_BEHIND * stream.min_step_ms * SAMPLE_RATE / 1000)

    async def gather_a_step(items: list, step: LiveVadStep | None) -> None:
        """Wait for the next tick of the step clock every stream of this process shares (``min_step_ms``), unless a
        control, the end or an error is already here, the stream is ``behind``, or its audio now reaches the sample
        where the open turn's pause ends it (that turn's final would wait for the tick for nothing: up to a tick,
        half of one on average): a real-time client's 20 ms frames become one VAD step a tick, and concurrent
        streams' steps come due together (the Ingress sends them as one Segmenter call)."""
        deadline = next_tick(time.monotonic(), stream.min_step_ms / 1000)
        due = joiner.pause_due
        # VAD reads whole windows: the pause is read once the audio reaches the window that holds its last sample
        ready = None if due is None or step is None else -(-due // WINDOW_SAMPLES) * WINDOW_SAMPLES - step.received

        def buffered() -> int:
            return sum(p.size for p in items if isinstance(p, np.ndarray))

        while buffered() < behind and (ready is None or buffered() < ready) and \
                all(isinstance(p, np.ndarray) for p in items):
            try:
                items.append(await asyncio.wait_for(incoming.get(), max(0.0, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                return
            while not incoming.empty():
                items.append(incoming.get_nowait())

    async def segment() -> None:
        state = LiveVadState.new(vad)
        step: LiveVadStep | None = None
        try:
            ended = False
            while not ended:
                items = [await incoming.get()]
                while not incoming.empty():
                    items.append(incoming.get_nowait())
                await gather_a_step(items, step)
                if any(isinstance(p, BaseException) for p in items):
                    raise next(p for p in items if isinstance(p, BaseException))
                waiting[0] -= sum(len(p) for p in items if isinstance(p, np.ndarray))
                ended = any(p is _END for p in items)
                runs = _runs([p for p in items if p is not _END])
                for number, (arrays, control) in enumerate(runs):
                    new = [a for a in arrays if a.size]
                    joined = np.concatenate(new) if new else np.zeros(0, np.float32)
                    audio.append(joined)
                    last_run = number == len(runs) - 1
                    if joined.size or (ended and last_run) or step is None and control is not None:
                        pieces = _pieces(joined, step_samples, ended and last_run)
                        for index, (piece, last) in enumerate(pieces):
                            step = await vad_step(state, piece, last)
                            state = step.state
                            # a first pass helps when the stream is caught up: with more audio already waiting (a
                            # client sending faster than real time, or a busy service) the turn's end is known
                            # before a first pass could help, and a first pass per pause would add model work
                            at_edge = last_run and index == len(pieces) - 1 and waiting[0] < DRAFT_BACKLOG
                            await issue(joiner.update(step, draft=at_edge))
                            audio.drop_before(joiner.keep_from(step))
                    if isinstance(control, Finalize):
                        await issue(joiner.finalize(step))
                    elif isinstance(control, Reconfigure):
                        if control.rules is not None:
                            joiner.configure(control.rules)
                        if control.keyterms != KEEP:
                            boosted[0] = control.keyterms
                            drafts.drop()  # a first pass made with the old terms is not this turn's final
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
            if item.cancelled():
                continue  # a stale partial (its turn went final first)
            try:
                event = await item
            except asyncio.CancelledError:
                if item.cancelled() and not asyncio.current_task().cancelling():
                    continue  # cancelled as stale while we waited for it; this consumer goes on
                raise
            if event is not None:
                yield event
    finally:
        for task in tasks:
            task.cancel()
        drafts.drop()
        while not results.empty():
            item = results.get_nowait()
            if isinstance(item, asyncio.Future):
                item.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
