"""The served graph end to end with a random-weight tiny Parakeet-architecture model (real Ray Serve, local CPU Ray).

A random model's words are meaningless, so these tests check the contract: routes, formats, errors, the handle,
batching, which deployments are called, and that every result goes back to its own caller.
"""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import numpy as np
import pytest

from tests.helpers import SAMPLE_RATE, encode, long_recording, phrase_recording, random_phrases

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app(module_app, tiny_model):
    # a wider batching window than production's 15 ms, so the batching test's requests surely meet
    return module_app({"Transcriber": {"user_config": {"batch_ms": 50}}}, model=str(tiny_model),
                      limits={"max_upload_mb": 2}, local_attention_above_s=60)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return phrase_recording(["one", "two", "three", "four"], voice=0).audio


def post(app, path: str, audio_bytes: bytes | None, timeout: float = 120, **fields) -> httpx.Response:
    files = {"file": ("audio.wav", audio_bytes, "audio/wav")} if audio_bytes is not None else None
    return httpx.post(app.url + path, files=files, data=fields, timeout=timeout)


def aligner_calls(app) -> int:
    return app.deployment("Aligner").stats.remote().result()["calls"]


def check_words(words: list[dict], duration: float) -> None:
    previous = 0.0
    for word in words:
        assert 0.0 <= word["start"] <= word["end"] <= duration + 1e-6
        assert word["start"] >= previous - 1e-6, "words overlap or are out of order"
        previous = word["end"]


# ---------------------------------------------------------------- health and discovery

