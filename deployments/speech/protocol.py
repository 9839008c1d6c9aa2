"""The public protocol: request options, response bodies and stream events, as pydantic models (no Ray).

HTTP form fields become ``OpenAIRequest`` / ``LegacyRequest`` (validated here, so every bad value gets a 400 that
names the field); WebSocket streams speak ``StreamConfig`` in and ``StreamEvent`` out; the OpenAI SSE stream speaks
``SseEvent``. Errors everywhere carry the same ``ErrorInfo`` (``{"message", "type", "code"}``).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from typing_extensions import Annotated

from .errors import ApiError, InvalidRequest
from .formats import RESPONSE_FORMATS, TIMED_FORMATS
from .parakeet_defaults import SAMPLE_RATE
from .schemas import ChannelText, TokenLogprob, Word
from .settings import TurnRules
from .uploads import UploadForm

GRANULARITIES = ("word", "segment")
INCLUDES = ("logprobs",)
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


# ---------------------------------------------------------------------------------------------- errors

class ErrorInfo(BaseModel):
    message: str
    type: str
    code: Optional[str] = None

    @classmethod
    def of(cls, error: ApiError) -> "ErrorInfo":
        return cls(message=error.message, type=error.type, code=error.code)


class ErrorResponse(BaseModel):
    """Every HTTP error body."""

    error: ErrorInfo


class TranscriptionJson(BaseModel):
    """``response_format=json``: the text; each channel's text with ``multichannel=true``; the tokens'
    log-probabilities with ``include[]=logprobs``."""

    text: str
    channels: Optional[list[ChannelText]] = None
    logprobs: Optional[list[TokenLogprob]] = None


# ---------------------------------------------------------------------------------------------- HTTP requests

def parse_bool(name: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise InvalidRequest(f"{name} must be true or false, got {value!r}.", code="invalid_parameter")


class OpenAIRequest(BaseModel):
    """``POST /v1/audio/transcriptions`` after validation."""

    response_format: str = "json"
    granularities: set[str] = Field(default_factory=set)
    stream: bool = False
    vad: bool = True
    model: Optional[str] = None  # a served model's id (empty: the default)
    language: Optional[str] = None  # checked against the model's languages
    logprobs: bool = False  # include[]=logprobs
    multichannel: bool = False  # each channel transcribed on its own, merged on one timeline
    keyterms: list[str] = Field(default_factory=list)  # words and phrases to boost (checked by the catalog)
    keyterms_boost: Optional[str] = None
    prompt: Optional[str] = None  # OpenAI's prompt: accepted and not applied (Parakeet takes no text prompt)

    @property
    def timestamps(self) -> bool:
        # Segment times are needed for verbose_json, srt and vtt; only then is the Aligner called.
        return self.response_format in TIMED_FORMATS

    @classmethod
    def from_form(cls, form: UploadForm) -> "OpenAIRequest":
        response_format = (form.get("response_format") or "json").strip()
        if response_format not in RESPONSE_FORMATS:
            raise InvalidRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; "
                                 f"got {response_format!r}.", code="invalid_response_format")
        granularities = {g.strip() for g in form.get_all("timestamp_granularities[]", "timestamp_granularities")
                         if g.strip()}
        unknown = granularities - set(GRANULARITIES)
        if unknown:
            raise InvalidRequest(f"timestamp_granularities accepts 'word' and 'segment'; got "
                                 f"{', '.join(sorted(unknown))}.", code="invalid_timestamp_granularities")
        _check_temperature(form.get("temperature"))
        stream = parse_bool("stream", form.get("stream"), False)
        if stream and response_format not in ("json", "text"):
            raise InvalidRequest("stream=true returns text events; use response_format json or text with it.",
                                 code="invalid_parameter")
        include = {value.strip() for value in form.get_all("include[]", "include") if value.strip()}
        if include - set(INCLUDES):
            raise InvalidRequest(f"include accepts {', '.join(INCLUDES)}; got {', '.join(sorted(include))}.",
                                 code="invalid_include")
        if include and (response_format != "json" or stream):
            raise InvalidRequest("include[]=logprobs comes with response_format=json (not streamed).",
                                 code="invalid_parameter")
        return cls(response_format=response_format, granularities=granularities, stream=stream,
                   vad=parse_bool("vad", form.get("vad"), True), model=form.get("model"),
                   language=form.get("language"), logprobs="logprobs" in include,
                   multichannel=parse_bool("multichannel", form.get("multichannel"), False),
                   **keyterm_fields(form), prompt=form.get("prompt"))


def keyterm_fields(form: UploadForm) -> dict:
    """``keyterms`` (repeated, or ``keyterms[]``) and ``keyterms_boost`` as sent; ``ModelCatalog.choose`` checks
    them."""
    return {"keyterms": form.get_all("keyterms[]", "keyterms"), "keyterms_boost": form.get("keyterms_boost")}


def _check_temperature(temperature: str | None) -> None:
    if temperature in (None, ""):
        return
    try:
        value = float(temperature)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise InvalidRequest(f"temperature must be a number between 0 and 1; got {temperature!r}.",
                             code="invalid_parameter")


class LegacyRequest(BaseModel):
    """The old server's ``POST /transcribe``."""

    include_timestamps: bool = False
    should_chunk: bool = True
    model: Optional[str] = None
    multichannel: bool = False
    keyterms: list[str] = Field(default_factory=list)
    keyterms_boost: Optional[str] = None

    @classmethod
    def from_form(cls, form: UploadForm) -> "LegacyRequest":
        return cls(include_timestamps=parse_bool("include_timestamps", form.get("include_timestamps"), False),
                   should_chunk=parse_bool("should_chunk", form.get("should_chunk"), True), model=form.get("model"),
                   multichannel=parse_bool("multichannel", form.get("multichannel"), False), **keyterm_fields(form))


