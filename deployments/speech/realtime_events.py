"""The Realtime transcription protocol's server events, typed (what ``/v1/realtime?intent=transcription`` sends).

Each event is a pydantic model whose ``wire()`` is the JSON object OpenAI's clients parse; ``event_id`` is the
session's next id (``EventIds``). Fields a client reads as ``null`` when absent (``previous_item_id``, an error's
``code`` / ``param``) are sent as ``null``; ``logprobs`` only when asked for.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import BaseModel

from .errors import ApiError
from .schemas import TokenLogprob


class ServerEvent(BaseModel):
    event_id: str
    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    def wire(self) -> dict:
        body = self.model_dump()
        for name in self.OMITTED_WHEN_NONE:
            if body.get(name) is None:
                body.pop(name, None)
        return body


class SessionCreated(ServerEvent):
    type: Literal["session.created"] = "session.created"
    session: dict


class SessionUpdated(ServerEvent):
    type: Literal["session.updated"] = "session.updated"
    session: dict


class BufferCommitted(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: Optional[str] = None


class BufferCleared(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class SpeechStartedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    item_id: str
    audio_start_ms: int


class SpeechStoppedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    item_id: str
    audio_end_ms: int


class TranscriptionDelta(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = \
        "conversation.item.input_audio_transcription.delta"
    item_id: str
    content_index: int = 0
    delta: str


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float


class TranscriptionCompleted(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = \
        "conversation.item.input_audio_transcription.completed"
    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ("logprobs",)
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage
    logprobs: Optional[list[TokenLogprob]] = None

    @classmethod
    def of(cls, event_id: str, item_id: str, transcript: str, seconds: float,
           logprobs: list[TokenLogprob] | None) -> "TranscriptionCompleted":
        return cls(event_id=event_id, item_id=item_id, transcript=transcript,
                   usage=DurationUsage(seconds=round(seconds, 3)), logprobs=logprobs)


class ItemError(BaseModel):
    type: str
    code: Optional[str] = None
    message: str
    param: Optional[str] = None


class TranscriptionFailed(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = \
        "conversation.item.input_audio_transcription.failed"
    item_id: str
    content_index: int = 0
    error: ItemError

    @classmethod
    def of(cls, event_id: str, item_id: str, error: ApiError) -> "TranscriptionFailed":
        return cls(event_id=event_id, item_id=item_id,
                   error=ItemError(type=error.type, code=error.code, message=error.message))


class EventError(ItemError):
    event_id: Optional[str] = None  # the client event that caused it, if it had an id


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: EventError


def error_event(event_id: str, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                param: str | None = None, client_event_id: str | None = None) -> ErrorEvent:
    return ErrorEvent(event_id=event_id, error=EventError(type=type_, code=code, message=message, param=param,
                                                          event_id=client_event_id))
