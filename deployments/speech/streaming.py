"""Per-connection streaming segmentation: the Segmenter's VAD logic and knobs, run incrementally.

Audio arrives in pieces of any size. Complete 32 ms windows go through Silero's ONNX sequence model with the LSTM
state carried between calls (so the probabilities equal those of the whole file), and silero's own
``get_speech_timestamps_from_probs`` is re-run over the windows since the last finished utterance. An utterance
is final once the stream has moved far enough past its end that no later speech could change its padding, and
no new speech began within ``end_of_utterance_ms``; segments closer than that join one utterance (as the offline
path merges them). An utterance longer than ``max_segment_s`` is cut at its longest pause. While an utterance
is open, a partial is requested every ``partial_interval_ms`` of audio.

Memory stays bounded: audio before the current utterance is dropped, and long silences advance the scan start.
Nothing here is shared between connections except the (thread-safe, stateless) ONNX session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .parakeet_defaults import SAMPLE_RATE
from .settings import VadSettings
from .vad import WINDOW_SAMPLES, OnnxVadState


class StreamConfig(BaseModel):
    """The optional first text message of a stream."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(SAMPLE_RATE, ge=8000, le=192000)
    encoding: Literal["pcm_s16le"] = "pcm_s16le"
    timestamps: bool = False
    partials: bool = True


@dataclass
class UtteranceAudio:
    """A stretch of the stream to transcribe: an utterance's final audio, or the open utterance so far."""

    id: int
    start: int  # samples from the start of the stream (16 kHz)
    end: int
    audio: np.ndarray
    final: bool


