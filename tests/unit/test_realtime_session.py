"""The Realtime session without a socket: updates merge and name the bad field, turn detection maps onto our VAD,
and input audio decodes (G.711 checked against Python's own codec)."""

import base64
import warnings

import numpy as np
import pytest

from deployments.speech.catalog import ModelCatalog
from deployments.speech.errors import PayloadTooLarge, RealtimeError
from deployments.speech.realtime import TranscriptionSession, TurnDeltas, decode_append
from deployments.speech.settings import ModelSpec, TurnRules, VadSettings

CATALOG = ModelCatalog([ModelSpec(id="parakeet", source="x.nemo"),
                        ModelSpec(id="multi", source="y.nemo", languages=["en", "de"])])


def test_updates_merge_and_map_onto_our_settings():
    session = TranscriptionSession().updated({"type": "transcription", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
                           "silence_duration_ms": 500}}}}, CATALOG)
    # a later update of another field keeps these
    session = session.updated({"include": ["item.input_audio_transcription.logprobs"]}, CATALOG)
    vad, rules = session.vad_settings(VadSettings()), session.turn_rules(TurnRules(end_of_utterance_ms=800))
    assert (vad.threshold, vad.speech_pad_ms, rules.end_of_utterance_ms) == (0.6, 200, 500)
    assert session.logprobs and session.server_vad and session.input_rate == 24000
    # fields left out keep the service's settings; null turn detection means manual commits
    assert TranscriptionSession().vad_settings(VadSettings()) == VadSettings()
    manual = session.updated({"audio": {"input": {"turn_detection": None}}}, CATALOG)
    assert not manual.server_vad
    described = manual.describe(VadSettings(), TurnRules(), manual.model(CATALOG))
    assert described["audio"]["input"]["turn_detection"] is None
    assert described["audio"]["input"]["transcription"]["model"] == "parakeet"
    assert session.updated({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, CATALOG).input_rate == 8000
    multi = session.updated({"audio": {"input": {"transcription": {"model": "multi", "language": "de"}}}}, CATALOG)
    assert (multi.model(CATALOG).model.id, multi.model(CATALOG).language) == ("multi", "de")


def test_unknown_session_fields_are_ignored_and_known_ones_still_checked():
    """What LiveKit's and Pipecat's clients send besides transcription settings never becomes an error event."""
    session = TranscriptionSession().updated({"type": "transcription", "voice": "alloy", "tools": [],
                                              "audio": {"input": {"noise_reduction": {"type": "near_field"},
                                                                  "format": {"type": "audio/pcm", "rate": 24000},
                                                                  "turn_detection": {"type": "server_vad",
                                                                                     "threshold": 0.5,
                                                                                     "prefix_padding_ms": 600,
                                                                                     "silence_duration_ms": 350,
                                                                                     "future_knob": 1}}}}, CATALOG)
    assert session.turn_rules(TurnRules()).end_of_utterance_ms == 350
    assert "voice" not in session.model_dump()
    with pytest.raises(RealtimeError):
        TranscriptionSession().updated({"audio": {"input": {"turn_detection": {"threshold": "high"}}}}, CATALOG)


def test_semantic_vad_is_accepted_and_its_eagerness_picks_the_pause():
    base = TurnRules(end_of_utterance_ms=800)
    pauses = {}
    for eagerness in ("low", "medium", "high", "auto"):
        session = TranscriptionSession().updated({"audio": {"input": {"turn_detection": {
            "type": "semantic_vad", "eagerness": eagerness}}}}, CATALOG)
        assert session.server_vad and session.vad_settings(VadSettings()) == VadSettings()
        pauses[eagerness] = session.turn_rules(base).end_of_utterance_ms
        described = session.describe(VadSettings(), session.turn_rules(base), session.model(CATALOG))
        assert described["audio"]["input"]["turn_detection"] == {"type": "semantic_vad", "eagerness": eagerness}
    assert pauses["high"] < pauses["medium"] == pauses["auto"] < pauses["low"]
    # only the pause changed: the running turn goes on (same pipeline); the threshold changes the pipeline
    server = TranscriptionSession()
    assert server.updated({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}, CATALOG
                          ).pipeline_key() == server.pipeline_key()
    assert server.updated({"audio": {"input": {"turn_detection": {"silence_duration_ms": 300}}}}, CATALOG
                          ).pipeline_key() == server.pipeline_key()
    assert server.updated({"audio": {"input": {"turn_detection": {"threshold": 0.7}}}}, CATALOG
                          ).pipeline_key() != server.pipeline_key()


@pytest.mark.parametrize("update,param", [
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 11025}}}}, "session.audio.input.format.rate"),
    ({"audio": {"input": {"format": {"type": "audio/opus"}}}}, "session.audio.input.format"),
    ({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}},
     "session.audio.input.turn_detection.eagerness"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}}}},
     "session.audio.input.turn_detection.silence_duration_ms"),
    ({"audio": {"input": {"transcription": {"language": "fr"}}}}, "session.audio.input.transcription.language"),
    ({"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}},
     "session.audio.input.transcription.model"),
    ({"include": ["item.input_audio_transcription.audio"]}, "session.include.0"),
    ("transcription", "session"),
])
def test_a_bad_update_names_its_field(update, param):
    with pytest.raises(RealtimeError) as info:
        TranscriptionSession().updated(update, CATALOG)
    assert info.value.param == param and (param.split(".")[-1] in info.value.message or "served" in
                                          info.value.message or "transcribes" in info.value.message)


