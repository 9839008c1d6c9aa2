"""Live streams' VAD as the Segmenter runs it: each call carries its stream's whole state in and out.

A stream's VAD memory (silero's LSTM state, the last window's context, samples short of a window) and its
``SpeechTimeline`` (the same incremental state machine as the offline path) travel with every step, so any
Segmenter replica can take a stream's next step, streams scale with Segmenter replicas, and two streams can never
share state. The state is a few kilobytes.

Steps of concurrent streams that reach a replica together (an Ingress sends its streams' steps of one tick as one
call) run as one batch: when each brings only a few windows (clients sending small frames), window ``w`` of every
stream goes through one call of silero's batched model (1.9x faster than a call per stream for 16 streams of one
window each); a stream that brings many windows runs them through the sequence model in one call. Both give the
same probabilities, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .schemas import SpeechSegment
from .segmentation import WINDOW_SAMPLES, SpeechTimeline
from .settings import VadSettings
from .vad import (BATCHED_MODEL, SEQUENCE_MODEL, VadMemory, batched_probabilities, frame, onnx_session,
                  sequence_probabilities)

STREAMS_PER_WINDOW = 4


@dataclass
class LiveVadState:
    """One stream's VAD, between steps. Created by the caller with ``LiveVadState.new``, then only passed along."""

    timeline: SpeechTimeline
    memory: VadMemory = field(default_factory=VadMemory)
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # samples short of a window
    received: int = 0  # samples of the stream so far (16 kHz)

    @classmethod
    def new(cls, settings: VadSettings) -> "LiveVadState":
        # Live streams join segments into utterances on their own pause rule (``stream.end_of_utterance_ms``), so
        # the timeline hands each padded segment out as soon as it is final instead of merging.
        return cls(timeline=SpeechTimeline(settings.model_copy(update={"merge_up_to_s": 0.0}), keep_speech=True))


@dataclass
class LiveVadStep:
    """A step's outcome: the state to send with the next step and what VAD now knows about the stream."""

    state: LiveVadState
    segments: list[SpeechSegment]  # final segments (padded, in samples from the stream's start), in order
    open_from: int | None  # no segment handed out later starts before this sample (None: the stream is over)
    position: int  # samples VAD has read
    speech: list[tuple[int, int]] = field(default_factory=list)  # each segment's raw speech (start, end): pauses
    # the speech that ended last and is not in ``segments`` yet, padded as it will be if nothing but the speech
    # going on now (if any) starts within two pads, and its raw (start, end) (None when none waits)
    tentative: SpeechSegment | None = None
    tentative_speech: tuple[int, int] | None = None
    speaking_from: int | None = None  # raw start of the speech going on now (None: silence)
    received: int = 0  # samples of the stream so far (VAD has read all but the last partial window)


class LiveVad:
    """Steps many streams at once. Stateless between calls (every stream's state comes with its step)."""

    def __init__(self, settings: VadSettings):
        self.sequence = onnx_session(SEQUENCE_MODEL, settings.onnx_threads)
        self.batched = onnx_session(BATCHED_MODEL, 1)

    def step(self, calls: list[tuple[LiveVadState, np.ndarray, bool]]) -> list[LiveVadStep]:
        """``(state, new 16 kHz samples, last)`` per stream -> one ``LiveVadStep`` each, in order."""
        frames = [self._take_windows(state, samples, last) for state, samples, last in calls]
        together = self._batched_rows([len(f) for f in frames])
        probabilities = [np.zeros(0, np.float32)] * len(calls)
        if together:
            for i, probs in zip(together, batched_probabilities(
                    self.batched, [calls[i][0].memory for i in together], [frames[i] for i in together])):
                probabilities[i] = probs
        for i, (state, _, _) in enumerate(calls):
            if len(frames[i]) and i not in together:
                probabilities[i] = sequence_probabilities(self.sequence, state.memory, frames[i])
        return [self._advance(state, probs, last) for (state, _, last), probs in zip(calls, probabilities)]

    @staticmethod
    def _batched_rows(windows: list[int]) -> list[int]:
        """The steps worth running window by window in one batched call: at least ``STREAMS_PER_WINDOW`` of them
        per window of the longest (measured on one core: 16 streams x 1 window 1.9x faster batched, 16 x 4 1.2x,
        16 x 8 even, 2 x 1 slower)."""
        for most in (4, 2, 1):
            rows = [i for i, count in enumerate(windows) if 0 < count <= most]
            if len(rows) >= STREAMS_PER_WINDOW * most:
                return rows
        return []

    @staticmethod
    def _take_windows(state: LiveVadState, samples: np.ndarray, last: bool) -> np.ndarray:
        """The whole windows now available (and, at the end, the zero-padded rest); keeps what is left over."""
        audio = np.concatenate([state.tail, np.asarray(samples, np.float32)])
        state.received += len(samples)
        whole = len(audio) if last else len(audio) // WINDOW_SAMPLES * WINDOW_SAMPLES
        state.tail = audio[whole:]
        return frame(audio[:whole])

    @staticmethod
    def _advance(state: LiveVadState, probabilities: np.ndarray, last: bool) -> LiveVadStep:
        timeline = state.timeline
        segments = timeline.push(probabilities.tolist())
        if last:
            segments += timeline.finish(state.received)
        speech, timeline.settled_speech = timeline.settled_speech, []
        waiting = timeline.tentative()
        return LiveVadStep(state=state, segments=segments, open_from=timeline.open_from(),
                           position=state.received if last else timeline.windows * WINDOW_SAMPLES, speech=speech,
                           tentative=waiting[0] if waiting else None, tentative_speech=waiting[1] if waiting else None,
                           speaking_from=None if last else timeline.speech_start(), received=state.received)
