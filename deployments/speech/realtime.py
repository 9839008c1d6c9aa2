"""OpenAI's Realtime transcription protocol, the parts that need no socket: the session and its updates, input
audio formats, and the server events (Ray-free; ``deployments/protocols/realtime_connection.py`` runs a connection).

A transcription session (``GET /v1/realtime?intent=transcription``) is the same live pipeline as
``/v1/audio/stream``; the session's ``server_vad`` turn detection maps onto our VAD:
``threshold`` -> ``vad.threshold``, ``prefix_padding_ms`` -> ``vad.speech_pad_ms`` (the padding kept before and
after speech), ``silence_duration_ms`` -> ``stream.end_of_utterance_ms`` (the pause that ends a turn). Fields a
client leaves out keep the service's own settings; ``turn_detection: null`` means manual commits. ``semantic_vad``
is accepted too: our VAD is acoustic, so its ``eagerness`` maps to a pause (``SEMANTIC_PAUSE_MS``).
"""

from __future__ import annotations

import base64
import binascii
import itertools
from typing import Any, ClassVar, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .audio import pcm16_to_float
from .catalog import Choice, ModelCatalog
from .errors import ApiError, PayloadTooLarge, RealtimeError
from .settings import TurnRules, VadSettings

LOGPROBS = "item.input_audio_transcription.logprobs"
PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)  # OpenAI sends 24 kHz; others are resampled too
G711_RATE = 8000


# ---------------------------------------------------------------------------------------------- session

class _SessionPart(BaseModel):
    # Fields we do not know are ignored, never an error: voice-agent clients send their usual session (voices,
    # tools, noise reduction...) and treat an error event as a broken connection. Known fields are validated.
    model_config = ConfigDict(extra="ignore")


class PcmFormat(_SessionPart):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: int = 24000


class G711Format(_SessionPart):
    type: Literal["audio/pcmu", "audio/pcma"]  # 8 kHz mu-law / A-law


class TranscriptionOptions(_SessionPart):
    model: Optional[str] = None
    language: Optional[str] = None
    prompt: Optional[str] = None  # accepted; Parakeet does not take a prompt
    # this service's extension: words and phrases to boost (every API's keyterms), from the next transcription on
    keyterms: Optional[list[str]] = None
    keyterms_boost: Optional[float] = None


class ServerVad(_SessionPart):
    type: Literal["server_vad"] = "server_vad"
    threshold: Optional[float] = Field(None, gt=0, lt=1)
    prefix_padding_ms: Optional[int] = Field(None, ge=0, le=2000)
    silence_duration_ms: Optional[int] = Field(None, ge=0, le=10000)
    # response options of conversation sessions: accepted so clients can send their usual turn_detection
    create_response: Optional[bool] = None
    interrupt_response: Optional[bool] = None
    idle_timeout_ms: Optional[int] = None

    def pause_ms(self) -> Optional[int]:
        return self.silence_duration_ms


# semantic_vad's eagerness as the pause that ends a turn (OpenAI: "auto" is "medium"; "low" waits longest)
SEMANTIC_PAUSE_MS = {"high": 300, "medium": 500, "auto": 500, "low": 1000}


class SemanticVad(_SessionPart):
    """OpenAI's model-based turn detection. Accepted and mapped onto our (acoustic) VAD: the speech threshold and
    padding stay the service's, and ``eagerness`` picks the pause (``SEMANTIC_PAUSE_MS``)."""

    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: Optional[bool] = None
    interrupt_response: Optional[bool] = None

    threshold: ClassVar[None] = None  # (not fields: semantic_vad leaves the VAD's own threshold and padding)
    prefix_padding_ms: ClassVar[None] = None

    def pause_ms(self) -> Optional[int]:
        return SEMANTIC_PAUSE_MS[self.eagerness]


TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")


class AudioInput(_SessionPart):
    format: Union[PcmFormat, G711Format] = Field(default_factory=PcmFormat, discriminator="type")
    transcription: TranscriptionOptions = Field(default_factory=TranscriptionOptions)
    turn_detection: Optional[Union[ServerVad, SemanticVad]] = Field(default_factory=ServerVad,
                                                                    discriminator="type")
    noise_reduction: Optional[dict] = None  # accepted, not applied (reported as null)


