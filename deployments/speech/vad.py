"""Speech segmentation with Silero VAD's ONNX sequence model (many 32 ms windows per ONNX call).

The ``silero-vad`` package ships a "sequence" export of its model that runs a whole block of windows per call with
bit-identical probabilities to the stock one-window-at-a-time loop; we run it block by block with the LSTM state
carried (``VadMemory``). Silero's state machine turns the probabilities into segments; we run it incrementally
(``segmentation.SpeechTimeline``, checked against silero's ``get_speech_timestamps_from_probs``), then shape the
segments for the recogniser: adjacent short segments are merged (fewer, fuller model inputs) and nothing is longer
than ``max_segment_s`` (silero cuts over-long speech at its longest pause).

Each segment is handed out as soon as it is final (``SpeechDetector.iter_segments``), so transcription of the first
phrases overlaps VAD of the rest; the segments are exactly those of one pass over the whole file.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .parakeet_defaults import SAMPLE_RATE
from .schemas import SpeechSegment
from .segmentation import WINDOW_SAMPLES, SpeechTimeline
from .settings import VadSettings

CONTEXT_SAMPLES = 64  # each window also sees the previous window's last 64 samples
STATE_SHAPE = (1, 1, 128)


SEQUENCE_MODEL = "silero_vad_16k_sequence.onnx"  # many windows of one audio per call
BATCHED_MODEL = "silero_vad_16k_op15.onnx"  # one window of many audios per call (live streams)


def silero_model_path(name: str = SEQUENCE_MODEL) -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The silero-vad package is not installed (pip install silero-vad).")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


@dataclass
class VadMemory:
    """What silero carries from one piece of an audio to the next: the LSTM state and the last 64 samples. Plain
    arrays (no session), so a live stream's memory can travel with each call to any Segmenter replica."""

    hidden: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, np.float32))
    cell: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT_SAMPLES, np.float32))


def frame(samples: np.ndarray) -> np.ndarray:
    """``samples`` as ``ceil(len / 512)`` windows; a partial last window is zero-padded, as silero does."""
    frames = np.zeros((-(-len(samples) // WINDOW_SAMPLES), WINDOW_SAMPLES), np.float32)
    frames.reshape(-1)[:len(samples)] = samples
    return frames


def sequence_probabilities(session, memory: VadMemory, frames: np.ndarray) -> np.ndarray:
    """One audio's consecutive windows in one call of silero's sequence model; ``memory`` is carried on."""
    if not len(frames):
        return np.zeros(0, np.float32)
    contexts = np.empty((len(frames), CONTEXT_SAMPLES), np.float32)
    contexts[0] = memory.context
    contexts[1:] = frames[:-1, -CONTEXT_SAMPLES:]
    memory.context = frames[-1, -CONTEXT_SAMPLES:].copy()
    probs, memory.hidden, memory.cell = session.run(
        ["speech_probs", "hn", "cn"],
        {"input": np.concatenate([contexts, frames], axis=1), "h": memory.hidden, "c": memory.cell})
    return np.asarray(probs).reshape(-1)


def batched_probabilities(session, memories: list[VadMemory], frames: list[np.ndarray]) -> list[np.ndarray]:
    """Several audios' next windows through silero's batched model, window ``w`` of every audio in one call (the
    probabilities and state equal those of the sequence model, bit for bit: tests check it)."""
    out = [np.zeros(len(f), np.float32) for f in frames]
    sample_rate = np.array(SAMPLE_RATE, dtype=np.int64)
    for w in range(max((len(f) for f in frames), default=0)):
        rows = [i for i, f in enumerate(frames) if len(f) > w]
        windows = np.stack([frames[i][w] for i in rows])
        contexts = np.stack([memories[i].context for i in rows])
        state = np.stack([np.concatenate([memories[i].hidden[0] for i in rows]),
                          np.concatenate([memories[i].cell[0] for i in rows])])
        probs, state = session.run(["output", "stateN"], {"input": np.concatenate([contexts, windows], axis=1),
                                                         "state": state, "sr": sample_rate})
        for row, i in enumerate(rows):
            out[i][w] = probs[row, 0]
            memories[i].hidden = state[0, row][None, None].copy()
            memories[i].cell = state[1, row][None, None].copy()
            memories[i].context = windows[row, -CONTEXT_SAMPLES:].copy()
    return out


def onnx_session(model_file: str, threads: int = 1):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # threads inside one call parallelise the convolutional front end over a block's windows; the results are
    # bit-identical to one thread (checked in tests), so this only trades cores for one file's latency
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the batched export logs unused initialisers at load
    return onnxruntime.InferenceSession(str(silero_model_path(model_file)), sess_options=options,
                                        providers=["CPUExecutionProvider"])


class SpeechDetector:
    """Stateless per call: one instance serves every request of a Segmenter replica."""

    def __init__(self, settings: VadSettings):
        self.settings = settings
        self.session = onnx_session(SEQUENCE_MODEL, settings.onnx_threads)
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
        memory = VadMemory()
        block = self.settings.frames_per_call * WINDOW_SAMPLES
        for position in range(0, len(audio), block):
            yield sequence_probabilities(self.session, memory, frame(audio[position:position + block]))

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
