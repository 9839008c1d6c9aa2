"""Fidelity through the full served graph with the project's trained digits model (tests/fixtures/digits.nemo).

The recordings are built from held-out voices (never seen in training) with every word's true start and end known,
so these tests check real words and real times: long-form WER against the model's own, word timestamps against the
truth in every output format, batch invariance, and that concurrent callers never get each other's digits.
"""

from __future__ import annotations

import asyncio
import random
import re

import httpx
import numpy as np
import pytest

from deployments.speech.parakeet import ParakeetRecognizer
from deployments.speech.timestamps import segment_words
from tests.helpers import (SAMPLE_RATE, assert_own_results, encode, long_recording, normalise, phrase_recording,
                           random_phrases, wer)

pytestmark = pytest.mark.integration
FRAME_S = 0.08


@pytest.fixture(scope="module")
def app(digits_app):
    return digits_app


@pytest.fixture(scope="module")
def recognizer(digits_model):
    return ParakeetRecognizer.load(str(digits_model), device="cpu")


@pytest.fixture(scope="module")
def long_form():
    rng = random.Random(2024)
    recording = long_recording(random_phrases(rng, 48), rng, phrase_gap_s=(0.2, 3.0))
    assert recording.duration >= 180 and len(recording.phrases) >= 40
    return recording


def phrase_audio(recording, index: int) -> np.ndarray:
    """One phrase of the recording cut out with a little silence around it."""
    words = [w for w in recording.words]
    counts = [len(p.split()) for p in recording.phrases]
    first = sum(counts[:index])
    start, end = words[first][1], words[first + counts[index] - 1][2]
    a, b = int(max(0, start - 0.3) * SAMPLE_RATE), int(min(recording.duration, end + 0.3) * SAMPLE_RATE)
    return recording.audio[a:b]


def transcribe_http(app, audio: np.ndarray, timeout: float = 600, **fields) -> httpx.Response:
    return httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(audio), "audio/wav")},
                      data=fields, timeout=timeout)


def test_long_form_wer_matches_the_model_on_single_phrases(app, recognizer, long_form):
    alone = [t.text for t in recognizer.transcribe([phrase_audio(long_form, i)
                                                     for i in range(len(long_form.phrases))])]
    model_wer = wer(long_form.phrases, alone)
    results = {}
    for vad in ("true", "false"):
        served = transcribe_http(app, long_form.audio, vad=vad).json()["text"]
        results[vad] = wer([long_form.text], [normalise(served)])
    print(f"model WER on single phrases {model_wer:.4f}; served with VAD {results['true']:.4f}, "
          f"without {results['false']:.4f}")
    assert results["true"] <= model_wer + 0.005
    assert results["false"] <= model_wer + 0.005


def within_one_frame(predicted: list[tuple[str, float, float]], truth: list[tuple[str, float, float]]) -> float:
    """Share of word starts and ends within one encoder frame of the truth (words matched in order)."""
    assert len(predicted) == len(truth), (len(predicted), len(truth))
    hits = sum((abs(p[1] - t[1]) <= FRAME_S) + (abs(p[2] - t[2]) <= FRAME_S) for p, t in zip(predicted, truth))
    return hits / (2 * len(truth))


def check_order_and_bounds(words: list[tuple[str, float, float]], duration: float) -> None:
    previous = 0.0
    for _, start, end in words:
        assert previous <= start <= end <= duration + 1e-6
        previous = end


@pytest.fixture(scope="module")
def timed_recording():
    rng = random.Random(77)
    return long_recording(random_phrases(rng, 8), rng, phrase_gap_s=(0.4, 1.5))


@pytest.mark.parametrize("vad", ["true", "false"])
def test_word_timestamps_verbose_json(app, timed_recording, vad):
    body = transcribe_http(app, timed_recording.audio, response_format="verbose_json",
                           vad=vad, **{"timestamp_granularities[]": "word"}).json()
    words = [(w["word"], w["start"], w["end"]) for w in body["words"]]
    check_order_and_bounds(words, body["duration"])
    assert [w[0] for w in words] == [w[0] for w in timed_recording.words]
    assert within_one_frame(words, timed_recording.words) >= 0.95


