"""Per-connection streaming segmentation: the Segmenter's VAD logic and knobs, run incrementally.

Audio arrives in pieces of any size. Complete 32 ms windows go through Silero's ONNX sequence model with the LSTM
state carried between calls (so the probabilities equal those of the whole file), and silero's own
``get_speech_timestamps_from_probs`` is re-run over the windows since the last finished utterance. An utterance
is final once the stream has moved far enough past its end that no later speech could change its padding; an
utterance longer than ``max_segment_s`` is cut at its longest pause by the same state machine. While an utterance
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
from .vad import CONTEXT_SAMPLES, WINDOW_SAMPLES


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
    def __init__(self, settings: VadSettings, session, partial_interval_ms: int, partials: bool = True):
        self.settings = settings
        self.session = session  # onnxruntime.InferenceSession of the silero sequence model
        self.partial_every = int(partial_interval_ms * SAMPLE_RATE / 1000) if partials else 0
        self.pad = int(settings.speech_pad_ms * SAMPLE_RATE / 1000)
        self.min_speech = int(settings.min_speech_duration_ms * SAMPLE_RATE / 1000)
        self.buffer = np.zeros(0, np.float32)  # audio from sample ``self.base`` on
        self.base = 0
        self.received = 0
        self.windows_done = 0  # windows whose probability is known
        self.probs: list[float] = []  # probabilities from window ``self.scan_from`` on
        self.scan_from = 0
        self.hidden = np.zeros((1, 1, 128), np.float32)
        self.cell = np.zeros((1, 1, 128), np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self.next_id = 0
        self.last_partial_at = 0

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
        frames = np.zeros((count, WINDOW_SAMPLES), np.float32)
        chunk = self.buffer[first:first + count * WINDOW_SAMPLES]
        frames.reshape(-1)[:chunk.size] = chunk
        contexts = np.empty((count, CONTEXT_SAMPLES), np.float32)
        contexts[0] = self.context
        contexts[1:] = frames[:-1, -CONTEXT_SAMPLES:]
        self.context = frames[-1, -CONTEXT_SAMPLES:].copy()
        block = np.concatenate([contexts, frames], axis=1)
        probs, self.hidden, self.cell = self.session.run(
            ["speech_probs", "hn", "cn"], {"input": block, "h": self.hidden, "c": self.cell})
        self.probs.extend(np.asarray(probs).reshape(-1).tolist())
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
        for index, seg in enumerate(segments):
            start, end = origin + seg["start"], origin + seg["end"]
            is_last = index == len(segments) - 1
            if final_stream or (not is_last) or (end < origin + length and seen - end >= settle):
                out.append(self._utterance(start, min(end, self.received), final=True))
                self.scan_from = math.ceil(min(end, self.received) / WINDOW_SAMPLES)
                self.last_partial_at = self.scan_from * WINDOW_SAMPLES
                continue
            if self.partial_every and end >= origin + length and seen - self.last_partial_at >= self.partial_every \
                    and end - start >= self.min_speech:
                self.last_partial_at = seen
                out.append(self._utterance(start, end, final=False))
            break
        if not segments:
            # long silence: restart the scan near the present (no open speech can start before this point)
            keep = math.ceil((self.min_speech + self.pad) / WINDOW_SAMPLES) + 2
            self.scan_from = max(self.scan_from, self.windows_done - keep)
        self._trim()
        return out

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
