"""Deepgram's listen API, the subset voice-agent frameworks use (Pipecat's ``DeepgramSTTService``, LiveKit's
``deepgram.STT``): the query parameters, the client's control messages and the server's messages (Ray-free;
``deployments/protocols/listen_connection.py`` runs a WebSocket, the Ingress the pre-recorded POST).

Honoured query parameters: ``encoding`` (``linear16``), ``sample_rate``, ``channels`` (interleaved; mixed down),
``interim_results``, ``endpointing`` (ms, or ``false``: onto the stream's turn pause), ``vad_events``
(``SpeechStarted``), ``utterance_end_ms`` (``UtteranceEnd``), ``language``, ``model`` (a served id or an alias),
``keyterm`` (repeated: phrases boosted, as ``keyterms`` elsewhere) and ``multichannel`` (pre-recorded). Every other
parameter is accepted and ignored (``IGNORED``), never a 400: clients send a dozen by default.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from datetime import datetime, timezone
from typing import Literal, Optional

from pydantic import BaseModel, Field

from .errors import InvalidRequest
from .parakeet_defaults import SAMPLE_RATE
from .protocol import FALSE_WORDS, TRUE_WORDS, parse_bool
from .schemas import TranscriptionResult, Word

# Parameters Deepgram clients send that change nothing here (formatting is always on: Parakeet writes punctuation
# and capitals itself; diarisation, redaction, search and the rest are not offered).
IGNORED = ("punctuate", "smart_format", "profanity_filter", "no_delay", "filler_words", "numerals", "diarize",
           "diarize_version", "dictation", "measurements", "mip_opt_out", "redact", "replace", "search", "tag",
           "tier", "version", "alternatives", "callback", "callback_method", "extra", "keywords", "paragraphs",
           "utterances", "utt_split", "detect_language", "detect_entities", "detect_topics", "sentiment",
           "summarize", "topics", "intents", "custom_intent", "custom_topic", "encoding_options")
UNLIMITED_PAUSE_MS = 10000  # endpointing=false: turns end only on Finalize or CloseStream (or the longest pause)


def _int(name: str, value: str | None, low: int, high: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, got {value!r}.", code="invalid_parameter") from None
    if not low <= number <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {number}.", code="invalid_parameter")
    return number


class ListenOptions(BaseModel):
    """A ``/v1/listen`` request's query, validated (every bad value is a 400 naming the parameter)."""

    encoding: Literal["linear16"] = "linear16"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    interim_results: bool = False
    endpointing_ms: Optional[int] = None  # None: the service's turn pause
    vad_events: bool = False
    utterance_end_ms: Optional[int] = None
    model: Optional[str] = None
    language: Optional[str] = None
    keyterms: list[str] = Field(default_factory=list)
    multichannel: bool = False

    @classmethod
    def from_query(cls, query, live: bool) -> "ListenOptions":
        """``query``: a multi-dict (Starlette's ``QueryParams``). Pre-recorded requests carry the audio's own
        format, so ``encoding`` / ``sample_rate`` apply to live streams only."""
        encoding = query.get("encoding")
        if live and encoding not in (None, "", "linear16"):
            raise InvalidRequest(f"encoding={encoding} is not served: send linear16 (16-bit little-endian PCM).",
                                 code="unsupported_encoding")
        endpointing = query.get("endpointing")
        pause = None
        if endpointing is not None and endpointing.strip().lower() in FALSE_WORDS:
            pause = UNLIMITED_PAUSE_MS
        elif endpointing is not None and endpointing.strip().lower() not in TRUE_WORDS:
            pause = _int("endpointing", endpointing, 0, UNLIMITED_PAUSE_MS)
        return cls(sample_rate=_int("sample_rate", query.get("sample_rate"), 8000, 192000) or SAMPLE_RATE,
                   channels=_int("channels", query.get("channels"), 1, 16) or 1,
                   interim_results=parse_bool("interim_results", query.get("interim_results"), False),
                   endpointing_ms=pause, vad_events=parse_bool("vad_events", query.get("vad_events"), False),
                   utterance_end_ms=_int("utterance_end_ms", query.get("utterance_end_ms"), 0, 60000),
                   model=query.get("model") or None, language=_language(query.get("language")),
                   keyterms=[t for t in query.getlist("keyterm") if t.strip()],
                   multichannel=parse_bool("multichannel", query.get("multichannel"), False))


def _language(language: str | None) -> str | None:
    """Deepgram's tags (``en-US``) -> the code the catalog checks (``en``); ``multi`` -> none asked for."""
    if not language or language.strip().lower() == "multi":
        return None
    return language.strip().split("-")[0].lower()


class Identity:
    """One request's ids and model description, as every Deepgram message repeats them."""

    def __init__(self, model_id: str):
        self.request_id = str(uuid.uuid4())
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"parakeet:{model_id}"))
        self.model_info = {"name": model_id, "version": "parakeet-tdt", "arch": "fastconformer-tdt"}
        self.created = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")

    def metadata(self, duration: float, channels: int, sha256: str = "") -> dict:
        return {"transaction_key": "deprecated", "request_id": self.request_id, "sha256": sha256,
                "created": self.created, "duration": round(duration, 3), "channels": channels,
                "models": [self.model_uuid], "model_info": {self.model_uuid: self.model_info}}


def words_out(words: list[Word]) -> list[dict]:
    """Deepgram's word objects: ``word`` lower-case without punctuation, ``punctuated_word`` as written."""
    return [{"word": "".join(ch for ch in w.word.lower() if ch.isalnum() or ch == "'") or w.word.lower(),
             "start": w.start, "end": w.end,
             "confidence": round(w.probability, 4) if w.probability is not None else 1.0,
             "punctuated_word": w.word} for w in words]


def confidence(words: list[Word], logprob_mean: float | None = None) -> float:
    """A transcript's confidence: its words' mean probability (or, without words, the tokens')."""
    scored = [w.probability for w in words if w.probability is not None]
    if scored:
        return round(sum(scored) / len(scored), 4)
    if logprob_mean is not None:
        return round(math.exp(logprob_mean), 4)
    return 0.0


def results(identity: Identity, transcript: str, start: float, end: float, is_final: bool, speech_final: bool,
            from_finalize: bool, words: list[Word], score: float) -> dict:
    """A live ``Results`` message, with every field the two plugins read."""
    return {"type": "Results", "channel_index": [0, 1], "duration": round(max(0.0, end - start), 3),
            "start": round(start, 3), "is_final": is_final, "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": score,
                                          "words": words_out(words)}]},
            "metadata": {"request_id": identity.request_id, "model_info": identity.model_info,
                         "model_uuid": identity.model_uuid}}


def speech_started(at: float) -> dict:
    return {"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(at, 3)}


def utterance_end(last_word_end: float) -> dict:
    return {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(last_word_end, 3)}


def prerecorded(identity: Identity, result: TranscriptionResult, audio: bytes) -> dict:
    """``POST /v1/listen``'s body: metadata and one alternative per channel (one channel unless multichannel)."""
    if result.channels is not None:
        per_channel = [(c.text, [w for w in result.words if w.channel == c.channel]) for c in result.channels]
    else:
        per_channel = [(result.text, result.words)]
    return {"metadata": identity.metadata(result.duration, len(per_channel), hashlib.sha256(audio).hexdigest()),
            "results": {"channels": [{"alternatives": [{"transcript": text, "confidence": confidence(words),
                                                        "words": words_out(words)}]}
                                     for text, words in per_channel]}}
