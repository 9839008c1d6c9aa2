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
    # (in real time, as a call sends it: at 4x a busy machine's partials can come back after their turn's final,
    # which drops them, and this test is about seeing interim results)
    # two fluent utterances (the second held-out one pauses 320 ms mid-phrase, which endpointing=300 may rightly end
    # a turn on)
    said = utterances(1, start=0) + utterances(1, start=2)
    audio = np.concatenate(said)
    messages = asyncio.run(listen(app, audio, "encoding=linear16&sample_rate=16000&channels=1&interim_results=true"
                                              "&endpointing=300&vad_events=true&utterance_end_ms=1000&model=nova-3"
                                              "&language=en-US&punctuate=true&smart_format=true", speed=1.0))
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


# ---------------------------------------------------------------------------------------------- the real plugins

def pcm16(audio: np.ndarray) -> bytes:
    return float_to_pcm16(audio)


def check_against_offline(app, audio: np.ndarray, transcripts: list[str]) -> None:
    """The plugin's transcripts, joined, are the offline path's for the same audio, word for word."""
    assert normalise(" ".join(transcripts)) == normalise(offline_text(app, audio)), transcripts


@pytest.fixture(scope="module")
def turn():
    """One held-out utterance with quiet around it, and where its speech ends (samples). A fluent one (no quiet inside
    over 80 ms): the plugins' own turn rules (LiveKit's Realtime plugin asks for a 350 ms pause) must not split it,
    which the set's pausing utterances (240-620 ms mid-phrase) rightly are."""
    audio, _ = heldout()["utterances"][0]
    quiet = np.random.default_rng(2).standard_normal(SAMPLE_RATE).astype(np.float32) * 1e-3
    return np.concatenate([quiet[:SAMPLE_RATE // 2], audio, quiet]), SAMPLE_RATE // 2 + len(audio)


def test_livekit_openai_stt_over_http(app, turn):
    from livekit import rtc
    from livekit.plugins import openai as livekit_openai

    audio, _ = turn

    async def run() -> str:
        stt = livekit_openai.STT(base_url=app.url + "/v1", api_key="unused")
        frame = rtc.AudioFrame(data=pcm16(audio), sample_rate=SAMPLE_RATE, num_channels=1,
                               samples_per_channel=len(audio))
        event = await stt.recognize(frame)
        return event.alternatives[0].text

    check_against_offline(app, audio, [asyncio.run(run())])


def livekit_frames(audio: np.ndarray, frame_samples: int = FRAME):
    from livekit import rtc

    for start in range(0, len(audio), frame_samples):
        piece = audio[start:start + frame_samples]
        yield rtc.AudioFrame(data=pcm16(piece), sample_rate=SAMPLE_RATE, num_channels=1,
                             samples_per_channel=len(piece))


async def livekit_stream(stt, audio: np.ndarray, speed: float = 4.0) -> list[str]:
    """Push the audio through ``stt.stream()`` (paced), end the input, and collect final transcripts until the turn's
    final has come (a plugin that pools its socket keeps the stream open after the input ends)."""
    from livekit.agents import stt as agents_stt

    stream = stt.stream()
    finals: list[str] = []

    async def read() -> None:
        async for event in stream:
            if event.type == agents_stt.SpeechEventType.FINAL_TRANSCRIPT and event.alternatives[0].text:
                finals.append(event.alternatives[0].text)

    reader = asyncio.create_task(read())
    for frame in livekit_frames(audio):
        stream.push_frame(frame)
        await asyncio.sleep(FRAME / SAMPLE_RATE / speed)
    stream.end_input()
    for _ in range(600):
        if finals or reader.done():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # any later final of the same audio
    await stream.aclose()
    reader.cancel()
    return finals


def test_livekit_openai_stt_realtime_with_server_turns(app, turn):
    import aiohttp
    from livekit.plugins import openai as livekit_openai

    audio, _ = turn

    async def run() -> list[str]:
        async with aiohttp.ClientSession() as session:
            stt = livekit_openai.STT(base_url=app.url + "/v1", api_key="unused", use_realtime=True)
            stt._session = session  # (outside an agent job there is no shared HTTP context)
            try:
                return await livekit_stream(stt, audio)
            finally:
                await stt.aclose()

    check_against_offline(app, audio, asyncio.run(run()))


def test_livekit_deepgram_stt_with_server_endpointing_and_recognize(app, turn):
    import aiohttp
    from livekit.plugins import deepgram as livekit_deepgram

    audio, _ = turn

    async def run() -> tuple[list[str], str]:
        async with aiohttp.ClientSession() as session:
            stt = livekit_deepgram.STT(base_url=app.url + "/v1/listen", api_key="unused", http_session=session)
            streamed = await livekit_stream(stt, audio)
            frame = next(livekit_frames(audio, len(audio)))
            recognised = (await stt.recognize(frame)).alternatives[0].text
            return streamed, recognised

    streamed, recognised = asyncio.run(run())
    check_against_offline(app, audio, streamed)
    check_against_offline(app, audio, [recognised])


async def pipecat_transcripts(service, audio: np.ndarray, speech_end: int, speed: float = 4.0) -> list[str]:
    """A Pipecat pipeline of just the STT service and a collector: the audio as 20 ms input frames (paced), the
    user's VAD saying speech started and, 200 ms after the speech ends, stopped; the final transcripts."""
    from pipecat.frames.frames import (EndFrame, InputAudioRawFrame, TranscriptionFrame, VADUserStartedSpeakingFrame,
                                       VADUserStoppedSpeakingFrame)
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams, PipelineTask
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    texts: list[str] = []

    class Collect(FrameProcessor):
        async def process_frame(self, frame, direction: FrameDirection):
            await super().process_frame(frame, direction)
            if isinstance(frame, TranscriptionFrame):
                texts.append(frame.text)
            await self.push_frame(frame, direction)

    task = PipelineTask(Pipeline([service, Collect()]), params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE),
                        enable_rtvi=False)

    async def feed() -> None:
        await asyncio.sleep(0.5)  # the service connects on the pipeline's start
        stop_at = speech_end + SAMPLE_RATE // 5
        await task.queue_frame(VADUserStartedSpeakingFrame())
        for start in range(0, len(audio), FRAME):
            await task.queue_frame(InputAudioRawFrame(audio=pcm16(audio[start:start + FRAME]),
                                                      sample_rate=SAMPLE_RATE, num_channels=1))
            if start < stop_at <= start + FRAME:
                await task.queue_frame(VADUserStoppedSpeakingFrame())
            await asyncio.sleep(FRAME / SAMPLE_RATE / speed)
        for _ in range(200):  # the transcript of the turn, then the end
            if texts:
                break
            await asyncio.sleep(0.1)
        await task.queue_frame(EndFrame())

    await asyncio.wait_for(asyncio.gather(PipelineRunner(handle_sigint=False).run(task), feed()), 120)
    return texts


def test_pipecat_openai_stt_over_http(app, turn):
    from pipecat.services.openai.stt import OpenAISTTService

    audio, speech_end = turn
    texts = asyncio.run(pipecat_transcripts(OpenAISTTService(base_url=app.url + "/v1", api_key="unused"), audio,
                                            speech_end))
    check_against_offline(app, audio, texts)


def test_pipecat_openai_realtime_stt_with_its_own_commits(app, turn):
    from pipecat.services.openai.stt import OpenAIRealtimeSTTService

    audio, speech_end = turn
    service = OpenAIRealtimeSTTService(base_url=ws_base(app) + "/v1/realtime", api_key="unused")
    check_against_offline(app, audio, asyncio.run(pipecat_transcripts(service, audio, speech_end)))


def test_pipecat_deepgram_stt_finalizes_at_its_vads_stop(app, turn):
    from pipecat.services.deepgram.stt import DeepgramSTTService

    audio, speech_end = turn
    service = DeepgramSTTService(base_url=app.url, api_key="unused")
    check_against_offline(app, audio, asyncio.run(pipecat_transcripts(service, audio, speech_end)))
