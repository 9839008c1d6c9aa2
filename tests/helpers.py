"""Test helpers: word error counts, text normalisation (recordings and encoders come from bench.audio)."""

from __future__ import annotations

from bench.audio import (DIGITS, FIXTURES, SAMPLE_RATE, Recording, encode, free_port, heldout,  # noqa: F401
                         long_recording, phrase_recording, random_phrases)


def word_errors(reference: str, hypothesis: str) -> int:
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(references: list[str], hypotheses: list[str]) -> float:
    return sum(word_errors(r, h) for r, h in zip(references, hypotheses)) / max(
        1, sum(len(r.split()) for r in references))


def normalise(text: str) -> str:
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split())
