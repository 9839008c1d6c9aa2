"""Several checkpoints in one deployment, chosen per request (Serve's model multiplexing), languages per model, and
word confidence / logprobs from the decoder's own pass."""

from __future__ import annotations

import asyncio
import random

import httpx
import numpy as np
import pytest

from bench.models import build_random_nemo
from deployments.speech.parakeet import ParakeetRecognizer
from tests.helpers import encode, heldout, normalise, phrase_recording, random_phrases

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def paths(digits_model, tiny_model, tmp_path_factory) -> dict:
    other = build_random_nemo("tiny", tmp_path_factory.mktemp("tiny2") / "tiny2.nemo", seed=1)
    return {"digits": str(digits_model), "tiny": str(tiny_model), "tiny2": str(other)}


@pytest.fixture(scope="module")
def app(module_app, paths):
    """Beside the shared digits app: three models, two per replica, one Transcriber replica."""
    models = [{"id": "digits", "source": paths["digits"]}, {"id": "tiny", "source": paths["tiny"]},
              {"id": "tiny2", "source": paths["tiny2"], "languages": ["en", "de", "fr"]}]
    served = module_app({"Transcriber": {"user_config": {"batch_ms": 50}}}, models=models, max_models_per_replica=2)
    ready = httpx.get(served.url + "/readyz", timeout=60)
    assert ready.status_code == 200 and ready.json()["model"]["loaded"] == ["digits"], ready.text
    return served


def transcribe(app, audio: np.ndarray, **fields) -> httpx.Response:
    return httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(audio))},
                      data={"vad": "false", **fields}, timeout=180)


def in_process(path: str, audios: list[np.ndarray]) -> list[str]:
    recognizer = ParakeetRecognizer.load(path, device="cpu")
    return [recognizer.transcribe([audio])[0].text for audio in audios]


def test_models_are_listed_and_unknown_ones_get_404(app):
    listed = httpx.get(app.url + "/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["digits", "tiny", "tiny2"]
    audio = phrase_recording(["one", "two"]).audio
    response = transcribe(app, audio, model="no-such-model")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "digits, tiny, tiny2" in error["message"]
    # a client's default name (the OpenAI SDK's whisper-1) is an alias of the default model, not a 404
    aliased, default = transcribe(app, audio, model="whisper-1"), transcribe(app, audio)
    assert aliased.status_code == default.status_code == 200 and aliased.json()["text"] == default.json()["text"]


def test_interleaved_requests_for_two_models_each_get_their_own_models_result(app, paths):
    rng = random.Random(14)
    recordings = [phrase_recording(words, voice=i % 3, rng=rng).audio for i, words in enumerate(random_phrases(rng, 16))]
    models = ["digits" if i % 2 == 0 else "tiny" for i in range(len(recordings))]
    expected = {name: dict(zip([i for i, m in enumerate(models) if m == name],
                               in_process(paths[name], [a for a, m in zip(recordings, models) if m == name])))
                for name in ("digits", "tiny")}
    transcriber = app.deployment("Transcriber")
    before = transcriber.stats.remote().result()

    async def everyone():
        async with httpx.AsyncClient(timeout=180) as client:
            return await asyncio.gather(*[
                client.post(app.url + "/v1/audio/transcriptions", data={"vad": "false", "model": model},
                            files={"file": ("a.wav", encode(audio))}) for audio, model in zip(recordings, models)])

    responses = asyncio.run(everyone())
    for i, (response, model) in enumerate(zip(responses, models)):
        assert response.status_code == 200 and response.json()["text"] == expected[model][i], (i, model)
    after = transcriber.stats.remote().result()
    for model in ("digits", "tiny"):
        sizes = {int(k): v - before["model_batch_sizes"].get(model, {}).get(k, 0)
                 for k, v in after["model_batch_sizes"][model].items()}
        # each model call held only that model's segments, all of them, and batches formed for both models
        assert sum(size * count for size, count in sizes.items()) == models.count(model)
        assert any(size > 1 and count > 0 for size, count in sizes.items()), (model, sizes)


def test_a_third_model_evicts_the_least_recently_used_and_still_answers(app, paths):
    audio = phrase_recording(["nine", "oh", "five"]).audio
    assert transcribe(app, audio, model="digits").status_code == 200
    assert transcribe(app, audio, model="tiny").status_code == 200
    response = transcribe(app, audio, model="tiny2")
    assert response.status_code == 200 and response.json()["text"] == in_process(paths["tiny2"], [audio])[0]
    stats = app.deployment("Transcriber").stats.remote().result()
    assert sorted(stats["loaded_models"]) == ["tiny", "tiny2"] and stats["evictions"] >= 1
    assert stats["load_seconds"]["tiny2"] > 0
    # and the evicted one comes back on demand
    assert transcribe(app, audio, model="digits").json()["text"] == in_process(paths["digits"], [audio])[0]


def test_a_multilingual_model_accepts_its_languages_and_reports_them(app):
    audio = phrase_recording(["one", "two"]).audio
    for language in ("en", "de", "fr"):
        body = transcribe(app, audio, model="tiny2", language=language, response_format="verbose_json").json()
        assert body["language"] == language
    assert transcribe(app, audio, model="tiny2", response_format="verbose_json").json()["language"] == "auto"
    rejected = transcribe(app, audio, model="tiny2", language="ja")
    assert rejected.status_code == 400 and "en, de, fr" in rejected.json()["error"]["message"]
    english_only = transcribe(app, audio, model="digits", language="de")
    assert english_only.status_code == 400 and "transcribes: en" in english_only.json()["error"]["message"]


# ---------------------------------------------------------------- confidence (the shared digits app)

def noisy(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    power = float(np.mean(audio ** 2))
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    return (audio + noise * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


def scored_words(app, audio: np.ndarray) -> list[dict]:
    return httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(audio))},
                      data={"response_format": "verbose_json", "timestamp_granularities[]": "word"},
                      timeout=120).json()["words"]


