import pytest
from pydantic import ValidationError

from deployments.speech.errors import InvalidRequest
from deployments.speech.protocol import (STREAM_MESSAGE, EndOfStream, FinalizeTurn, LegacyRequest, OpenAIRequest,
                                         StreamConfig)
from deployments.speech.settings import AppSettings, BatchSettings, TurnRules
from deployments.speech.uploads import UploadForm


def test_env_overrides_config(monkeypatch):
    monkeypatch.setenv("PARAKEET_MODEL", "/models/p.nemo")
    monkeypatch.setenv("PARAKEET_VAD__THRESHOLD", "0.7")
    settings = AppSettings(model="nvidia/parakeet-tdt-0.6b-v2", vad={"threshold": 0.4, "speech_pad_ms": 50})
    assert settings.model == "/models/p.nemo" and settings.vad.threshold == 0.7
    assert settings.vad.min_silence_duration_ms == 30  # seed default


def test_defaults_and_typos(monkeypatch):
    monkeypatch.delenv("PARAKEET_MODEL", raising=False)
    settings = AppSettings()
    assert settings.model == "nvidia/parakeet-tdt-0.6b-v2" and settings.vad.speech_pad_ms == 120
    assert BatchSettings() == BatchSettings(max_batch_size=4, batch_ms=15)  # the seed's batching
    with pytest.raises(ValidationError):
        BatchSettings(max_batch_size=0)
    with pytest.raises(ValidationError):
        BatchSettings(batch_wait_timeout_s=0.01)  # a typo'd or old key is an error, not ignored
    with pytest.raises(ValidationError):
        AppSettings(vad={"treshold": 0.3})
    with pytest.raises(ValidationError):
        AppSettings(vad={"max_segment_s": 10, "merge_up_to_s": 20})


def form(**fields):
    return UploadForm(fields={k: v if isinstance(v, list) else [v] for k, v in fields.items()})


def test_openai_request_parsing():
    parsed = OpenAIRequest.from_form(form(response_format="verbose_json", timestamp_granularities="word",
                                          vad="false", temperature="0"))
    assert parsed.timestamps and parsed.granularities == {"word"} and not parsed.vad
    assert not OpenAIRequest.from_form(form()).timestamps
    assert OpenAIRequest.from_form(form(**{"include[]": "logprobs"})).logprobs
    for bad in [dict(response_format="mp3"), dict(timestamp_granularities="char"), {"include[]": "tokens"},
                {"include[]": "logprobs", "response_format": "verbose_json"},
                dict(temperature="hot"), dict(stream="true", response_format="srt"), dict(stream="perhaps")]:
        with pytest.raises(InvalidRequest):
            OpenAIRequest.from_form(form(**bad))


def test_legacy_request_defaults():
    parsed = LegacyRequest.from_form(form())
    assert parsed.include_timestamps is False and parsed.should_chunk is True


def test_stream_config_and_end_message():
    assert StreamConfig.model_validate_json('{"sample_rate": 8000}').sample_rate == 8000
    for bad in ['{"sample_rate": 100}', '{"encoding": "opus"}', '{"volume": 3}']:
        with pytest.raises(ValidationError):
            StreamConfig.model_validate_json(bad)
    assert StreamConfig.model_validate_json('{"end_of_utterance_ms": 300}').turn_rules(TurnRules()) == TurnRules(
        end_of_utterance_ms=300)
    for bad in ['{"end_of_utterance_ms": -1}', '{"partial_interval_ms": 20}']:
        with pytest.raises(ValidationError):
            StreamConfig.model_validate_json(bad)
    assert isinstance(STREAM_MESSAGE.validate_json('{"type": "end"}'), EndOfStream)
    assert isinstance(STREAM_MESSAGE.validate_json('{"type": "finalize"}'), FinalizeTurn)
    assert STREAM_MESSAGE.validate_json('{"type": "configure", "partial_interval_ms": 500}').applied_to(
        TurnRules()) == TurnRules(partial_interval_ms=500)
    for text in ['{"type": "stop"}', "end", "", "[]", '{"type": "end", "x": 1}',
                 '{"type": "configure", "end_of_utterance_ms": 20000}']:
        with pytest.raises(ValidationError):
            STREAM_MESSAGE.validate_json(text)


def test_models_by_id_and_their_languages(monkeypatch):
    from deployments.speech.catalog import ModelCatalog
    from deployments.speech.errors import NotFound

    monkeypatch.delenv("PARAKEET_MODEL", raising=False)
    monkeypatch.setenv("PARAKEET_MODELS", '[{"id": "v2", "source": "nvidia/parakeet-tdt-0.6b-v2"}, '
                                          '{"id": "v3", "source": "/m/v3.nemo", "languages": ["en", "DE", "fr"]}]')
    settings = AppSettings()
    catalog = ModelCatalog(settings.served_models)
    assert catalog.choose(None, None).model.id == "v2" and catalog.choose("", "english").language == "en"
    assert catalog.choose("v3", "de").language == "de" and catalog.choose("v3", None).language == "auto"
    with pytest.raises(NotFound, match="v2, v3"):
        catalog.resolve("whisper-1")
    with pytest.raises(InvalidRequest, match="en, de, fr"):
        catalog.choose("v3", "ja")
    with pytest.raises(InvalidRequest, match="transcribes: en"):
        catalog.choose("v2", "fr")
    assert [m["id"] for m in catalog.listing()["data"]] == ["v2", "v3"]
    # the single-model settings keep working as a one-entry list
    monkeypatch.delenv("PARAKEET_MODELS")
    single = AppSettings(model="/m/x.nemo", model_name="x")
    assert [(m.id, m.source, m.languages) for m in single.served_models] == [("x", "/m/x.nemo", ["en"])]
    with pytest.raises(ValidationError):
        AppSettings(models=[{"id": "a", "source": "s"}, {"id": "a", "source": "t"}])
