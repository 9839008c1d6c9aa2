"""Speech for the benchmark and the tests: recordings built from the project's held-out voice clips
(tests/fixtures/digits_heldout.npz: digit words by voices the test model never heard), with every word's true
start and end known."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from deployments.speech.parakeet_defaults import SAMPLE_RATE

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"]


@dataclass
class Recording:
    audio: np.ndarray
    phrases: list[str] = field(default_factory=list)
    words: list[tuple[str, float, float]] = field(default_factory=list)  # (word, start s, end s)

    @property
    def text(self) -> str:
        return " ".join(self.phrases)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@lru_cache(maxsize=1)
def heldout() -> dict:
    data = np.load(FIXTURES / "digits_heldout.npz")
    clips: dict[tuple[int, str], np.ndarray] = {}
    offsets = data["clip_offsets"]
    for i, (voice, word) in enumerate(zip(data["clip_voice"], data["clip_word"])):
        clips[(int(voice), str(word))] = data["clip_audio"][offsets[i]:offsets[i + 1]].astype(np.float32) / 32767
    utt_offsets = data["utt_offsets"]
    utterances = [(data["utt_audio"][utt_offsets[i]:utt_offsets[i + 1]].astype(np.float32) / 32767, str(text))
                  for i, text in enumerate(data["utt_text"])]
    return {"clips": clips, "voices": sorted({v for v, _ in clips}), "utterances": utterances}


def phrase_recording(words: list[str], voice: int = 0, rng: random.Random | None = None,
                     word_gap_s: tuple[float, float] = (0.08, 0.25), lead_s: float = 0.3,
                     tail_s: float = 0.3) -> Recording:
    return long_recording([words], rng or random.Random(0), voice=voice, phrase_gap_s=(0, 0),
                          word_gap_s=word_gap_s, lead_s=lead_s, tail_s=tail_s)


def long_recording(phrases: list[list[str]], rng: random.Random, voice: int | None = None,
                   phrase_gap_s: tuple[float, float] = (0.2, 3.0), word_gap_s: tuple[float, float] = (0.08, 0.25),
                   lead_s: float = 0.5, tail_s: float = 0.5) -> Recording:
    """Phrases of held-out word clips separated by silences; every word's true (start, end) recorded."""
    material = heldout()
    pieces = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    cursor = len(pieces[0])
    record = Recording(np.zeros(0, np.float32))
    for p, words in enumerate(phrases):
        speaker = voice if voice is not None else rng.choice(material["voices"])
        if p:
            gap = np.zeros(int(rng.uniform(*phrase_gap_s) * SAMPLE_RATE), np.float32)
            pieces.append(gap)
            cursor += len(gap)
        for w, word in enumerate(words):
            if w:
                gap = np.zeros(int(rng.uniform(*word_gap_s) * SAMPLE_RATE), np.float32)
                pieces.append(gap)
                cursor += len(gap)
            clip = material["clips"][(speaker, word)]
            pieces.append(clip)
            record.words.append((word, cursor / SAMPLE_RATE, (cursor + len(clip)) / SAMPLE_RATE))
            cursor += len(clip)
        record.phrases.append(" ".join(words))
    pieces.append(np.zeros(int(tail_s * SAMPLE_RATE), np.float32))
    audio = np.concatenate(pieces)
    noise = np.random.default_rng(rng.randint(0, 1 << 30)).standard_normal(len(audio)).astype(np.float32) * 1e-3
    record.audio = (audio + noise).astype(np.float32)
    return record


def random_phrases(rng: random.Random, count: int, low: int = 3, high: int = 6) -> list[list[str]]:
    return [[rng.choice(DIGITS) for _ in range(rng.randint(low, high))] for _ in range(count)]


def encode(audio: np.ndarray, fmt: str = "WAV", sample_rate: int = SAMPLE_RATE, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()




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


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance (substitutions, insertions, deletions)."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def noisy_heldout(snr_db: float = 0.0, seed: int = 5) -> list[tuple[np.ndarray, str]]:
    """The 40 held-out utterances (voices the model never heard) under white noise at ``snr_db``: at 0 dB the
    trained digits model errs on about 15 % of their words (the keyterm tests' material)."""
    rng = np.random.default_rng(seed)
    out = []
    for audio, text in heldout()["utterances"]:
        noise = rng.standard_normal(len(audio)).astype(np.float32) * np.sqrt(np.mean(audio ** 2) / 10 ** (snr_db / 10))
        out.append(((audio + noise).astype(np.float32), text))
    return out