class StreamSegmenter:
    def __init__(self, settings: VadSettings, session, partial_interval_ms: int, partials: bool = True,
                 end_of_utterance_ms: int = 800):
        self.settings = settings
        self.vad = OnnxVadState(session)  # this connection's LSTM state over the shared ONNX session
        self.partial_every = int(partial_interval_ms * SAMPLE_RATE / 1000) if partials else 0
        self.pad = int(settings.speech_pad_ms * SAMPLE_RATE / 1000)
        self.min_speech = int(settings.min_speech_duration_ms * SAMPLE_RATE / 1000)
        self.buffer = np.zeros(0, np.float32)  # audio from sample ``self.base`` on
        self.base = 0
        self.received = 0
        self.windows_done = 0  # windows whose probability is known
        self.probs: list[float] = []  # probabilities from window ``self.scan_from`` on
        self.scan_from = 0
        self.next_id = 0
        self.last_partial_at = 0
        # VAD segments closer than this join one utterance (as the offline path merges them): finals carry whole
        # phrases, which the model transcribes better than words alone
        self.end_gap = int(end_of_utterance_ms * SAMPLE_RATE / 1000)
        self.max_utterance = int(settings.max_segment_s * SAMPLE_RATE)
        self.pending: tuple[int, int] | None = None  # finished segments not yet emitted as a final

    # ------------------------------------------------------------------ public

    def push(self, samples: np.ndarray) -> list[UtteranceAudio]:
        """Add 16 kHz float32 samples; returns finished utterances and at most one partial request, in order."""
        if samples.size:
            self.buffer = np.concatenate([self.buffer, samples.astype(np.float32, copy=False)])
            self.received += samples.size
        self._run_vad(flush=False)
        return self._collect(final_stream=False)

    def finish(self) -> list[UtteranceAudio]:
        """The stream ended: every remaining utterance is final."""
        self._run_vad(flush=True)
        return self._collect(final_stream=True)

    @property
    def buffered_samples(self) -> int:
        return self.buffer.size

    # ------------------------------------------------------------------ internals

    def _run_vad(self, flush: bool) -> None:
        available = self.received - self.windows_done * WINDOW_SAMPLES
        count = available // WINDOW_SAMPLES
        tail = available - count * WINDOW_SAMPLES
        if flush and tail:
            count += 1
        if count <= 0:
            return
        first = self.windows_done * WINDOW_SAMPLES - self.base
        self.probs.extend(self.vad.forward(self.buffer[first:first + count * WINDOW_SAMPLES]).tolist())
        self.windows_done += count

    def _segments(self, length_samples: int) -> list[dict]:
        from silero_vad import get_speech_timestamps_from_probs

        s = self.settings
        return get_speech_timestamps_from_probs(
            self.probs, sampling_rate=SAMPLE_RATE, threshold=s.threshold, neg_threshold=s.neg_threshold,
            min_speech_duration_ms=s.min_speech_duration_ms, min_silence_duration_ms=s.min_silence_duration_ms,
            speech_pad_ms=s.speech_pad_ms, max_speech_duration_s=s.max_segment_s,
            audio_length_samples=length_samples)

    def _collect(self, final_stream: bool) -> list[UtteranceAudio]:
        origin = self.scan_from * WINDOW_SAMPLES
        seen = self.windows_done * WINDOW_SAMPLES
        length = (self.received if final_stream else seen) - origin
        segments = self._segments(length) if length > 0 else []
        out: list[UtteranceAudio] = []
        # far enough past an end that a later segment could no longer change its padding
        settle = self.pad + self.min_speech + 2 * WINDOW_SAMPLES
        open_segment: tuple[int, int] | None = None
        for index, seg in enumerate(segments):
            start, end = origin + seg["start"], min(origin + seg["end"], self.received)
            is_last = index == len(segments) - 1
            if final_stream or not is_last or (end < origin + length and seen - end >= settle):
                self._close_segment(start, end, out)
                self.scan_from = math.ceil(end / WINDOW_SAMPLES)
            else:
                open_segment = (start, end)
        if self.pending is not None:
            gap_to_next = (open_segment[0] if open_segment else seen) - self.pending[1]
            if final_stream or gap_to_next >= self.end_gap:
                out.append(self._final(*self.pending))
        if open_segment and self.partial_every and seen - self.last_partial_at >= self.partial_every \
                and open_segment[1] - open_segment[0] >= self.min_speech:
            self.last_partial_at = seen
            start = self.pending[0] if self.pending is not None else open_segment[0]
            out.append(self._utterance(start, open_segment[1], final=False))
        if not segments:
            # long silence: restart the scan near the present (no open speech can start before this point)
            keep = math.ceil((self.min_speech + self.pad) / WINDOW_SAMPLES) + 2
            self.scan_from = max(self.scan_from, self.windows_done - keep)
        self._trim()
        return out

    def _close_segment(self, start: int, end: int, out: list[UtteranceAudio]) -> None:
        """A finished VAD segment joins the pending utterance unless the pause or the length says otherwise."""
        if self.pending is not None and (start - self.pending[1] >= self.end_gap
                                         or end - self.pending[0] > self.max_utterance):
            out.append(self._final(*self.pending))
        self.pending = (start, end) if self.pending is None else (self.pending[0], end)

    def _final(self, start: int, end: int) -> UtteranceAudio:
        self.pending = None
        self.last_partial_at = self.windows_done * WINDOW_SAMPLES
        return self._utterance(start, end, final=True)

    def _utterance(self, start: int, end: int, final: bool) -> UtteranceAudio:
        start = max(start, self.base)
        audio = self.buffer[start - self.base:end - self.base].copy()
        utterance = UtteranceAudio(self.next_id, start, end, audio, final)
        if final:
            self.next_id += 1
        return utterance

    def _trim(self) -> None:
        drop_windows = self.scan_from - (self.windows_done - len(self.probs))
        if drop_windows > 0:
            del self.probs[:drop_windows]
        keep_from = min(self.scan_from * WINDOW_SAMPLES, self.windows_done * WINDOW_SAMPLES)
        if self.pending is not None:
            keep_from = min(keep_from, self.pending[0])
        if keep_from > self.base:
            self.buffer = self.buffer[keep_from - self.base:]
            self.base = keep_from


class Resampler:
    """Streaming resampling to 16 kHz for clients that send another rate (state kept across frames)."""

    def __init__(self, rate: int):
        import soxr

        self.stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32") if rate != SAMPLE_RATE else None

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return samples
        return self.stream.resample_chunk(samples, last=last)