# ---------------------------------------------------------------------------------------------- OpenAI SSE

class TranscriptTextDelta(BaseModel):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str
    channel: Optional[int] = None  # multichannel=true: the channel the segment was heard on


class TranscriptTextDone(BaseModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str


class SseError(BaseModel):
    """A failure after the stream began (the status line was already sent): the error body under ``error``."""

    type: Literal["error"] = "error"
    error: ErrorInfo


SseEvent = Union[TranscriptTextDelta, TranscriptTextDone, SseError]


def sse_frame(event: SseEvent) -> str:
    # (a delta's channel only where there are channels; an error's null code stays, as OpenAI sends it)
    return f"data: {event.model_dump_json(exclude_none=isinstance(event, TranscriptTextDelta))}\n\n"


# ---------------------------------------------------------------------------------------------- live streams

_TURN_FIELDS = TurnRules.model_fields


class StreamConfig(BaseModel):
    """The optional first text message of a stream (``/v1/audio/stream``)."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(SAMPLE_RATE, ge=8000, le=192000)
    encoding: Literal["pcm_s16le"] = "pcm_s16le"
    timestamps: bool = False
    partials: bool = True
    model: Optional[str] = None  # a served model's id (empty: the default)
    language: Optional[str] = None
    # this stream's turn rules (default: the service's stream.*)
    end_of_utterance_ms: Optional[int] = Field(None, ge=0, le=10000,
                                               description=_TURN_FIELDS["end_of_utterance_ms"].description)
    partial_interval_ms: Optional[int] = Field(None, ge=100, le=10000,
                                               description=_TURN_FIELDS["partial_interval_ms"].description)
    first_pass: Optional[bool] = None  # false: transcribe a turn only once it is over (default: stream.first_pass)
    keyterms: Optional[list[str]] = None  # words and phrases to boost (limits: the service's keyterms.*)
    keyterms_boost: Optional[float] = None

    def turn_rules(self, service: TurnRules) -> TurnRules:
        return service.model_copy(update=self.model_dump(include=set(_TURN_FIELDS), exclude_none=True))


class EndOfStream(BaseModel):
    """The client's last message: flush the open utterance, then ``done``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["end"]


class FinalizeTurn(BaseModel):
    """End the open turn now: its ``final`` (``from_finalize: true``) is sent and the stream goes on; with no turn
    open the answer is ``nothing_to_finalize``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["finalize"]


class ConfigureStream(BaseModel):
    """Change this stream's turn rules (from the next audio on; the open turn included) or its keyterms (for every
    transcription issued from then on) mid-stream. A bad value gets an ``error`` event naming the field, and the
    stream goes on with what it had."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["configure"]
    end_of_utterance_ms: Optional[int] = Field(None, ge=0, le=10000)
    partial_interval_ms: Optional[int] = Field(None, ge=100, le=10000)
    # new keyterms for every transcription from here on ([]: none; absent: unchanged)
    keyterms: Optional[list[str]] = None
    keyterms_boost: Optional[float] = None

    def applied_to(self, rules: TurnRules) -> TurnRules:
        return rules.model_copy(update=self.model_dump(include=set(_TURN_FIELDS), exclude_none=True))


StreamMessage = Annotated[Union[EndOfStream, FinalizeTurn, ConfigureStream], Field(discriminator="type")]
STREAM_MESSAGE = TypeAdapter(StreamMessage)


class PartialEvent(BaseModel):
    type: Literal["partial"] = "partial"
    id: int
    text: str
    logprobs: Optional[list[TokenLogprob]] = None  # only when asked for


class FinalEvent(BaseModel):
    type: Literal["final"] = "final"
    id: int
    text: str
    start: float
    end: float
    words: Optional[list[Word]] = None  # only when the stream asked for timestamps
    logprobs: Optional[list[TokenLogprob]] = None  # only when asked for
    from_finalize: Optional[bool] = None  # true on the final a client's finalize asked for


class NothingToFinalize(BaseModel):
    """The answer to a ``finalize`` when no turn is open (no speech since the last final)."""

    type: Literal["nothing_to_finalize"] = "nothing_to_finalize"


class SpeechStarted(BaseModel):
    """An utterance began at ``start`` s (its padded start; the Realtime protocol's turns)."""

    type: Literal["speech_started"] = "speech_started"
    id: int
    start: float


class SpeechStopped(BaseModel):
    """Utterance ``id`` is over at ``end`` s; its ``final`` follows once transcribed."""

    type: Literal["speech_stopped"] = "speech_stopped"
    id: int
    end: float


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"


class StreamError(BaseModel):
    type: Literal["error"] = "error"
    message: str
    code: Optional[str] = None
    param: Optional[str] = None  # the field a bad configure message got wrong (the stream goes on)


StreamEvent = Union[PartialEvent, FinalEvent, NothingToFinalize, DoneEvent, StreamError]
# what the live pipeline yields
LiveEvent = Union[PartialEvent, FinalEvent, NothingToFinalize, SpeechStarted, SpeechStopped]


def event_dict(event: StreamEvent) -> dict:
    """What goes on the wire (and what ``transcribe_stream`` yields): ``words`` only when asked for."""
    return event.model_dump(exclude_none=True)