class SessionAudio(_SessionPart):
    input: AudioInput = Field(default_factory=AudioInput)


class TranscriptionSession(_SessionPart):
    """A transcription session's configuration, as ``session.update`` sets it and ``session.updated`` echoes it."""

    type: Literal["transcription"] = "transcription"
    audio: SessionAudio = Field(default_factory=SessionAudio)
    include: list[Literal["item.input_audio_transcription.logprobs"]] = Field(default_factory=list)

    @property
    def input(self) -> AudioInput:
        return self.audio.input

    @property
    def server_vad(self) -> bool:
        return self.input.turn_detection is not None

    @property
    def logprobs(self) -> bool:
        return LOGPROBS in self.include

    @property
    def input_rate(self) -> int:
        fmt = self.input.format
        return fmt.rate if isinstance(fmt, PcmFormat) else G711_RATE

    def updated(self, update: Any, catalog: ModelCatalog) -> "TranscriptionSession":
        """This session with ``update`` (a ``session.update``'s ``session``) merged in; errors name the field."""
        if not isinstance(update, dict):
            raise RealtimeError("session must be an object.", param="session")
        merged = _merge(self.model_dump(), update)
        try:
            session = TranscriptionSession.model_validate(merged)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]  # (without pydantic's union and validator tags)
                             if not str(part).startswith("function-") and part not in TURN_DETECTION_TYPES)
            raise RealtimeError(f"Invalid session.{field}: {error['msg']}.", param=f"session.{field}") from None
        fmt = session.input.format
        if isinstance(fmt, PcmFormat) and fmt.rate not in PCM_RATES:
            raise RealtimeError(f"Invalid session.audio.input.format.rate {fmt.rate}: audio/pcm is accepted at "
                                f"{', '.join(map(str, PCM_RATES))} Hz.", param="session.audio.input.format.rate")
        transcription = session.input.transcription
        try:
            catalog.resolve(transcription.model)
        except ApiError as exc:
            raise RealtimeError(exc.message, code=exc.code, param="session.audio.input.transcription.model") from None
        try:
            session.model(catalog)
        except ApiError as exc:
            field = getattr(exc, "param", None) or "language"
            raise RealtimeError(exc.message, code=exc.code,
                                param=f"session.audio.input.transcription.{field}") from None
        return session

    def model(self, catalog: ModelCatalog) -> Choice:
        transcription = self.input.transcription
        return catalog.choose(transcription.model, transcription.language, transcription.keyterms,
                              transcription.keyterms_boost)

    def vad_settings(self, base: VadSettings) -> VadSettings:
        turn = self.input.turn_detection
        update: dict = {}
        if turn is not None and turn.threshold is not None:
            update["threshold"] = turn.threshold
            if base.neg_threshold is not None:
                update["neg_threshold"] = min(base.neg_threshold, turn.threshold)
        if turn is not None and turn.prefix_padding_ms is not None:
            update["speech_pad_ms"] = turn.prefix_padding_ms
        return base.model_copy(update=update)

    def turn_rules(self, base: TurnRules) -> TurnRules:
        turn = self.input.turn_detection
        if turn is None or turn.pause_ms() is None:
            return base
        return base.model_copy(update={"end_of_utterance_ms": turn.pause_ms()})

    def pipeline_key(self) -> dict:
        """What the live pipeline is built from: a change to anything else (the turn rules, the keyterms) applies
        to a running turn without ending it."""
        key = self.model_dump()
        for field in ("keyterms", "keyterms_boost"):  # applied to the running turn's next transcriptions
            key["audio"]["input"]["transcription"].pop(field)
        turn = self.input.turn_detection
        key["audio"]["input"]["turn_detection"] = None if turn is None else (turn.threshold, turn.prefix_padding_ms)
        return key

    def describe(self, vad: VadSettings, rules: TurnRules, model: Choice) -> dict:
        """The session object of ``session.created`` / ``session.updated``: every value in force."""
        body = self.model_dump(exclude_none=True)
        body["object"] = "realtime.transcription_session"
        body["audio"]["input"]["noise_reduction"] = None
        body["audio"]["input"]["transcription"]["model"] = model.model.id
        body["audio"]["input"]["transcription"]["language"] = model.language
        turn = self.input.turn_detection
        if isinstance(turn, SemanticVad):
            body["audio"]["input"]["turn_detection"] = {"type": "semantic_vad", "eagerness": turn.eagerness}
        elif self.server_vad:
            body["audio"]["input"]["turn_detection"] = {
                "type": "server_vad", "threshold": vad.threshold, "prefix_padding_ms": vad.speech_pad_ms,
                "silence_duration_ms": rules.end_of_utterance_ms}
        else:
            body["audio"]["input"]["turn_detection"] = None
        return body


