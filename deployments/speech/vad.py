"""Speech segmentation with Silero VAD's ONNX sequence model (many 32 ms windows per ONNX call).

The ``silero-vad`` package ships a "sequence" export of its model that runs a whole block of windows per call with
bit-identical probabilities to the stock one-window-at-a-time loop, and the state machine
``get_speech_timestamps_from_probs`` that turns probabilities into segments. We use both as they are, then shape the
segments for the recogniser: adjacent short segments are merged (fewer, fuller model inputs) and nothing is longer
than ``max_segment_s`` (silero cuts over-long speech at its longest pause).
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .parakeet_defaults import SAMPLE_RATE
from .schemas import SpeechSegment
from .settings import VadSettings

WINDOW_SAMPLES = 512  # one Silero window at 16 kHz (32 ms)
CONTEXT_SAMPLES = 64


def silero_model_path(name: str = "silero_vad_16k_sequence.onnx") -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The silero-vad package is not installed (pip install silero-vad).")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


class SpeechDetector:
    """Stateless per call: one instance serves every request of a Segmenter replica."""

    def __init__(self, settings: VadSettings):
        from silero_vad import SileroVADSequence

        self.settings = settings
        self.model = SileroVADSequence(str(silero_model_path()), max_frames=settings.frames_per_call)
        parallel = settings.threads > 1 and settings.parallel_chunk_s > 0
        self._chunk_pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="vad-chunk") \
            if parallel else None

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Per-window speech probabilities; long files run as parallel chunks when threads allow.

        The model is an LSTM, so a chunk cannot start from the previous chunk's state without waiting for it.
        Each chunk instead re-reads ``warmup_s`` of audio before its start from a zero state and drops those
        windows. Silero's state has a long memory, so probabilities near a border differ somewhat from the
        sequential pass; segments keep their number and move by at most a few windows (checked in tests). Off by
        default (``parallel_chunk_s: 0``).
        """
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        chunk = int(self.settings.parallel_chunk_s * SAMPLE_RATE) // WINDOW_SAMPLES * WINDOW_SAMPLES
        if self._chunk_pool is None or len(audio) <= 1.5 * chunk:
            return self.model.audio_forward(audio)
        warmup = int(self.settings.warmup_s * SAMPLE_RATE) // WINDOW_SAMPLES * WINDOW_SAMPLES

        def run(start: int) -> np.ndarray:
            begin = max(0, start - warmup)
            probs = self.model.audio_forward(audio[begin:start + chunk])
            return probs[(start - begin) // WINDOW_SAMPLES:]

        return np.concatenate(list(self._chunk_pool.map(run, range(0, len(audio), chunk))))

    def segments(self, audio: np.ndarray) -> list[SpeechSegment]:
        return self.segments_from_probabilities(self.probabilities(audio), len(audio))

    def segments_from_probabilities(self, probabilities: np.ndarray, total_samples: int) -> list[SpeechSegment]:
        from silero_vad import get_speech_timestamps_from_probs

        s = self.settings
        raw = get_speech_timestamps_from_probs(
            probabilities.tolist(),
            sampling_rate=SAMPLE_RATE,
            threshold=s.threshold,
            neg_threshold=s.neg_threshold,
            min_speech_duration_ms=s.min_speech_duration_ms,
            min_silence_duration_ms=s.min_silence_duration_ms,
            speech_pad_ms=s.speech_pad_ms,
            max_speech_duration_s=s.max_segment_s,
            audio_length_samples=total_samples,
        )
        segments = [SpeechSegment(start=int(r["start"]), end=int(r["end"])) for r in raw]
        return merge_segments(segments, int(s.merge_up_to_s * SAMPLE_RATE), int(s.merge_max_gap_s * SAMPLE_RATE))


def merge_segments(segments: list[SpeechSegment], up_to_samples: int, max_gap_samples: int) -> list[SpeechSegment]:
    """Join neighbours while the joined span stays within ``up_to_samples`` and the pause is short enough."""
    merged: list[SpeechSegment] = []
    for segment in segments:
        if merged:
            last = merged[-1]
            if segment.start - last.end <= max_gap_samples and segment.end - last.start <= up_to_samples:
                merged[-1] = SpeechSegment(start=last.start, end=max(last.end, segment.end))
                continue
        merged.append(segment)
    return merged


def whole_file(total_samples: int) -> list[SpeechSegment]:
    """VAD off: the whole file is one model input."""
    return [SpeechSegment(start=0, end=total_samples)]
