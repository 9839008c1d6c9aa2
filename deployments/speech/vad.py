"""Speech segmentation with Silero VAD's ONNX sequence model (many 32 ms windows per ONNX call).

The ``silero-vad`` package ships a "sequence" export of its model that runs a whole block of windows per call with
bit-identical probabilities to the stock one-window-at-a-time loop; we run it block by block with the LSTM state
carried (``OnnxVadState``). Silero's state machine turns the probabilities into segments; we run it incrementally
(``segmentation.SpeechTimeline``, checked against silero's ``get_speech_timestamps_from_probs``), then shape the
segments for the recogniser: adjacent short segments are merged (fewer, fuller model inputs) and nothing is longer
than ``max_segment_s`` (silero cuts over-long speech at its longest pause).

Each segment is handed out as soon as it is final (``SpeechDetector.iter_segments``), so transcription of the first
phrases overlaps VAD of the rest; the segments are exactly those of one pass over the whole file.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from .parakeet_defaults import SAMPLE_RATE
from .schemas import SpeechSegment
from .segmentation import WINDOW_SAMPLES, SpeechTimeline
from .settings import VadSettings

CONTEXT_SAMPLES = 64  # each window also sees the previous window's last 64 samples
STATE_SHAPE = (1, 1, 128)


def silero_model_path(name: str = "silero_vad_16k_sequence.onnx") -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The silero-vad package is not installed (pip install silero-vad).")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


class OnnxVadState:
    """Silero's sequence model over consecutive pieces of one audio, LSTM state and context carried between calls,
    so the probabilities equal those of one pass over the whole (the per-connection state of a live stream too)."""

    def __init__(self, session):
        self.session = session  # onnxruntime.InferenceSession: stateless and thread-safe, shared
        self.hidden = np.zeros(STATE_SHAPE, np.float32)
        self.cell = np.zeros(STATE_SHAPE, np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES, np.float32)

    def forward(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the ``ceil(len / 512)`` windows of ``samples``; only the audio's last piece may end in
        a partial window (it is zero-padded, as silero does)."""
        count = -(-len(samples) // WINDOW_SAMPLES)
        if count == 0:
            return np.zeros(0, np.float32)
        frames = np.zeros((count, WINDOW_SAMPLES), np.float32)
        frames.reshape(-1)[:len(samples)] = samples
        contexts = np.empty((count, CONTEXT_SAMPLES), np.float32)
        contexts[0] = self.context
        contexts[1:] = frames[:-1, -CONTEXT_SAMPLES:]
        self.context = frames[-1, -CONTEXT_SAMPLES:].copy()
        probs, self.hidden, self.cell = self.session.run(
            ["speech_probs", "hn", "cn"],
            {"input": np.concatenate([contexts, frames], axis=1), "h": self.hidden, "c": self.cell})
        return np.asarray(probs).reshape(-1)


class SpeechDetector:
    """Stateless per call: one instance serves every request of a Segmenter replica."""

    def __init__(self, settings: VadSettings):
        import onnxruntime

        self.settings = settings
        options = onnxruntime.SessionOptions()
        # threads inside one call parallelise the convolutional front end over a block's windows; the results are
        # bit-identical to one thread (checked in tests), so this only trades cores for one file's latency
        options.intra_op_num_threads = settings.onnx_threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(silero_model_path()), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
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
        if not self._in_parallel_chunks(len(audio)):
            return self._forward(audio)
        chunk = self._chunk_samples()
        warmup = int(self.settings.warmup_s * SAMPLE_RATE) // WINDOW_SAMPLES * WINDOW_SAMPLES

        def run(start: int) -> np.ndarray:
            begin = max(0, start - warmup)
            probs = self._forward(audio[begin:start + chunk])
            return probs[(start - begin) // WINDOW_SAMPLES:]

        return np.concatenate(list(self._chunk_pool.map(run, range(0, len(audio), chunk))))

    def _chunk_samples(self) -> int:
        return int(self.settings.parallel_chunk_s * SAMPLE_RATE) // WINDOW_SAMPLES * WINDOW_SAMPLES

    def _in_parallel_chunks(self, total_samples: int) -> bool:
        """Parallel chunking is on and the file is long enough (over 1.5 chunks) to be cut up."""
        return self._chunk_pool is not None and total_samples > 1.5 * self._chunk_samples()

    def _blocks(self, audio: np.ndarray) -> Iterator[np.ndarray]:
        """Probabilities of ``frames_per_call`` windows at a time, in order, the LSTM state carried across."""
        state = OnnxVadState(self.session)
        block = self.settings.frames_per_call * WINDOW_SAMPLES
        for position in range(0, len(audio), block):
            yield state.forward(audio[position:position + block])

    def _forward(self, audio: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.float32), *self._blocks(audio)])

    def iter_segments(self, audio: np.ndarray) -> Iterator[list[SpeechSegment]]:
        """Lists of final segments, in order, as VAD reads through the file (an empty list only at the end).

        Every segment is exactly what one pass over the whole file gives; it is handed out as soon as nothing
        later in the file can change it, so the caller can transcribe it while VAD reads on.
        """
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        timeline = SpeechTimeline(self.settings)
        if self._in_parallel_chunks(len(audio)):
            yield timeline.push(self.probabilities(audio).tolist()) + timeline.finish(len(audio))
            return
        # Blocks of frames_per_call windows (32.8 s by default): the first segments come after ~30 ms of VAD and
        # arrive several at a time, so the Transcriber's batches still fill (smaller first blocks were measured:
        # on CPU the smaller batches they caused cost more than the earlier start saved).
        for probabilities in self._blocks(audio):
            found = timeline.push(probabilities.tolist())
            if found:
                yield found
        yield timeline.finish(len(audio))

    def segments(self, audio: np.ndarray) -> list[SpeechSegment]:
        return [segment for found in self.iter_segments(audio) for segment in found]


def whole_file(total_samples: int) -> list[SpeechSegment]:
    """VAD off: the whole file is one model input."""
    return [SpeechSegment(start=0, end=total_samples)]
