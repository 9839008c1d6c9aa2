"""Benchmark audio: synthetic speech with realistic pauses, built from the project's held-out voice clips."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tests.helpers import DIGITS, SAMPLE_RATE, long_recording


def synthetic_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Phrases of 3-8 digit words, 0.2-3 s pauses (like a speaker thinking), trimmed to ``seconds``."""
    rng = random.Random(seed)
    phrases, total = [], 0.0
    while total < seconds + 5:
        words = [rng.choice(DIGITS) for _ in range(rng.randint(3, 8))]
        phrases.append(words)
        total += 0.45 * len(words) + 1.6
    audio = long_recording(phrases, rng, phrase_gap_s=(0.2, 3.0)).audio
    if len(audio) < seconds * SAMPLE_RATE:
        audio = np.tile(audio, int(np.ceil(seconds * SAMPLE_RATE / len(audio))))
    return np.ascontiguousarray(audio[: int(seconds * SAMPLE_RATE)])


def load_user_audio(path: Path) -> np.ndarray:
    from deployments.speech.audio import decode

    return decode(Path(path).read_bytes())
