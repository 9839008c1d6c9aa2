"""What the Ingress does with a request, without Ray: decode -> speech segments -> fan-out to the model -> align.

The graph's deployments are reached through ``Backends`` (the Ingress passes Ray handles wrapped in
``deployments/backends.py``; unit tests pass fakes). The pipeline owns the request: it decodes and validates the
audio once, bounds the request's time, and turns failures into the ``ApiError`` a client should see.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Protocol, Union

import numpy as np

from . import audio as audio_io
from .catalog import Choice
from .errors import ApiError, InternalError, Overloaded
from .keyterms import Keyterms
from .fan_out import Cancellable, transcribe_as_found
from .live import Control, live_events
from .live_vad import LiveVadState, LiveVadStep
from .parakeet_defaults import SAMPLE_RATE
from .protocol import ErrorInfo, LiveEvent, SseError, SseEvent, TranscriptTextDelta, TranscriptTextDone
from .schemas import (ChannelText, Segment, SegmentTokens, SpeechSegment, TranscriptionResult, Word,
                      token_logprobs)
from .settings import AppSettings, TurnRules, VadSettings
from .timestamps import join_text
from .vad import whole_file

log = logging.getLogger(__name__)
AudioInput = Union[bytes, bytearray, memoryview, np.ndarray, list]
OnText = Callable[[str, Optional[int]], Awaitable[None]]  # a segment's text and its channel (multichannel)


class Backends(Protocol):
    """The deployments the pipeline calls."""

    async def put(self, audio: np.ndarray) -> Any:
        """Store the audio once; what is returned is passed to ``segments`` and ``transcribe`` instead."""

    def segments(self, audio_ref: Any) -> AsyncIterator[list[SpeechSegment]]:
        """Speech segments in order, as VAD finds them."""

    def transcribe(self, audio_ref: Any, start: int, end: int, model: str, keyterms: Keyterms | None = None,
                   priority: str = "file") -> Cancellable:
        """Start one segment's transcription by ``model`` (a batched model call, boosting ``keyterms``; ``file`` or
        ``job`` work) without waiting for it."""

    async def collect(self, call: Cancellable) -> SegmentTokens: ...

    async def transcribe_samples(self, samples: np.ndarray, model: str, priority: str = "final",
                                 keyterms: Keyterms | None = None) -> SegmentTokens:
        """A live stream's audio (a final, a first pass or a partial: ``priority``) by ``model``."""

    async def check_keyterms(self, model: str, keyterms: Keyterms) -> None:
        """A 400 naming a term ``model`` cannot spell; the set's tree is built before the first segment needs it."""

    async def align(self, pieces: list[tuple[SegmentTokens, float, float]], duration: float
                    ) -> tuple[list[Word], list[Segment]]: ...

    async def vad_step(self, state: LiveVadState, samples: np.ndarray, last: bool) -> LiveVadStep: ...


class SegmentStore(Protocol):
    """A job's finished segments (``speech/job_runner.py``): a segment kept by an earlier run is not transcribed
    again, a new one is kept the moment its tokens arrive."""

    in_flight: int  # the job's segments at the Transcribers at once

    def known(self, key: str) -> SegmentTokens | None: ...

    def keep(self, key: str, tokens: SegmentTokens) -> None: ...

    def check(self) -> None:
        """Raises when the job must stop (cancelled, or its claim lost) before another segment is sent."""

    def done_through(self, channel: int, seconds: float) -> None:
        """The channel is transcribed up to ``seconds`` (progress)."""


class _StoredCall:
    """A job's segment that an earlier run already transcribed."""

    def __init__(self, tokens: SegmentTokens, segment: SpeechSegment):
        self.tokens = tokens
        self.segment = segment

    def cancel(self) -> None:
        pass

    async def result(self) -> SegmentTokens:
        return self.tokens


