"""Security and overload on the served graph: the API key on every route and socket, admission control that sheds
at once while health stays fast, and a client that goes away has its remaining work dropped."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import numpy as np
import pytest
import websockets

from tests.helpers import (SAMPLE_RATE, Scrape, encode, long_recording, phrase_recording, random_phrases,
                           wait_for_metrics)

pytestmark = pytest.mark.integration
KEY = "test-key-7f3a"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def app(module_app, tiny_model):
    return module_app(model=str(tiny_model), api_key=KEY,
                      admission={"max_requests": 3, "max_audio_s": 60, "long_file_s": 30})


@pytest.fixture(scope="module")
def speech() -> bytes:
    return encode(phrase_recording(["one", "two", "three"], voice=0).audio)


def post(app, wav: bytes, headers=AUTH, **fields) -> httpx.Response:
    return httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=fields,
                      headers=headers, timeout=120)


def test_every_route_needs_the_key_but_healthz(app, speech):
    assert httpx.get(app.url + "/healthz").status_code == 200
    for response in (post(app, speech, headers={}), post(app, speech, headers={"Authorization": "Bearer nope"}),
                     httpx.get(app.url + "/v1/models"), httpx.get(app.url + "/readyz"),
                     httpx.post(app.url + "/transcribe", files={"file": ("a.wav", speech)})):
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert post(app, speech).status_code == 200
    assert post(app, speech, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(app.url + "/v1/models", headers=AUTH).status_code == 200


def test_websockets_need_the_key_too(app):
    async def refused(path: str):
        async with websockets.connect(app.url.replace("http", "ws") + path) as ws:
            message = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return message, ws.close_code

    for path in ("/v1/audio/stream", "/v1/realtime?intent=transcription"):
        message, code = asyncio.run(refused(path))
        assert message["code"] == "invalid_api_key" and code == 1008


def test_deepgram_clients_send_the_key_as_token_and_are_refused_at_the_upgrade_without_it(app, speech):
    """Deepgram's SDKs and plugins send ``Authorization: Token <key>``; without a key the live socket is refused
    with 401 at the upgrade (a 4xx makes Pipecat stop retrying), not accepted and closed."""
    token = {"Authorization": f"Token {KEY}"}
    listen = app.url + "/v1/listen?model=nova-3"
    assert httpx.post(listen, content=speech, headers={"Content-Type": "audio/wav"}, timeout=60).status_code == 401
    answered = httpx.post(listen, content=speech, headers={**token, "Content-Type": "audio/wav"}, timeout=120)
    assert answered.status_code == 200 and answered.json()["metadata"]["request_id"]

    async def upgrade(headers: dict) -> int | str:
        try:
            async with websockets.connect(listen.replace("http", "ws"), additional_headers=headers) as ws:
                await ws.send(json.dumps({"type": "CloseStream"}))
                return json.loads(await ws.recv())["type"]
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(upgrade({})) == 401
    assert asyncio.run(upgrade({"Authorization": "Token nope"})) == 401
    assert asyncio.run(upgrade(token)) == "Metadata"


def test_the_official_sdk_passes_the_key(app, speech):
    from openai import OpenAI

    client = OpenAI(base_url=app.url + "/v1", api_key=KEY, timeout=120)
    assert client.audio.transcriptions.create(model="parakeet-tdt-0.6b-v2", file=("a.wav", speech)).text


def test_a_burst_past_capacity_is_shed_at_once_while_health_stays_fast(app, local_ray):
    def shed_total(scrape: Scrape) -> float:
        return scrape.value("ray_parakeet_requests_shed_total", application="reliability", route="openai")

    shed_before = shed_total(Scrape(local_ray.metrics_url))
    rng = random.Random(1)
    files = [encode(phrase_recording(p, voice=i % 3, rng=rng).audio) for i, p in enumerate(random_phrases(rng, 30))]
    health_ms: list[float] = []

    async def burst():
        async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
            async def health():
                for _ in range(60):
                    started = time.perf_counter()
                    assert (await client.get(app.url + "/healthz")).status_code == 200
                    health_ms.append((time.perf_counter() - started) * 1000)
                    await asyncio.sleep(0.05)

            async def one(wav: bytes):
                started = time.perf_counter()
                response = await client.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)})
                return response, time.perf_counter() - started

            results = await asyncio.gather(health(), *[one(wav) for wav in files])
            return results[1:]

    results = asyncio.run(burst())
    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 429}, statuses  # shed by admission (429), never a proxy queue's 503
    shed = [(r, seconds) for r, seconds in results if r.status_code != 200]
    assert shed and statuses.count(200) >= 3
    for response, seconds in shed:
        assert int(response.headers["Retry-After"]) >= 1 and response.json()["error"]["code"] == "server_busy"
        assert seconds < 5, "shed at once, not after waiting in a queue"
    p99 = float(np.percentile(health_ms, 99))
    print(f"burst: {statuses.count(200)} served, {len(shed)} shed; /healthz p99 {p99:.0f} ms")
    assert p99 < 600  # measured here: 218 ms (a 30-request burst; the 200-client one is test_health_under_load)
    # operators see the shedding: one count per refused request
    scrape = wait_for_metrics(local_ray.metrics_url, lambda s: shed_total(s) - shed_before >= len(shed))
    assert shed_total(scrape) - shed_before == len(shed)


@pytest.fixture(scope="module")
def long_talk():
    """A long recording and how many segments VAD makes of it."""
    from deployments.speech.settings import VadSettings
    from deployments.speech.vad import SpeechDetector

    rng = random.Random(5)
    talk = long_recording(random_phrases(rng, 80), rng, phrase_gap_s=(0.5, 2.0))
    return talk, len(SpeechDetector(VadSettings()).segments(talk.audio))


def transcribed(app) -> int:
    return app.deployment("Transcriber").stats.remote().result()["items"]


def dropped(app, before: int, at_cancel: int, segments: int, how: str) -> None:
    """Once the Ingress has let go of the request, no segment of it reaches the model: at most the one batch the
    model had already taken when the cancel arrived (max_batch_size, 4) runs after it, and nothing after that."""
    ingress = app.deployment("Ingress")
    deadline = time.monotonic() + 30
    while ingress.stream_stats.remote().result()["requests"]:
        assert time.monotonic() < deadline, "the Ingress still holds the request"
        time.sleep(0.1)
    settled = transcribed(app)
    time.sleep(2.0)
    after = transcribed(app)
    print(f"{how}: {at_cancel - before} segments before the cancel, {settled - at_cancel} while it took effect, "
          f"{after - settled} after, of {segments}")
    assert after == settled and settled - at_cancel <= 4 and after - before < segments
    # the batcher is not wedged: the next request is served
    assert post(app, encode(phrase_recording(["five", "six"]).audio)).status_code == 200


def test_a_handle_caller_that_cancels_has_its_remaining_segments_dropped(app, long_talk):
    talk, segments = long_talk
    before = transcribed(app)
    call = app.handle().transcribe.remote(talk.audio, sample_rate=SAMPLE_RATE)
    time.sleep(0.5)
    call.cancel()  # the caller is gone
    dropped(app, before, transcribed(app), segments, "handle cancel")


def test_an_http_client_that_leaves_mid_sse_has_its_remaining_segments_dropped(app, long_talk):
    talk, segments = long_talk
    before = transcribed(app)
    with httpx.Client(timeout=60, headers=AUTH) as client:
        with client.stream("POST", app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(talk.audio))},
                           data={"stream": "true"}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            time.sleep(0.5)
            at_cancel = transcribed(app)
    # (the connection is closed here: the proxy cancels the request in the Ingress)
    dropped(app, before, at_cancel, segments, "SSE disconnect")


def test_an_http_client_that_leaves_mid_upload_costs_no_model_work(app, long_talk):
    import socket
    from urllib.parse import urlsplit

    talk, _ = long_talk
    wav = encode(talk.audio)
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + wav + f"\r\n--{boundary}--\r\n".encode()
    url = urlsplit(app.url)
    before = transcribed(app)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall((f"POST {url.path}/v1/audio/transcriptions HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      f"Authorization: Bearer {KEY}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:len(body) // 2])
        time.sleep(0.5)
    dropped(app, before, before, 1, "upload abandoned")
