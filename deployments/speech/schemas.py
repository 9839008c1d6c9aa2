"""The data that crosses deployment boundaries and the public result schema (pydantic, no Ray, no torch)."""

from __future__ import annotations

from typing import Literal, Optional

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
    logprobs: list[float] = Field(default_factory=list)  # each token's log-probability from the decoder's own pass


class TokenLogprob(BaseModel):
    """One token and its log-probability (OpenAI's ``logprobs`` entries)."""

    token: str
    logprob: float
    bytes: list[int]


def token_logprobs(tokens: SegmentTokens) -> list[TokenLogprob]:
    """The decoder's tokens with their log-probabilities (OpenAI's ``logprobs`` list)."""
    out = []
    for piece, logprob in zip(tokens.pieces, tokens.logprobs):
        text = piece.replace("\u2581", " ")  # a SentencePiece word start
        out.append(TokenLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8"))))
    return out


class SpeechSegment(BaseModel):
    """A stretch of audio to transcribe, in samples at 16 kHz from the start of the file."""

    start: int
    end: int


class Word(BaseModel):
    word: str
    start: float
    end: float
    # how sure the decoder was: the lowest probability among the word's tokens (None: confidence is off)
    probability: Optional[float] = None
    channel: Optional[int] = None  # multichannel=true: the channel it was heard on (0-based)


class Segment(BaseModel):
    id: int
    start: float
    end: float
    text: str
    channel: Optional[int] = None  # multichannel=true


class ChannelText(BaseModel):
    """One channel's transcript (multichannel=true)."""

    channel: int
    text: str


class TranscriptionResult(BaseModel):
    """The verbose_json schema; also what ``handle.transcribe.remote(...)`` returns."""

    task: Literal["transcribe"] = "transcribe"
    language: str = "en"
    duration: float
    text: str
    segments: list[Segment] = Field(default_factory=list)
    words: list[Word] = Field(default_factory=list)
    logprobs: Optional[list[TokenLogprob]] = None  # only when asked for
    channels: Optional[list[ChannelText]] = None  # multichannel=true: each channel's text, in channel order
