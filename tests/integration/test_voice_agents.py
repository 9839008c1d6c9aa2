"""Voice-agent clients against the served graph (trained digits model): Deepgram's listen protocol (``/v1/listen``)
spoken by a plain WebSocket client, then the real STT plugins of Pipecat and LiveKit Agents, unchanged but for
their base URL and key, each transcript checked against the offline path's for the same audio."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import websockets

from deployments.speech.audio import float_to_pcm16
from tests.helpers import SAMPLE_RATE, encode, heldout, normalise

pytestmark = pytest.mark.integration
FRAME = 320  # 20 ms at 16 kHz


@pytest.fixture(scope="module")
def app(digits_app):
    return digits_app


def ws_base(app) -> str:
    return app.url.replace("http://", "ws://")


def offline_text(app, audio: np.ndarray, start: float | None = None, end: float | None = None) -> str:
    """The offline path's text for ``audio`` (or its ``[start, end)`` seconds: what a final covered)."""
    if start is not None:
        audio = audio[int(round(start * SAMPLE_RATE)):int(round(end * SAMPLE_RATE))]
    return httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(audio))},
                      timeout=120).json()["text"]


def utterances(count: int, start: int = 0) -> list[np.ndarray]:
    """Held-out utterances (voices the model never heard), each with 1 s of quiet after it."""
    quiet = np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float32) * 1e-3
    return [np.concatenate([audio, quiet]) for audio, _ in heldout()["utterances"][start:start + count]]


async def listen(app, audio: np.ndarray, query: str, finalize_at: list[int] = (), speed: float = 4.0
                 ) -> list[dict]:
    """Deepgram's live protocol by hand: 20 ms frames, Finalize after the given sample offsets, KeepAlive once,
    CloseStream; every message until the server closes."""
    async with websockets.connect(f"{ws_base(app)}/v1/listen?{query}", max_size=None) as ws:
        async def send() -> None:
            await ws.send(json.dumps({"type": "KeepAlive"}))
            pending = sorted(finalize_at)
            for start in range(0, len(audio), FRAME):
                await ws.send(float_to_pcm16(audio[start:start + FRAME]))
                while pending and pending[0] <= start + FRAME:
                    pending.pop(0)
                    await ws.send(json.dumps({"type": "Finalize"}))
                await asyncio.sleep(FRAME / SAMPLE_RATE / speed)
            await ws.send(json.dumps({"type": "CloseStream"}))

        sender = asyncio.create_task(send())
        messages = [json.loads(m) async for m in ws]
        await sender
        assert ws.close_code == 1000
    return messages


def finals(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "Results" and m["is_final"]]


def text_of(results: list[dict]) -> str:
    return " ".join(r["channel"]["alternatives"][0]["transcript"] for r in results
                    if r["channel"]["alternatives"][0]["transcript"])


def test_listen_live_with_server_endpointing(app):
    said = utterances(2)
    audio = np.concatenate(said)
    messages = asyncio.run(listen(app, audio, "encoding=linear16&sample_rate=16000&channels=1&interim_results=true"
                                              "&endpointing=300&vad_events=true&utterance_end_ms=1000&model=nova-3"
                                              "&language=en-US&punctuate=true&smart_format=true"))
    got = finals(messages)
    assert len(got) == len(said)
    assert [text_of([r]) for r in got] == [offline_text(app, audio, r["start"], r["start"] + r["duration"])
                                           for r in got]
    assert all(r["speech_final"] and not r["from_finalize"] for r in got)
    assert all(r["channel"]["alternatives"][0]["words"] and r["metadata"]["request_id"] for r in got)
    kinds = [m["type"] for m in messages]
    assert kinds.count("SpeechStarted") == 2 and kinds.count("UtteranceEnd") == 2 and kinds[-1] == "Metadata"
    assert any(m["type"] == "Results" and not m["is_final"] for m in messages), "interim results"


def test_listen_finalize_ends_the_turn_and_nothing_open_gives_an_empty_final(app):
    [said] = utterances(1, start=2)
    speech_end = len(said) - SAMPLE_RATE
    audio = np.concatenate([said, np.zeros(SAMPLE_RATE, np.float32)])
    messages = asyncio.run(listen(app, audio, "interim_results=false&endpointing=false",
                                  finalize_at=[speech_end + SAMPLE_RATE // 5, len(audio) - SAMPLE_RATE // 2]))
    got = finals(messages)
    assert [r["from_finalize"] for r in got] == [True, True]
    first = got[0]
    assert text_of([first]) == offline_text(app, audio, first["start"], first["start"] + first["duration"])
    assert first["start"] + first["duration"] <= (speech_end + SAMPLE_RATE // 5) / SAMPLE_RATE + 0.02
    assert text_of(got[1:]) == "", "nothing was open at the second Finalize"


def test_listen_prerecorded_and_bad_parameters(app):
    said = utterances(1, start=3)[0]
    body = httpx.post(app.url + "/v1/listen?model=nova-3&smart_format=true&language=en", content=encode(said),
                      headers={"Content-Type": "audio/wav"}, timeout=120).json()
    alternative = body["results"]["channels"][0]["alternatives"][0]
    assert alternative["transcript"] == offline_text(app, said) and alternative["words"]
    assert body["metadata"]["request_id"] and body["metadata"]["channels"] == 1
    refused = httpx.post(app.url + "/v1/listen?model=nova-9", content=encode(said), timeout=60)
    assert refused.status_code == 404 and "nova-9" in refused.json()["error"]["message"]

    async def upgrade(query: str) -> int:
        try:
            async with websockets.connect(f"{ws_base(app)}/v1/listen?{query}"):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(upgrade("encoding=opus")) == 400
    assert asyncio.run(upgrade("model=nova-9")) == 404
