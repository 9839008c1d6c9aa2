"""Soak: mixed traffic (every HTTP format, SSE, handle calls, live streams, Realtime sessions) with no lost or
mixed-up result, flat memory, no temp files and no leftover tasks. CI runs a reduced count; the full figure is
``SOAK_REQUESTS=1000 .venv/bin/python -m pytest -s tests/integration/test_soak.py``."""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import time

import httpx
import numpy as np
import pytest

from deployments.speech.audio import float_to_pcm16
from deployments.stream_client import realtime_pcm, stream_pcm
from tests.helpers import SAMPLE_RATE, encode, normalise, phrase_recording, random_phrases

pytestmark = pytest.mark.integration
REQUESTS = int(os.environ.get("SOAK_REQUESTS", "240"))
CONCURRENCY = 6
WARM_UP = max(240, REQUESTS // 3)  # until the allocators' pools settle (fewer left the Transcriber +3-6 %)
KINDS = ("json", "text", "verbose_json", "srt", "vtt", "sse", "legacy", "handle", "stream", "realtime")


@pytest.fixture(scope="module")
def app(shipped_digits_app):
    return shipped_digits_app


def replica_rss_mb(app_name: str) -> dict[str, float]:
    import psutil

    out = {}
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(proc.info["cmdline"] or [])
        if f"ServeReplica:{app_name}:" in title and proc.info["memory_info"]:
            # the title names the task running now ("Transcriber.handle_request"): keyed by deployment and process
            deployment = title.split(f"ServeReplica:{app_name}:")[1].split()[0].split(".")[0]
            out[f"{deployment}:{proc.pid}"] = proc.info["memory_info"].rss / 2**20
    return out


async def one(app, client: httpx.AsyncClient, kind: str, audio: np.ndarray) -> str:
    """The transcript this kind of request returns, normalised."""
    url = app.url + "/v1/audio/transcriptions"
    files = {"file": ("a.wav", encode(audio))}
    if kind in ("json", "verbose_json"):
        return normalise((await client.post(url, files=files, data={"response_format": kind})).json()["text"])
    if kind == "text":
        return normalise((await client.post(url, files=files, data={"response_format": "text"})).text)
    if kind in ("srt", "vtt"):
        body = (await client.post(url, files=files, data={"response_format": kind})).text
        return normalise(" ".join(line for line in body.splitlines()
                                  if line and "-->" not in line and not line.isdigit() and line != "WEBVTT"))
    if kind == "sse":
        async with client.stream("POST", url, files=files, data={"stream": "true"}) as response:
            events = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
        return normalise(events[-1]["text"])
    if kind == "legacy":
        return normalise((await client.post(app.url + "/transcribe", files=files)).json()["text"])
    if kind == "handle":
        result = await app.handle().transcribe.remote(audio, sample_rate=SAMPLE_RATE)
        return normalise(result.text)
    base = app.url.replace("http", "ws")
    if kind == "stream":
        outcome = await stream_pcm(base + "/v1/audio/stream", float_to_pcm16(audio), {"partials": False})
        return normalise(" ".join(e["text"] for e in outcome.events if e["type"] == "final"))
    outcome = await realtime_pcm(base + "/v1/realtime", float_to_pcm16(audio), SAMPLE_RATE, realtime=False)
    return normalise(" ".join(e["transcript"] for e in outcome.events
                              if e["type"] == "conversation.item.input_audio_transcription.completed"))


def test_mixed_traffic_soak(app):
    rng = random.Random(1000)
    recordings = [phrase_recording(words, voice=i % 4, rng=rng) for i, words in enumerate(random_phrases(rng, 40))]
    work = [(KINDS[i % len(KINDS)], recordings[rng.randrange(len(recordings))]) for i in range(REQUESTS)]
    temp_before = set(os.listdir(tempfile.gettempdir()))
    ingress = app.deployment("Ingress")

    async def run(items) -> list[tuple[str, str, str]]:
        queue = list(items)
        results = []
        async with httpx.AsyncClient(timeout=300) as client:
            async def worker():
                while queue:
                    kind, recording = queue.pop()
                    results.append((kind, recording.text, await one(app, client, kind, recording.audio)))
            await asyncio.gather(*[worker() for _ in range(CONCURRENCY)])
        return results

    # warm-up with the same mix, until the allocators' pools have seen every kind and length
    asyncio.run(run([(KINDS[i % len(KINDS)], recordings[i % len(recordings)]) for i in range(WARM_UP)]))
    time.sleep(1)
    rss_before, tasks_before = replica_rss_mb(app.name), ingress.stream_stats.remote().result()["tasks"]
    started = time.perf_counter()
    results, curve = [], []
    for quarter in range(4):  # RSS after each quarter: a plateau, not a slope
        results += asyncio.run(run(work[quarter * REQUESTS // 4:(quarter + 1) * REQUESTS // 4]))
        curve.append({name: round(mb) for name, mb in replica_rss_mb(app.name).items()})
    elapsed = time.perf_counter() - started
    time.sleep(1)
    rss_after, stats = replica_rss_mb(app.name), ingress.stream_stats.remote().result()
    growth = {name: round(rss_after[name] / rss_before[name] - 1, 4) for name in rss_before if name in rss_after}
    wrong = [(kind, truth, got) for kind, truth, got in results if got != truth]
    print(f"soak: {len(results)} requests in {elapsed:.0f} s after {WARM_UP} to warm up; wrong {len(wrong)}; RSS "
          f"after warm-up {({k: round(v) for k, v in rss_before.items()})} MB, after each quarter {curve}, growth "
          f"{growth}; Ingress tasks {tasks_before} -> {stats['tasks']}")
    assert len(results) == REQUESTS, "a request was lost"
    # the digits model is not perfect on every voice: a result must be its own recording's, never another's
    assert len(wrong) <= REQUESTS * 0.02, wrong[:5]
    assert all(got not in {r.text for r in recordings} - {truth} for _, truth, got in wrong), "a mixed-up result"
    assert {"Ingress", "Transcriber"} <= {name.split(":")[0] for name in growth}, \
        f"the replicas' memory was measured before and after: {rss_before} -> {rss_after}"
    # the full soak holds +5 %; CI's reduced run is short enough for the allocators' noise to reach ~4-6 %
    assert all(g <= (0.05 if REQUESTS >= 1000 else 0.10) for g in growth.values()), growth
    # no slope, at every size: the second half adds at most 2 % (CI: 3 %) (a leak keeps growing; pools settle)
    assert all(curve[-1][name] <= curve[1][name] * (1.02 if REQUESTS >= 1000 else 1.03) for name in curve[1]), curve
    assert stats["requests"] == 0 and stats["active_streams"] == 0 and stats["tasks"] <= tasks_before
    assert set(os.listdir(tempfile.gettempdir())) - temp_before <= {f for f in os.listdir(tempfile.gettempdir())
                                                                    if f.startswith(("ray", "pytest"))}