def test_health_ready_and_models(app):
    assert httpx.get(app.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(app.url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    models = httpx.get(app.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "parakeet-tdt-0.6b-v2"


# ---------------------------------------------------------------- response formats

def test_json_and_text(app, speech):
    body = post(app, "/v1/audio/transcriptions", encode(speech), model="parakeet-tdt-0.6b-v2")
    assert body.status_code == 200, body.text
    text = body.json()["text"]
    assert isinstance(text, str) and text
    plain = post(app, "/v1/audio/transcriptions", encode(speech), response_format="text")
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.text.strip() == text


def test_verbose_json_words_and_segments(app, speech):
    body = post(app, "/v1/audio/transcriptions", encode(speech), response_format="verbose_json",
                **{"timestamp_granularities[]": ["word", "segment"]}).json()
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert body["duration"] == pytest.approx(len(speech) / SAMPLE_RATE, abs=0.01)
    assert body["words"] and body["segments"]
    check_words(body["words"], body["duration"])
    assert " ".join(w["word"] for w in body["words"]) == " ".join(s["text"] for s in body["segments"])
    for segment in body["segments"]:
        assert 0 <= segment["start"] <= segment["end"] <= body["duration"]
    # the non-bracketed spelling is accepted too, and only the asked-for granularity comes back
    words_only = post(app, "/v1/audio/transcriptions", encode(speech), response_format="verbose_json",
                      timestamp_granularities="word").json()
    assert "words" in words_only and "segments" not in words_only


def test_srt_and_vtt(app, speech):
    srt = post(app, "/v1/audio/transcriptions", encode(speech), response_format="srt")
    assert srt.status_code == 200
    assert srt.text.startswith("1\n00:00:") and " --> " in srt.text
    vtt = post(app, "/v1/audio/transcriptions", encode(speech), response_format="vtt")
    assert vtt.text.startswith("WEBVTT\n\n00:00:") and vtt.headers["content-type"].startswith("text/vtt")


def test_openai_sdk(app, speech):
    from openai import OpenAI

    client = OpenAI(base_url=app.url + "/v1", api_key="unused", timeout=120)
    wav = ("speech.wav", encode(speech), "audio/wav")
    as_json = client.audio.transcriptions.create(model="parakeet-tdt-0.6b-v2", file=wav)
    assert as_json.text
    as_text = client.audio.transcriptions.create(model="parakeet-tdt-0.6b-v2", file=wav, response_format="text")
    assert as_text.strip() == as_json.text
    verbose = client.audio.transcriptions.create(model="parakeet-tdt-0.6b-v2", file=wav,
                                                 response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])
    assert verbose.text == as_json.text and verbose.words and verbose.segments
    assert verbose.words[0].start >= 0 and verbose.segments[-1].end <= verbose.duration
    srt = client.audio.transcriptions.create(model="parakeet-tdt-0.6b-v2", file=wav, response_format="srt")
    assert "-->" in srt
    vtt = client.audio.transcriptions.create(model="parakeet-tdt-0.6b-v2", file=wav, response_format="vtt")
    assert vtt.startswith("WEBVTT")
    events = list(client.audio.transcriptions.create(model="parakeet-tdt-0.6b-v2", file=wav, stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].text == as_json.text
    assert any(e.type == "transcript.text.delta" for e in events)


def test_sse_stream_one_delta_per_segment(app):
    rng = random.Random(5)
    recording = long_recording(random_phrases(rng, 3), rng, phrase_gap_s=(2.0, 2.5))
    plain = post(app, "/v1/audio/transcriptions", encode(recording.audio), vad="true").json()["text"]
    with httpx.stream("POST", app.url + "/v1/audio/transcriptions", timeout=120,
                      files={"file": ("a.wav", encode(recording.audio), "audio/wav")},
                      data={"stream": "true"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert len(deltas) >= 2, "one delta per finished segment"
    assert events[-1] == {"type": "transcript.text.done", "text": plain}
    assert "".join(deltas) == plain


# ---------------------------------------------------------------- the seed's endpoint

def test_legacy_transcribe(app, speech):
    plain = post(app, "/transcribe", encode(speech)).json()
    assert set(plain) == {"text", "timestamps"} and plain["timestamps"] is None and plain["text"]
    timed = post(app, "/transcribe", encode(speech), include_timestamps="true", should_chunk="false").json()
    assert timed["timestamps"]["words"] and timed["timestamps"]["segments"]
    assert set(timed["timestamps"]["words"][0]) == {"text", "start", "end", "confidence"}
    check_words([{"word": w["text"], **w} for w in timed["timestamps"]["words"]], len(speech) / SAMPLE_RATE)


# ---------------------------------------------------------------- the Python handle

def test_handle_bytes_and_array(app, speech):
    from deployments.speech.schemas import TranscriptionResult

    handle = app.handle()
    from_bytes = handle.transcribe.remote(encode(speech), timestamps=True).result(timeout_s=120)
    assert isinstance(from_bytes, TranscriptionResult) and from_bytes.words and from_bytes.segments
    # the same audio at 8 kHz as a raw float32 array, resampled by the service
    import soxr

    at_8k = soxr.resample(speech, SAMPLE_RATE, 8000).astype(np.float32)
    from_array = handle.transcribe.remote(at_8k, sample_rate=8000).result(timeout_s=120)
    assert from_array.text and from_array.words == []
    assert from_array.duration == pytest.approx(len(speech) / SAMPLE_RATE, abs=0.01)


# ---------------------------------------------------------------- which deployments run

def test_aligner_only_when_timestamps_are_requested(app, speech):
    before = aligner_calls(app)
    for fmt in ("json", "text"):
        assert post(app, "/v1/audio/transcriptions", encode(speech), response_format=fmt).status_code == 200
    post(app, "/transcribe", encode(speech), include_timestamps="false")
    app.handle().transcribe.remote(encode(speech), timestamps=False).result(timeout_s=120)
    assert aligner_calls(app) == before, "the Aligner ran although no timestamps were requested"
    for fmt in ("verbose_json", "srt", "vtt"):
        assert post(app, "/v1/audio/transcriptions", encode(speech), response_format=fmt).status_code == 200
    post(app, "/transcribe", encode(speech), include_timestamps="true")
    assert aligner_calls(app) == before + 4


def test_vad_on_skips_silence_and_vad_off_sends_the_whole_file(app):
    rng = random.Random(9)
    first = phrase_recording(["one", "two", "three"], voice=1, rng=rng)
    second = phrase_recording(["seven", "eight", "nine"], voice=1, rng=rng)
    gap = np.zeros(6 * SAMPLE_RATE, np.float32)
    audio = np.concatenate([first.audio, gap, second.audio])
    silent_from, silent_to = len(first.audio) / SAMPLE_RATE + 0.5, (len(first.audio) + len(gap)) / SAMPLE_RATE - 0.5

    def words_and_model_inputs(vad: str):
        before = app.deployment("Transcriber").stats.remote().result()["items"]
        words = post(app, "/v1/audio/transcriptions", encode(audio), response_format="verbose_json",
                     timestamp_granularities="word", vad=vad).json()["words"]
        return words, app.deployment("Transcriber").stats.remote().result()["items"] - before

    with_vad, inputs = words_and_model_inputs("true")
    assert inputs == 2, "the two speech regions (6 s apart) go to the model separately"
    assert with_vad and not [w for w in with_vad if silent_from < w["start"] < silent_to]
    without_vad, inputs = words_and_model_inputs("false")
    assert inputs == 1 and without_vad, "without VAD the whole file is one model input"


def test_segments_are_handed_to_the_transcriber_while_vad_reads_on(app):
    from deployments.speech.settings import VadSettings
    from deployments.speech.vad import SpeechDetector

    rng = random.Random(21)
    talk = long_recording(random_phrases(rng, 30), rng, phrase_gap_s=(0.3, 3.0))
    assert talk.duration > 70  # more than two VAD blocks of 32.8 s
    segmenter = app.deployment("Segmenter")
    batches = list(segmenter.options(stream=True).segments_stream.remote(talk.audio))
    assert len(batches) >= 2, "segments come out block by block, not after the whole file"
    streamed = [(s.start, s.end) for batch in batches for s in batch]
    whole_pass = [(s.start, s.end) for s in SpeechDetector(VadSettings()).segments(talk.audio)]
    assert streamed == whole_pass == [(s.start, s.end) for s in segmenter.segments.remote(talk.audio).result()]
    before = app.deployment("Transcriber").stats.remote().result()["items"]
    app.handle().transcribe.remote(talk.audio, sample_rate=SAMPLE_RATE).result(timeout_s=120)
    assert app.deployment("Transcriber").stats.remote().result()["items"] - before == len(streamed)


# ---------------------------------------------------------------- batching and isolation

def test_concurrent_requests_batch_and_return_to_their_callers(app):
    rng = random.Random(3)
    recordings = [phrase_recording(p, voice=i % 3, rng=rng) for i, p in enumerate(random_phrases(rng, 12))]
    alone = [app.handle().transcribe.remote(r.audio, sample_rate=SAMPLE_RATE, vad=False).result(timeout_s=120).text
             for r in recordings]
    assert len(set(alone)) > 1
    before = app.deployment("Transcriber").stats.remote().result()

    async def together():
        async with httpx.AsyncClient(timeout=180) as client:
            return await asyncio.gather(*[
                client.post(app.url + "/v1/audio/transcriptions", data={"vad": "false"},
                            files={"file": ("a.wav", encode(r.audio), "audio/wav")}) for r in recordings])

    responses = asyncio.run(together())
    assert [r.json()["text"] for r in responses] == alone
    after = app.deployment("Transcriber").stats.remote().result()
    new_batches = {size: count - before["batch_sizes"].get(size, 0) for size, count in after["batch_sizes"].items()}
    assert any(size > 1 and count > 0 for size, count in new_batches.items()), after


def test_a_bad_item_does_not_fail_its_batch_mates(app, speech):
    transcriber = app.deployment("Transcriber")
    good = [transcriber.transcribe.remote(speech, 0, len(speech)) for _ in range(3)]
    bad = transcriber.transcribe.remote(speech, len(speech), len(speech) + 10)
    wrong_type = transcriber.transcribe.remote(speech.astype(np.float64))
    with pytest.raises(Exception, match="outside the audio"):
        bad.result(timeout_s=120)
    with pytest.raises(Exception, match="float32"):
        wrong_type.result(timeout_s=120)
    texts = {g.result(timeout_s=120).text for g in good}
    assert len(texts) == 1 and texts.pop()


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("case,status,needle", [
    ("empty", 400, "empty"),
    ("not_audio", 415, "audio"),
    ("truncated", 415, "truncated"),
    ("too_short", 400, "minimum is 32 ms"),
    ("bad_format", 400, "response_format"),
    ("bad_granularity", 400, "timestamp_granularities"),
    ("bad_bool", 400, "vad must be true or false"),
    ("no_file", 400, "'file'"),
    ("language", 400, "transcribes: en"),
    ("too_large", 413, "limit"),
])
def test_bad_input_gets_a_clear_error(app, speech, case, status, needle):
    wav = encode(speech)
    fields: dict = {}
    payload: bytes | None = wav
    if case == "empty":
        payload = b""
    elif case == "not_audio":
        payload = b"this is certainly not an audio file " * 20
    elif case == "truncated":
        payload = wav[: len(wav) // 3]
    elif case == "too_short":
        payload = encode(speech[: int(0.02 * SAMPLE_RATE)])
    elif case == "bad_format":
        fields["response_format"] = "mp3"
    elif case == "bad_granularity":
        fields["timestamp_granularities[]"] = ["word", "sentence"]
    elif case == "bad_bool":
        fields["vad"] = "maybe"
    elif case == "no_file":
        payload = None
        fields["model"] = "parakeet-tdt-0.6b-v2"
    elif case == "language":
        fields["language"] = "fr"
    elif case == "too_large":
        payload = encode(np.random.default_rng(0).standard_normal(SAMPLE_RATE * 80).astype(np.float32) * 0.1)
    response = post(app, "/v1/audio/transcriptions", payload, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    # and the service still serves everyone else
    assert post(app, "/v1/audio/transcriptions", wav).status_code == 200


def test_handle_bad_input_raises_clear_error(app):
    with pytest.raises(Exception, match="sample_rate is required"):
        app.handle().transcribe.remote(np.zeros(16000, np.float32)).result(timeout_s=60)
    with pytest.raises(Exception, match="minimum is 32 ms"):
        app.handle().transcribe.remote(np.zeros(100, np.float32), sample_rate=SAMPLE_RATE).result(timeout_s=60)


def test_long_file_without_vad_uses_local_attention_and_succeeds(app):
    rng = random.Random(11)
    recording = long_recording(random_phrases(rng, 25), rng)
    assert recording.duration > 60  # above local_attention_above_s for this app
    result = app.handle().transcribe.remote(recording.audio, sample_rate=SAMPLE_RATE, vad=False,
                                            timestamps=True).result(timeout_s=300)
    assert result.text and result.words
    check_words([w.model_dump() for w in result.words], result.duration)
