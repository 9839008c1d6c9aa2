"""Token pieces and TDT timings -> word and segment timestamps (what the Aligner does; no model needed).

Each token of a TDT hypothesis carries the encoder frame where it was emitted and the number of frames it
covers (its predicted duration). A SentencePiece piece starting with "\u2581" begins a word; a word spans from its
first token's frame to the end of its last token. Punctuation tokens are often emitted late, in the pause after
a word, so they join the word's text but not its timing. Segment-relative times get the segment's offset, then
the words are made monotone (no overlaps) and clipped to [0, duration].

A word's ``probability`` is the lowest probability among its tokens (NeMo's default "min" aggregation of token
confidence into words): one uncertain piece makes the word uncertain. Punctuation tokens do not count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .schemas import Segment, SegmentTokens, Word

WORD_START = "\u2581"
SENTENCE_END = re.compile(r"[.?!]$")


@dataclass
class _Span:
    text: str
    start: float
    end: float
    probability: float | None = None  # the lowest among its (non-punctuation) tokens'

    def add_token(self, probability: float | None) -> None:
        if probability is not None:
            self.probability = probability if self.probability is None else min(self.probability, probability)


def _is_punctuation(piece: str) -> bool:
    stripped = piece.replace(WORD_START, "")
    return bool(stripped) and not any(ch.isalnum() for ch in stripped)


def segment_words(tokens: SegmentTokens) -> list[_Span]:
    """Words of one segment with times relative to the segment's start."""
    words: list[_Span] = []
    word_start: float | None = None  # set by a bare "\u2581" piece: a word begins there, its letters follow
    scored = len(tokens.logprobs) == len(tokens.pieces)
    for index, piece in enumerate(tokens.pieces):
        probability = math.exp(tokens.logprobs[index]) if scored else None
        frame = tokens.start_frames[index] if index < len(tokens.start_frames) else 0
        duration = tokens.durations[index] if index < len(tokens.durations) else 1
        start, end = frame * tokens.frame_s, (frame + duration) * tokens.frame_s  # NeMo: end = start + duration
        text = piece.replace(WORD_START, "")
        if _is_punctuation(piece):
            if words:
                words[-1].text += text
            continue
        if piece == WORD_START:
            word_start = start
            continue
        if piece.startswith(WORD_START) or not words or word_start is not None:
            words.append(_Span(text, start if word_start is None else word_start, end))
            words[-1].add_token(probability)
            word_start = None
            continue
        words[-1].text += text
        words[-1].end = max(words[-1].end, end)
        words[-1].add_token(probability)
    return [w for w in words if w.text]


def align(pieces: list[tuple[SegmentTokens, float, float]], duration: float) -> tuple[list[Word], list[Segment]]:
    """Words and sentence-level segments for a whole file.

    ``pieces`` holds, in time order, each transcribed segment's tokens with its start and end in seconds from the
    start of the file. Segments never span two VAD segments and also break after ``.``, ``?`` and ``!``.
    """
    words: list[Word] = []
    segments: list[Segment] = []
    previous_end = 0.0
    for tokens, offset, segment_end in pieces:
        limit = min(duration, segment_end)
        sentence: list[Word] = []
        for span in segment_words(tokens):
            start = min(max(offset + span.start, previous_end), limit)
            end = min(max(offset + span.end, start), limit)
            probability = None if span.probability is None else round(span.probability, 4)
            word = Word(word=span.text, start=round(start, 3), end=round(end, 3), probability=probability)
            previous_end = word.end
            words.append(word)
            sentence.append(word)
            if SENTENCE_END.search(span.text):
                _close(sentence, segments)
                sentence = []
        _close(sentence, segments)
    return words, segments


def _close(sentence: list[Word], segments: list[Segment]) -> None:
    if sentence:
        segments.append(Segment(id=len(segments), start=sentence[0].start, end=sentence[-1].end,
                                text=" ".join(w.word for w in sentence)))


def join_text(texts: list[str]) -> str:
    return " ".join(t.strip() for t in texts if t and t.strip())
