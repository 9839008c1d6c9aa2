"""The Prometheus endpoint an operator scrapes: after a few requests and a stream, every parakeet series moved as
those requests should have moved it. Series are Ray's: ``ray_`` prefix, counters ``_total``, one per replica (the
scrape sums them) and labelled with the application."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from tests.helpers import Scrape, encode, long_recording, phrase_recording, random_phrases, wait_for_metrics

pytestmark = pytest.mark.integration
APP = {"application": "parakeet"}


def settled(metrics_url: str) -> Scrape:
    """A scrape once earlier tests' series stopped changing (each process reports once a second)."""
    previous = Scrape(metrics_url)
    for _ in range(30):
        current = wait_for_metrics(metrics_url, lambda s: False, timeout_s=1.5)
        if [(s.name, s.labels, s.value) for s in current.samples if "parakeet" in s.name] == [
                (s.name, s.labels, s.value) for s in previous.samples if "parakeet" in s.name]:
            return current
        previous = current
    return previous


def test_each_series_moves_with_the_requests_that_feed_it(digits_app, local_ray):
    import random

    url, metrics = digits_app.url, local_ray.metrics_url
    short = phrase_recording(["two", "zero", "five"], voice=1)
    long = long_recording(random_phrases(random.Random(5), 12), random.Random(5))
    transcriber = digits_app.deployment("Transcriber")
    items_before = transcriber.stats.remote().result()["items"]
    before = settled(metrics)

    def post(audio, **fields):
        return httpx.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(audio))}, data=fields,
                          timeout=120)

    assert post(short.audio, response_format="verbose_json", **{"timestamp_granularities[]": "word"}).is_success
    assert post(long.audio).is_success
    assert post(short.audio, response_format="nonsense").status_code == 400
    assert httpx.post(url + "/transcribe", files={"file": ("a.wav", encode(short.audio))}, timeout=120).is_success
    audio_s = 2 * len(short.audio) / 16000 + len(long.audio) / 16000

    def delta(scrape: Scrape, name: str, **labels) -> float:
        return scrape.value(name, **APP, **labels) - before.value(name, **APP, **labels)

    expected_requests = {("openai", "200"): 2, ("openai", "400"): 1, ("legacy", "200"): 1}
    wait_for_metrics(metrics, lambda s: all(
        delta(s, "ray_parakeet_requests_total", route=r, status=c) >= n for (r, c), n in expected_requests.items()))
    after = settled(metrics)  # every deployment's last report is in
    for (route, status), count in expected_requests.items():
        assert delta(after, "ray_parakeet_requests_total", route=route, status=status) == count
    assert delta(after, "ray_parakeet_request_latency_ms_count", route="openai") == 3
    # audio in: the files that were decoded (the 400 was refused before its audio was read)
    openai_s, legacy_s = len(short.audio) / 16000 + len(long.audio) / 16000, len(short.audio) / 16000
    assert delta(after, "ray_parakeet_audio_seconds_in_total", route="openai") == pytest.approx(openai_s, abs=0.01)
    assert delta(after, "ray_parakeet_audio_seconds_in_total", route="legacy") == pytest.approx(legacy_s, abs=0.01)
    # real-time factor: one per successful request, a positive fraction of the audio's length
    assert delta(after, "ray_parakeet_real_time_factor_count", route="openai") == 2
    assert 0 < delta(after, "ray_parakeet_real_time_factor_sum", route="openai") < 2 * 5
    # stages: decode and VAD once per decoded file, alignment once (only the request that asked for timestamps),
    # and the model at least once
    assert delta(after, "ray_parakeet_stage_latency_ms_count", stage="decode") == 3
    assert delta(after, "ray_parakeet_stage_latency_ms_count", stage="vad") == 3
    assert delta(after, "ray_parakeet_stage_latency_ms_count", stage="align") == 1
    # the queue before the model: once per segment (Ray's histogram _sum series are bucket estimates, so the
    # segments are counted by the replica itself)
    segments = transcriber.stats.remote().result()["items"] - items_before
    assert segments >= 3 + 1 and delta(after, "ray_parakeet_stage_latency_ms_count", stage="queue") == segments
    assert 1 <= delta(after, "ray_parakeet_stage_latency_ms_count", stage="asr") <= segments
    assert delta(after, "ray_parakeet_batch_size_count") == delta(after, "ray_parakeet_stage_latency_ms_count",
                                                                  stage="asr")
    # audio through VAD and through the model; the speech ratio is a fraction; padding is never more than the audio
    assert delta(after, "ray_parakeet_vad_audio_seconds_total", path="file") == pytest.approx(audio_s, abs=0.01)
    speech = delta(after, "ray_parakeet_vad_speech_seconds_total", path="file")
    assert 0.2 * audio_s < speech <= audio_s
    model_s = delta(after, "ray_parakeet_transcribed_audio_seconds_total")
    assert model_s == pytest.approx(speech, abs=0.01)
    assert 0 <= delta(after, "ray_parakeet_batch_padding_seconds_total") < model_s


def test_active_streams_and_stream_outcomes(digits_app, local_ray):
    metrics = local_ray.metrics_url
    before = settled(metrics)
    silence = b"\0\0" * 1600

    async def hold_a_stream_open():
        async with websockets.connect(digits_app.url.replace("http", "ws") + "/v1/audio/stream") as ws:
            await ws.send(silence)
            opened = await asyncio.to_thread(wait_for_metrics, metrics, lambda s: s.value(
                "ray_parakeet_active_streams", **APP) == 1)
            await ws.send(json.dumps({"type": "end"}))
            while True:
                if json.loads(await ws.recv())["type"] == "done":
                    return opened

    opened = asyncio.run(hold_a_stream_open())
    assert opened.value("ray_parakeet_active_streams", **APP) == 1
    closed = wait_for_metrics(metrics, lambda s: s.value("ray_parakeet_active_streams", **APP) == 0 and s.value(
        "ray_parakeet_streams_total", **APP, outcome="done") > before.value("ray_parakeet_streams_total", **APP,
                                                                             outcome="done"))
    assert closed.value("ray_parakeet_active_streams", **APP) == 0
    assert closed.value("ray_parakeet_streams_total", **APP, outcome="done") == before.value(
        "ray_parakeet_streams_total", **APP, outcome="done") + 1