def test_pcm_and_g711_appends_decode():
    session = TranscriptionSession()
    samples = np.array([0, 16384, -32768, 32767], dtype="<i2")
    decoded = decode_append(base64.b64encode(samples.tobytes()).decode(), session, 1 << 20)
    np.testing.assert_allclose(decoded, samples / 32768.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    data = bytes(range(256))
    for kind, reference in (("audio/pcmu", audioop.ulaw2lin), ("audio/pcma", audioop.alaw2lin)):
        g711 = session.updated({"audio": {"input": {"format": {"type": kind}}}}, CATALOG)
        expected = np.frombuffer(reference(data, 2), dtype="<i2") / 32768.0
        np.testing.assert_array_equal(decode_append(base64.b64encode(data).decode(), g711, 1 << 20), expected)


def test_bad_appends():
    session = TranscriptionSession()
    for audio, code in ((None, "invalid_value"), ("***", "invalid_base64"),
                        (base64.b64encode(b"\x01\x02\x03").decode(), "invalid_audio")):
        with pytest.raises(RealtimeError) as info:
            decode_append(audio, session, 1 << 20)
        assert info.value.code == code
    with pytest.raises(PayloadTooLarge):
        decode_append(base64.b64encode(bytes(4096)).decode(), session, 1024)


def test_turn_deltas_send_only_words_two_partials_agree_on_and_never_a_cut_last_word():
    deltas = TurnDeltas()
    sent = [deltas.partial("oh eight"), deltas.partial("oh eight one fou"), deltas.partial("oh eight one five"),
            deltas.partial("oh eight one five eight"), deltas.final("oh eight one five eight zero")]
    # "fou" (cut mid-word) is never sent; "one" only once a second partial keeps it
    assert sent == ["", "oh", " eight one", "", " five eight zero"]
    assert "".join(sent) == "oh eight one five eight zero"


def test_turn_deltas_stop_when_a_word_is_rewritten_and_the_final_is_authoritative():
    deltas = TurnDeltas()
    assert deltas.partial("two nine one") == "" and deltas.partial("two nine one four") == "two nine"
    assert deltas.partial("two five one four") == ""  # "nine" was rewritten: nothing that contradicts it is sent
    assert deltas.final("two five one four") == ""
    assert deltas.sent == "two nine"
