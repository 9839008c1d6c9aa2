"""Keyterms through every API of the served graph (trained digits model, noisy held-out speech): the spoken phrase
boosted is recognised where the plain model errs; concurrent requests with and without keyterms share batches and
each gets its own result; bad terms are 400s (and error events on streams that go on); a stream's keyterms change
mid-stream; Realtime sessions, Deepgram's keyterm and the Python handle take them too."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import websockets

from deployments.speech.audio import float_to_pcm16
from tests.helpers import SAMPLE_RATE, encode, noisy_heldout

pytestmark = pytest.mark.integration
FRAME = 320  # 20 ms


@pytest.fixture(scope="module")
def app(digits_app):
    return digits_app


def post(app, audio: np.ndarray, fields: dict | None = None, path: str = "/v1/audio/transcriptions"
         ) -> httpx.Response:
    return httpx.post(app.url + path, files={"file": ("a.wav", encode(audio))}, data=fields or {}, timeout=120)


@pytest.fixture(scope="module")
def misheard(app) -> list[tuple[np.ndarray, str, str]]:
    """Noisy utterances the served model gets wrong without keyterms: (audio, what was said, what it heard)."""
    out = []
    for audio, said in noisy_heldout():
        heard = post(app, audio).json()["text"]
        if heard != said:
            out.append((audio, said, heard))
    assert len(out) >= 12, "the noisy set should trip the model up"
    return out


def test_boosting_the_spoken_phrase_fixes_what_the_model_misheard(app, misheard):
    fixed = [post(app, audio, {"keyterms": said}).json()["text"] == said for audio, said, _ in misheard]
    print(f"keyterms over HTTP: {sum(fixed)} of {len(misheard)} misheard utterances now exact")
    assert sum(fixed) >= 0.6 * len(misheard)
    audio, said, _ = misheard[0]  # keyterms[] and several terms; the legacy route
    both = {"keyterms[]": [said, "four two"], "keyterms_boost": "1.0"}
    assert post(app, audio, both).status_code == 200
    assert post(app, audio, {"keyterms": said}, path="/transcribe").json()["text"] == post(
        app, audio, {"keyterms": said}).json()["text"]


def test_concurrent_requests_with_and_without_keyterms_each_get_their_own_result(app, misheard):
    """Requests boosting a phrase nobody said share the Transcriber's batches with plain requests: each plain one
    gets exactly what it gets alone."""
    audios = [audio for audio, _, _ in misheard[:8]]
    alone = [post(app, audio).json()["text"] for audio in audios]
    transcriber = app.deployment("Transcriber")
    before = transcriber.stats.remote().result()

    async def everyone() -> list[str]:
        async with httpx.AsyncClient(timeout=180) as client:
            async def one(index: int) -> str:
                fields = {"keyterms": "nine nine nine nine", "keyterms_boost": "3"} if index % 2 else {}
                response = await client.post(app.url + "/v1/audio/transcriptions", data=fields,
                                             files={"file": ("a.wav", encode(audios[index // 2]))})
                return response.json()["text"]
            return await asyncio.gather(*[one(i) for i in range(2 * len(audios))])

    texts = asyncio.run(everyone())
    after = transcriber.stats.remote().result()
    assert texts[0::2] == alone
    shared = {size: count - before["batch_sizes"].get(size, 0) for size, count in after["batch_sizes"].items()}
    assert any(size > 1 and count > 0 for size, count in shared.items()), "they shared batches"


@pytest.mark.parametrize("fields, status, says", [
    ({"keyterms": "nine zebra"}, 400, "cannot spell 1 keyterm(s): 'nine zebra'"),
    ({"keyterms": ["one", " "]}, 400, "keyterms[1] is empty"),
    ({"keyterms": "x" * 51}, 400, "the limit is 50"),
    ({"keyterms": [f"{i}" for i in range(1001)]}, 400, "1001 keyterms sent; the limit is 1000"),
    ({"keyterms": "one", "keyterms_boost": "9"}, 400, "keyterms_boost must be a number in (0, 3]"),
])
def test_bad_keyterms_get_a_400_that_names_them(app, fields, status, says):
    response = post(app, np.zeros(SAMPLE_RATE, np.float32), fields)
    assert response.status_code == status and says in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "invalid_keyterms"


def test_the_handle_takes_keyterms(app, misheard):
    audio, said, heard = misheard[1]
    handle = app.handle()
    assert handle.transcribe.remote(encode(audio)).result().text == heard
    assert handle.transcribe.remote(encode(audio), keyterms=[said]).result().text == post(
        app, audio, {"keyterms": said}).json()["text"]


# ---------------------------------------------------------------------------------------------- streams

async def stream(app, audio: np.ndarray, config: dict, controls: dict[int, dict] | None = None) -> list[dict]:
    """``audio`` in 20 ms frames at 4x real time, each control sent after the sample offset it is keyed by."""
    pending = sorted((controls or {}).items())
    async with websockets.connect(app.url.replace("http", "ws") + "/v1/audio/stream", max_size=None) as ws:
        await ws.send(json.dumps(config))
        for start in range(0, len(audio), FRAME):
            await ws.send(float_to_pcm16(audio[start:start + FRAME]))
            while pending and pending[0][0] <= start + FRAME:
                await ws.send(json.dumps(pending.pop(0)[1]))
            await asyncio.sleep(FRAME / SAMPLE_RATE / 4)
        await ws.send(json.dumps({"type": "end"}))
        events = [json.loads(m) async for m in ws]
        assert ws.close_code == 1000, events[-2:]
    return events


def spoken_with_pauses(utterances: list[np.ndarray]) -> np.ndarray:
    quiet = np.zeros(SAMPLE_RATE, np.float32)
    return np.concatenate([piece for u in utterances for piece in (u, quiet)])


def test_a_stream_boosts_its_keyterms_and_changes_them_mid_stream(app, misheard):
    (first, said_first, _), (second, _, _) = misheard[2], misheard[3]
    audio = spoken_with_pauses([first, second])
    switch = len(first) + SAMPLE_RATE // 2  # in the pause after the first utterance
    events = asyncio.run(stream(app, audio, {"keyterms": [said_first], "partials": False}, {
        switch - 100: {"type": "configure", "keyterms": ["nine", "zebra"]},  # refused: the stream goes on
        switch: {"type": "configure", "keyterms": []}}))
    finals = [e for e in events if e["type"] == "final"]
    errors = [e for e in events if e["type"] == "error"]

    def offline(final: dict, fields: dict) -> str:  # the model over the final's span, as one segment
        span = audio[int(round(final["start"] * SAMPLE_RATE)):int(round(final["end"] * SAMPLE_RATE))]
        return post(app, span, {**fields, "vad": "false"}).json()["text"]

    assert len(finals) == 2 and finals[0]["end"] * SAMPLE_RATE < switch < finals[1]["start"] * SAMPLE_RATE
    assert finals[0]["text"] == offline(finals[0], {"keyterms": said_first})
    assert finals[1]["text"] == offline(finals[1], {}), "keyterms: [] ends the boosting"
    assert len(errors) == 1 and errors[0]["param"] == "keyterms" and "'zebra'" in errors[0]["message"]
    assert events[-1]["type"] == "done"


def test_a_stream_with_unspellable_keyterms_is_refused_with_the_reason(app):
    async def opened() -> tuple[dict, int]:
        async with websockets.connect(app.url.replace("http", "ws") + "/v1/audio/stream") as ws:
            await ws.send(json.dumps({"keyterms": ["zebra"]}))
            message = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return message, ws.close_code

    message, code = asyncio.run(opened())
    assert message["code"] == "invalid_keyterms" and "'zebra'" in message["message"] and code == 1008


def test_realtime_sessions_and_deepgram_clients_boost_keyterms(app, misheard):
    from openai import AsyncOpenAI

    audio, said, _ = misheard[4]
    expected = post(app, audio, {"keyterms": said}).json()["text"]

    async def realtime() -> tuple[str, dict]:
        client = AsyncOpenAI(base_url=app.url + "/v1", api_key="unused")
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
            await connection.send({"type": "session.update", "session": {"type": "transcription", "audio": {
                "input": {"transcription": {"keyterms": ["zebra"]}}}}})
            refused = None
            async for event in connection:
                if event.type == "error":
                    refused = event.error.model_dump()
                    break
            await connection.send({"type": "session.update", "session": {"type": "transcription", "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "turn_detection": None,
                          "transcription": {"keyterms": [said]}}}}})
            await connection.input_audio_buffer.append(audio=_b64(float_to_pcm16(audio)))
            await connection.input_audio_buffer.commit()
            async for event in connection:
                if event.type == "conversation.item.input_audio_transcription.completed":
                    return event.transcript, refused
        raise AssertionError("no transcript")

    text, refused = asyncio.run(realtime())
    assert text == expected
    assert refused["param"] == "session.audio.input.transcription.keyterms" and "'zebra'" in refused["message"]

    listen = httpx.post(app.url + "/v1/listen", params=[("keyterm", said), ("model", "nova-3")],
                        content=encode(audio), headers={"Content-Type": "audio/wav"}, timeout=120).json()
    assert listen["results"]["channels"][0]["alternatives"][0]["transcript"] == expected


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
