"""The data that crosses deployment boundaries and the public result schema (pydantic, no Ray, no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SegmentTokens(BaseModel):
    """What the Transcriber returns for one audio segment: the text and each token's place in encoder frames."""

    text: str
    token_ids: list[int] = Field(default_factory=list)
    pieces: list[str] = Field(default_factory=list)  # SentencePiece pieces; a leading "\u2581" starts a word
    start_frames: list[int] = Field(default_factory=list)
    durations: list[int] = Field(default_factory=list)
    frame_s: float = 0.08  # 10 ms hop x 8x subsampling for Parakeet
    frames: int = 0  # encoder frames in the segment


class SpeechSegment(BaseModel):
    """A stretch of audio to transcribe, in samples at 16 kHz from the start of the file."""

    start: int
    end: int


class Word(BaseModel):
    word: str
    start: float
    end: float


class Segment(BaseModel):
    id: int
    start: float
    end: float
    text: str


class TranscriptionResult(BaseModel):
    """The verbose_json schema; also what ``handle.transcribe.remote(...)`` returns."""

    task: Literal["transcribe"] = "transcribe"
    language: str = "en"
    duration: float
    text: str
    segments: list[Segment] = Field(default_factory=list)
    words: list[Word] = Field(default_factory=list)
