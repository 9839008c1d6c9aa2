"""Turn HTTP form fields into validated request options (no Ray, no audio maths)."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.speech.errors import InvalidRequest
from deployments.speech.formats import RESPONSE_FORMATS
from deployments.speech.uploads import UploadForm

GRANULARITIES = ("word", "segment")
LANGUAGES = ("", "en", "english")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(name: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise InvalidRequest(f"{name} must be true or false, got {value!r}.", code="invalid_parameter")


@dataclass
class OpenAIRequest:
    """``POST /v1/audio/transcriptions`` after validation."""

    response_format: str
    granularities: set[str]
    stream: bool
    vad: bool

    @property
    def timestamps(self) -> bool:
        # Segment times are needed for verbose_json, srt and vtt; only then is the Aligner called.
        return self.response_format in ("verbose_json", "srt", "vtt")

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
        language = (form.get("language") or "").strip().lower()
        if language not in LANGUAGES:
            raise InvalidRequest(f"language {language!r} is not supported: parakeet-tdt-0.6b-v2 transcribes "
                                 "English only (language=en).", code="unsupported_language")
        temperature = form.get("temperature")
        if temperature not in (None, ""):
            try:
                value = float(temperature)
            except ValueError:
                value = -1.0
            if not 0.0 <= value <= 1.0:
                raise InvalidRequest(f"temperature must be a number between 0 and 1; got {temperature!r}.",
                                     code="invalid_parameter")
        stream = parse_bool("stream", form.get("stream"), False)
        if stream and response_format not in ("json", "text"):
            raise InvalidRequest("stream=true returns text events; use response_format json or text with it.",
                                 code="invalid_parameter")
        return cls(response_format, granularities, stream, parse_bool("vad", form.get("vad"), True))


@dataclass
class LegacyRequest:
    """The old server's ``POST /transcribe``."""

    include_timestamps: bool
    should_chunk: bool

    @classmethod
    def from_form(cls, form: UploadForm) -> "LegacyRequest":
        return cls(parse_bool("include_timestamps", form.get("include_timestamps"), False),
                   parse_bool("should_chunk", form.get("should_chunk"), True))