def test_wrong_words_and_noisy_speech_get_lower_confidence(digits_app):
    rng = random.Random(91)
    voices = heldout()["voices"]
    right, wrong, clean, noisy_all = [], [], [], []
    for i, words in enumerate(random_phrases(rng, 40, 3, 5)):
        recording = phrase_recording(words, voice=voices[i % len(voices)], rng=rng)
        clean += [w["probability"] for w in scored_words(digits_app, recording.audio)]
        heard = scored_words(digits_app, noisy(recording.audio, snr_db=0, seed=i))
        noisy_all += [w["probability"] for w in heard]
        if len(heard) == len(words):  # word by word (a different count has no one-to-one alignment)
            for word, truth in zip(heard, words):
                (right if normalise(word["word"]) == truth else wrong).append(word["probability"])
    assert all(0 <= p <= 1 for p in clean + noisy_all)
    assert len(wrong) >= 5 and len(right) >= 50, (len(wrong), len(right))
    print(f"mean word probability: right {np.mean(right):.3f} (n={len(right)}), wrong {np.mean(wrong):.3f} "
          f"(n={len(wrong)}); clean {np.mean(clean):.3f}, noisy {np.mean(noisy_all):.3f}")
    assert np.mean(wrong) < np.mean(right)
    assert np.mean(clean) > np.mean(noisy_all)


def test_logprobs_with_json_and_confidence_in_the_legacy_form(digits_app):
    audio = phrase_recording(["four", "four", "two"], voice=2).audio
    body = httpx.post(digits_app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(audio))},
                      data={"include[]": "logprobs"}, timeout=120).json()
    assert body["logprobs"] and all(p["logprob"] <= 0 for p in body["logprobs"])
    assert "".join(p["token"] for p in body["logprobs"]).strip() == body["text"]
    assert "logprobs" not in httpx.post(digits_app.url + "/v1/audio/transcriptions",
                                        files={"file": ("a.wav", encode(audio))}, timeout=120).json()
    legacy = httpx.post(digits_app.url + "/transcribe", files={"file": ("a.wav", encode(audio))},
                        data={"include_timestamps": "true"}, timeout=120).json()
    assert all(0 <= w["confidence"] <= 1 for w in legacy["timestamps"]["words"])
