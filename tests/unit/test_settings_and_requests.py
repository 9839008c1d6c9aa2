import pytest
from pydantic import ValidationError

from deployments.requests import LegacyRequest, OpenAIRequest
from deployments.speech.errors import InvalidRequest
from deployments.speech.settings import AppSettings
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
    assert settings.model == "nvidia/parakeet-tdt-0.6b-v2" and settings.max_batch_size == 4
    assert settings.vad.speech_pad_ms == 120 and settings.batch_ms == 15
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
    for bad in [dict(response_format="mp3"), dict(timestamp_granularities="char"), dict(language="de"),
                dict(temperature="hot"), dict(stream="true", response_format="srt"), dict(stream="perhaps")]:
        with pytest.raises(InvalidRequest):
            OpenAIRequest.from_form(form(**bad))


def test_legacy_request_defaults():
    parsed = LegacyRequest.from_form(form())
    assert parsed.include_timestamps is False and parsed.should_chunk is True