class _KeptCall:
    """A job's segment at the model: its tokens are kept as soon as they arrive, whatever order they are collected
    in (so a replica that dies next loses none of the finished work)."""

    def __init__(self, backends: "Backends", call: Cancellable, segment: SpeechSegment,
                 keep: Callable[[SegmentTokens], None]):
        self.call = call
        self.segment = segment
        self.task = asyncio.ensure_future(self._kept(backends, keep))

    async def _kept(self, backends: "Backends", keep: Callable[[SegmentTokens], None]) -> SegmentTokens:
        tokens = await backends.collect(self.call)
        keep(tokens)
        return tokens

    def cancel(self) -> None:
        self.call.cancel()
        self.task.cancel()

    async def result(self) -> SegmentTokens:
        return await self.task


@dataclass
class LoadedAudio:
    samples: np.ndarray  # float32, 16 kHz: mono, or (channels, samples) for multichannel requests
    duration: float  # seconds

    @property
    def work_s(self) -> float:
        """Audio seconds the model will hear: every channel's."""
        return self.duration * (len(self.samples) if self.samples.ndim == 2 else 1)


ACCEPTED_KEYTERM_SETS = 4096  # term sets a model accepted that this process remembers (one int each)


class TranscriptionPipeline:
    def __init__(self, backends: Backends, settings: AppSettings):
        self.backends = backends
        self.settings = settings
        self._accepted: collections.OrderedDict[int, None] = collections.OrderedDict()

    async def load(self, audio: AudioInput, sample_rate: int | None = None, multichannel: bool = False
                   ) -> LoadedAudio:
        """Encoded bytes (any format FFmpeg reads) or samples at ``sample_rate`` -> validated 16 kHz mono (with
        ``multichannel``, each channel kept: shape (channels, samples)). Decoding runs on a worker thread: never on
        the event loop."""
        if isinstance(audio, (bytes, bytearray, memoryview)):
            samples = await asyncio.to_thread(audio_io.decode, bytes(audio), self.settings.limits.max_audio_s,
                                              multichannel)
        else:
            samples = await asyncio.to_thread(audio_io.from_array, audio, sample_rate, multichannel)
        return LoadedAudio(samples, audio_io.validate(samples, self.settings.limits))

    async def checked(self, choice: Choice) -> Choice:
        """``choice`` once its model has accepted its keyterms (a 400 naming a term it cannot spell), before any
        audio work is spent on the request or stream."""
        if choice.keyterms is None:
            return choice
        # A set the model accepted before needs no second round trip (an app sends the same terms with every
        # request): the check waits behind the model call running then. Were a Transcriber ever to meet a set it
        # cannot spell without a check (a hash collision here), building its tree fails only that request's
        # segments, with the same 400.
        key = hash((choice.model.id, choice.keyterms))
        if key in self._accepted:
            self._accepted.move_to_end(key)
            return choice
        await self.backends.check_keyterms(choice.model.id, choice.keyterms)
        self._accepted[key] = None
        if len(self._accepted) > ACCEPTED_KEYTERM_SETS:
            self._accepted.popitem(last=False)
        return choice

    async def transcribe(self, audio: LoadedAudio, *, timestamps: bool, vad: bool, model: Choice,
                         logprobs: bool = False, on_text: OnText | None = None, job: SegmentStore | None = None
                         ) -> TranscriptionResult:
        """The graph for one request, within ``request_timeout_s``. ``on_text`` receives each segment's text (and
        its channel, for multichannel audio), in order, as soon as it is ready; ``logprobs`` adds each token's
        log-probability (from the same pass). Audio of shape (channels, samples) is transcribed channel by channel
        (their segments share the Transcriber's batches) and merged on one timeline. A ``job``'s segments run as
        background work (behind live and file segments, ``job.in_flight`` at a time, no time bound), and those it
        already holds are not sent again."""
        if job is not None:
            return await self._transcribe(audio, timestamps, vad, model, logprobs, on_text, job)
        try:
            return await asyncio.wait_for(self._transcribe(audio, timestamps, vad, model, logprobs, on_text),
                                          self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise Overloaded(f"The request took longer than {self.settings.request_timeout_s:g} s.",
                             code="timeout") from None

    async def _transcribe(self, audio: LoadedAudio, timestamps: bool, vad: bool, model: Choice, logprobs: bool,
                          on_text: OnText | None, job: SegmentStore | None = None) -> TranscriptionResult:
        if audio.samples.ndim == 2:
            return await self._transcribe_channels(audio, timestamps, vad, model, logprobs, on_text, job)
        segments, tokens = await self._recognise(audio.samples, vad, model, on_text, None, job)
        result = TranscriptionResult(duration=round(audio.duration, 3), text=join_text([t.text for t in tokens]),
                                     language=model.language)
        if logprobs:
            result.logprobs = [scored for t in tokens for scored in token_logprobs(t)]
        if timestamps:
            result.words, result.segments = await self._align(segments, tokens, audio.duration)
        return result

    async def _recognise(self, samples: np.ndarray, vad: bool, model: Choice, on_text: OnText | None,
                         channel: int | None, job: SegmentStore | None = None
                         ) -> tuple[list[SpeechSegment], list[SegmentTokens]]:
        """One mono signal's segments and their tokens. Each segment goes to the model the moment VAD hands it out,
        so transcription overlaps VAD; the audio is stored once and every call carries the reference with its
        (start, end)."""
        audio_ref = await self.backends.put(samples)

        async def text_out(text: str) -> None:
            await on_text(text, channel)

        def issue(segment: SpeechSegment) -> Cancellable:
            return self.backends.transcribe(audio_ref, segment.start, segment.end, model.model.id, model.keyterms)

        def issue_for_job(segment: SpeechSegment) -> Cancellable:
            key = f"{channel or 0}:{segment.start}:{segment.end}"  # VAD is deterministic: a resumed run finds it
            if (known := job.known(key)) is not None:
                return _StoredCall(known, segment)
            job.check()
            call = self.backends.transcribe(audio_ref, segment.start, segment.end, model.model.id, model.keyterms,
                                            priority="job")
            return _KeptCall(self.backends, call, segment, lambda tokens: job.keep(key, tokens))

        async def collect_for_job(call: _StoredCall | _KeptCall) -> SegmentTokens:
            tokens = await call.result()
            job.done_through(channel or 0, call.segment.end / SAMPLE_RATE)
            return tokens

        if job is None:
            return await transcribe_as_found(self._speech(audio_ref, len(samples), vad), issue=issue,
                                             collect=self.backends.collect,
                                             on_text=text_out if on_text is not None else None)
        return await transcribe_as_found(self._speech(audio_ref, len(samples), vad), issue=issue_for_job,
                                         collect=collect_for_job, max_in_flight=job.in_flight)

    async def _align(self, segments: list[SpeechSegment], tokens: list[SegmentTokens], duration: float
                     ) -> tuple[list[Word], list[Segment]]:
        pieces = [(t, s.start / SAMPLE_RATE, s.end / SAMPLE_RATE) for t, s in zip(tokens, segments)]
        return await self.backends.align(pieces, duration)

    async def _transcribe_channels(self, audio: LoadedAudio, timestamps: bool, vad: bool, model: Choice,
                                   logprobs: bool, on_text: OnText | None, job: SegmentStore | None
                                   ) -> TranscriptionResult:
        """Each channel on its own (VAD, model, words), concurrently; merged on one timeline: the text and
        logprobs in the time order of their segments, words and segments tagged with their channel."""
        heard = await asyncio.gather(*[self._recognise(np.ascontiguousarray(row), vad, model, on_text, channel, job)
                                       for channel, row in enumerate(audio.samples)])
        timeline = sorted(((segment.start, channel, tokens) for channel, (segments, found) in enumerate(heard)
                           for segment, tokens in zip(segments, found)), key=lambda item: item[:2])
        result = TranscriptionResult(
            duration=round(audio.duration, 3), text=join_text([t.text for _, _, t in timeline]),
            language=model.language,
            channels=[ChannelText(channel=c, text=join_text([t.text for t in found])) for c, (_, found) in
                      enumerate(heard)])
        if logprobs:
            result.logprobs = [scored for _, _, t in timeline for scored in token_logprobs(t)]
        if timestamps:
            aligned = await asyncio.gather(*[self._align(segments, found, audio.duration)
                                             for segments, found in heard])
            words = [w.model_copy(update={"channel": c}) for c, (ws, _) in enumerate(aligned) for w in ws]
            segments = [s.model_copy(update={"channel": c}) for c, (_, ss) in enumerate(aligned) for s in ss]
            result.words = sorted(words, key=lambda w: (w.start, w.channel))
            result.segments = [s.model_copy(update={"id": i}) for i, s in
                               enumerate(sorted(segments, key=lambda s: (s.start, s.channel)))]
        return result

    async def _speech(self, audio_ref: Any, total_samples: int, vad: bool) -> AsyncIterator[list[SpeechSegment]]:
        if not vad:
            yield whole_file(total_samples)
            return
        async for found in self.backends.segments(audio_ref):
            yield found

    async def text_events(self, audio: LoadedAudio, *, vad: bool, model: Choice) -> AsyncIterator[SseEvent]:
        """OpenAI's ``transcript.text.delta`` per finished segment, then ``transcript.text.done``; a failure
        after the first event is an ``error`` event (the HTTP status was already sent)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def on_text(text: str, channel: int | None) -> None:
            await queue.put((text, channel))

        async def run() -> TranscriptionResult:
            try:
                return await self.transcribe(audio, timestamps=False, vad=vad, model=model, on_text=on_text)
            finally:
                await queue.put(None)

        task = asyncio.create_task(run())
        try:
            first = True
            while (item := await queue.get()) is not None:
                text, channel = item
                yield TranscriptTextDelta(delta=text if first else " " + text, channel=channel)
                first = False
            yield TranscriptTextDone(text=(await task).text)
        except ApiError as exc:
            yield SseError(error=ErrorInfo.of(exc))
        except Exception:  # noqa: BLE001 - the client gets a clean error event; the log has the details
            log.exception("SSE transcription failed")
            yield SseError(error=ErrorInfo.of(InternalError("Internal server error.")))
        finally:
            if not task.done():
                task.cancel()

    def live(self, chunks: AsyncIterator[np.ndarray | Control], *, timestamps: bool, partials: bool, model: Choice,
             turns: bool = False, logprobs: bool = False, vad: VadSettings | None = None,
             rules: TurnRules | None = None, first_pass: bool | None = None) -> AsyncIterator[LiveEvent]:
        """A live stream's events: VAD on the Segmenter replicas, turns to the model, words when asked. ``vad`` /
        ``rules`` replace the service's settings for this stream (its config, a Realtime session's turn detection).
        """
        async def transcribe(samples: np.ndarray, priority: str, keyterms: Keyterms | None) -> SegmentTokens:
            return await self.backends.transcribe_samples(samples, model.model.id, priority, keyterms)

        return live_events(chunks, self.backends.vad_step, transcribe,
                           self.backends.align if timestamps else None, self.settings.stream,
                           vad or self.settings.vad, partials, turns=turns, logprobs=logprobs, rules=rules,
                           first_pass=first_pass, keyterms=model.keyterms)

    def replay(self, audio: LoadedAudio, *, chunk_ms: int, timestamps: bool, partials: bool, model: Choice
               ) -> AsyncIterator[LiveEvent]:
        """A whole recording fed to the live pipeline in ``chunk_ms`` pieces (the handle's ``transcribe_stream``)."""
        step = max(1, int(chunk_ms * SAMPLE_RATE / 1000))

        async def chunks() -> AsyncIterator[np.ndarray]:
            for start in range(0, len(audio.samples), step):
                yield audio.samples[start:start + step]

        return self.live(chunks(), timestamps=timestamps, partials=partials, model=model)