def _merge(current: dict, update: dict) -> dict:
    """OpenAI merges a session update into the session: nested objects field by field, anything else replaced."""
    merged = dict(current)
    for key, value in update.items():
        # a format, or a turn detection of another type, is replaced whole (its fields are the type's own)
        replaced = key == "format" or key == "turn_detection" and isinstance(value, dict) and isinstance(
            merged.get(key), dict) and value.get("type", merged[key].get("type")) != merged[key].get("type")
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not replaced:
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------------------------- input audio

def _g711_tables() -> dict[str, np.ndarray]:
    """ITU-T G.711 expansion tables: byte -> 16-bit sample."""
    codes = np.arange(256, dtype=np.int32)
    mu = ~codes & 0xFF
    magnitude = (((mu & 0x0F) << 3) + 0x84) << ((mu >> 4) & 0x07)
    ulaw = np.where(mu & 0x80, 0x84 - magnitude, magnitude - 0x84)
    a = codes ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    alaw = np.where(a & 0x80, magnitude, -magnitude)
    return {"audio/pcmu": ulaw.astype(np.float32) / 32768.0, "audio/pcma": alaw.astype(np.float32) / 32768.0}


G711 = _g711_tables()


def decode_append(audio_b64: Any, session: TranscriptionSession, max_bytes: int) -> np.ndarray:
    """An ``input_audio_buffer.append``'s ``audio`` -> float32 samples at the session's input rate."""
    if not isinstance(audio_b64, str):
        raise RealtimeError("audio must be a base64 string.", param="audio")
    if len(audio_b64) > (max_bytes * 4) // 3 + 4:
        raise PayloadTooLarge(f"An append may carry at most {max_bytes} bytes of audio; send smaller chunks.",
                              code="append_too_large")
    try:
        data = base64.b64decode(audio_b64, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError("audio is not valid base64.", code="invalid_base64", param="audio") from None
    fmt = session.input.format.type
    if fmt in G711:
        return G711[fmt][np.frombuffer(data, dtype=np.uint8)]
    if len(data) % 2:
        raise RealtimeError("audio/pcm must be 16-bit little-endian samples: an even number of bytes.",
                            code="invalid_audio", param="audio")
    return pcm16_to_float(data)


# ---------------------------------------------------------------------------------------------- server events

class EventIds:
    """Ids of one connection's events and items (``event_...``, ``item_...``)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._events = itertools.count()
        self._items = itertools.count()

    def event(self) -> str:
        return f"event_{self.prefix}_{next(self._events)}"

    def item(self) -> str:
        return f"item_{self.prefix}_{next(self._items)}"


class TurnDeltas:
    """The ``delta`` texts of one turn. Partials are previews: a partial's last word may be cut mid-word ("fou"
    before "five") and a later partial may rewrite a word. A word is sent once two consecutive partials agree on it
    without it being either one's last word (local agreement), so a turn's deltas joined are a prefix of its
    completed transcript unless the final pass rewrites an agreed word (then nothing more is sent, and the
    ``completed`` transcript is authoritative)."""

    def __init__(self) -> None:
        self.sent = ""
        self._previous: list[str] = []

    def partial(self, text: str) -> str:
        words = text.split()[:-1]
        agreed = list(itertools.takewhile(lambda pair: pair[0] == pair[1], zip(self._previous, words)))
        self._previous = words
        return self._extend(" ".join(word for word, _ in agreed))

    def final(self, text: str) -> str:
        return self._extend(text)

    def _extend(self, text: str) -> str:
        """What ``text`` adds to what was sent ('' when nothing, or when it does not extend it)."""
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