def test_word_timestamps_legacy_and_handle(app, timed_recording):
    legacy = httpx.post(app.url + "/transcribe", files={"file": ("a.wav", encode(timed_recording.audio))},
                        data={"include_timestamps": "true"}, timeout=300).json()
    words = [(w["text"], w["start"], w["end"]) for w in legacy["timestamps"]["words"]]
    assert within_one_frame(words, timed_recording.words) >= 0.95
    result = app.handle().transcribe.remote(timed_recording.audio, sample_rate=SAMPLE_RATE,
                                            timestamps=True).result(timeout_s=300)
    words = [(w.word, w.start, w.end) for w in result.words]
    check_order_and_bounds(words, result.duration)
    assert within_one_frame(words, timed_recording.words) >= 0.95


CUE = re.compile(r"(\d\d):(\d\d):(\d\d)[.,](\d\d\d) --> (\d\d):(\d\d):(\d\d)[.,](\d\d\d)\n(.*)")


def cues(text: str) -> list[tuple[float, float, str]]:
    out = []
    for m in CUE.finditer(text):
        g = [int(x) for x in m.groups()[:8]]
        out.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000,
                    m.group(9)))
    return out


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_cues_start_and_end_on_words(app, timed_recording, fmt):
    found = cues(transcribe_http(app, timed_recording.audio, response_format=fmt).text)
    assert found
    truth = timed_recording.words
    cursor, hits = 0, 0
    for start, end, text in found:
        n = len(text.split())
        assert normalise(text) == " ".join(w[0] for w in truth[cursor:cursor + n])
        hits += (abs(start - truth[cursor][1]) <= FRAME_S) + (abs(end - truth[cursor + n - 1][2]) <= FRAME_S)
        cursor += n
    assert cursor == len(truth) and hits / (2 * len(found)) >= 0.95


def test_batch_invariance(app):
    rng = random.Random(8)
    recordings = [phrase_recording(p, voice=i % 4, rng=rng) for i, p in enumerate(random_phrases(rng, 4))]
    transcriber = app.deployment("Transcriber")
    alone = [transcriber.transcribe.remote(r.audio).result(timeout_s=120) for r in recordings]
    before = transcriber.stats.remote().result()["batch_sizes"].get(4, 0)
    together = [transcriber.transcribe.remote(r.audio) for r in recordings]
    together = [t.result(timeout_s=120) for t in together]
    assert transcriber.stats.remote().result()["batch_sizes"].get(4, 0) > before, "expected one full batch"
    for a, b in zip(alone, together):
        # Same text and tokens. Times may move by at most one frame: NeMo's subsampling convolutions see a
        # batch-mate's padding after their first layer, so the last frames' numbers differ slightly.
        assert (a.text, a.token_ids) == (b.text, b.token_ids)
        words_alone, words_together = segment_words(a), segment_words(b)
        assert [w.text for w in words_alone] == [w.text for w in words_together]
        for x, y in zip(words_alone, words_together):
            assert abs(x.start - y.start) <= FRAME_S + 1e-6 and abs(x.end - y.end) <= FRAME_S + 1e-6


def test_no_cross_talk_between_32_concurrent_callers(app):
    rng = random.Random(32)
    recordings = [phrase_recording(p, voice=i % 6, rng=rng) for i, p in enumerate(random_phrases(rng, 32, 4, 7))]
    assert len({r.text for r in recordings}) == 32
    before = app.deployment("Transcriber").stats.remote().result()

    async def everyone():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*[
                client.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(r.audio))})
                for r in recordings])

    responses = asyncio.run(everyone())
    texts = [normalise(r.json()["text"]) for r in responses]
    assert_own_results([r.text for r in recordings], texts)
    after = app.deployment("Transcriber").stats.remote().result()
    formed = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    assert any(size > 1 and count for size, count in formed.items())


