"""OpenAI's Realtime transcription protocol, driven by the official ``openai`` SDK (unmodified), against the served
graph with the trained digits model."""

from __future__ import annotations

import asyncio
import base64
import random

import httpx
import numpy as np
import pytest
import soxr

from deployments.speech.settings import StreamSettings, VadSettings
from deployments.speech.vad import SpeechDetector
from tests.helpers import (SAMPLE_RATE, assert_own_results, encode, long_recording, normalise, phrase_recording,
                           random_phrases)

pytestmark = pytest.mark.integration
CHUNK_MS = 100  # what realtime clients send
SERVER_VAD = {"type": "server_vad"}


@pytest.fixture(scope="module")
def app(digits_app):
    return digits_app


def pcm24k_chunks(audio: np.ndarray) -> list[str]:
    """16 kHz float audio as OpenAI's default input: base64 PCM16 at 24 kHz, in 100 ms chunks."""
    at_24k = soxr.resample(audio, SAMPLE_RATE, 24000).astype(np.float32)
    data = (np.clip(at_24k, -1, 1) * 32767).astype("<i2").tobytes()
    step = 24000 * 2 * CHUNK_MS // 1000
    return [base64.b64encode(data[i:i + step]).decode() for i in range(0, len(data), step)]


def offline_text(app, audio: np.ndarray) -> str:
    return httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(audio))},
                      timeout=120).json()["text"]


async def realtime_session(app, audio: np.ndarray, session: dict, commit: bool = True) -> list:
    """Send ``audio`` through one session; every event until the server has handled the commit (a session.update
    sent after it is answered only then: events are handled in order) and every committed item has its result."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=app.url + "/v1", api_key="unused")
    events = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        await connection.session.update(session={"type": "transcription", **session})
        for chunk in pcm24k_chunks(audio):
            await connection.input_audio_buffer.append(audio=chunk)
        if commit:
            await connection.input_audio_buffer.commit()
        await connection.session.update(session={"type": "transcription"})  # the marker
        updates, committed, answered = 0, set(), set()
        async for event in connection:
            events.append(event)
            updates += event.type == "session.updated"
            if event.type == "input_audio_buffer.committed":
                committed.add(event.item_id)
            elif event.type.startswith("conversation.item.input_audio_transcription.") and \
                    event.type.rsplit(".", 1)[1] in ("completed", "failed"):
                answered.add(event.item_id)
            if updates == 2 and committed == answered:  # a manual commit's result may come after the marker
                break
    return events


def of_type(events, name: str) -> list:
    return [e for e in events if e.type == name]


def offline_turns(audio: np.ndarray) -> list[tuple[float, float]]:
    """The offline VAD's segments joined on pauses shorter than the end of a turn (the turns). The pause counts from
    the end of speech: padded segments apart have two pads of silence between them besides their gap."""
    vad = VadSettings(merge_up_to_s=0)
    segments = SpeechDetector(vad).segments(audio)
    gap = StreamSettings().end_of_utterance_ms * SAMPLE_RATE // 1000
    pads = 2 * vad.speech_pad_ms * SAMPLE_RATE // 1000
    turns: list[list[int]] = []
    for s in segments:
        if turns and (s.start == turns[-1][1] or s.start - turns[-1][1] + pads < gap):
            turns[-1][1] = s.end
        else:
            turns.append([s.start, s.end])
    return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in turns]


def test_server_vad_gives_one_completed_per_utterance_like_the_offline_path(app):
    rng = random.Random(77)
    recording = long_recording(random_phrases(rng, 10), rng, phrase_gap_s=(1.2, 2.0))
    events = asyncio.run(realtime_session(app, recording.audio, {"audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": SERVER_VAD}}}))
    assert events[0].type == "session.created" and events[0].session.type == "transcription"
    started, stopped = of_type(events, "input_audio_buffer.speech_started"), of_type(
        events, "input_audio_buffer.speech_stopped")
    committed = of_type(events, "input_audio_buffer.committed")
    completed = of_type(events, "conversation.item.input_audio_transcription.completed")
    assert len(started) == len(stopped) == len(committed) == len(completed) == len(recording.phrases)
    assert [e.item_id for e in started] == [e.item_id for e in committed] == [e.item_id for e in completed]
    assert [e.previous_item_id for e in committed] == [None] + [e.item_id for e in committed[:-1]]
    # turn edges within 100 ms of the offline VAD's
    turns = offline_turns(recording.audio)
    assert len(turns) == len(started)
    for (start, end), s, e in zip(turns, started, stopped):
        assert abs(s.audio_start_ms / 1000 - start) <= 0.1 and abs(e.audio_end_ms / 1000 - end) <= 0.1
    # each transcript is what the offline path gives for that utterance
    same = [normalise(event.transcript) == normalise(offline_text(app, recording.audio[
        int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)])) for event, (start, end) in zip(completed, turns)]
    assert sum(same) / len(same) >= 0.98
    assert all(e.logprobs is None for e in completed), "no logprobs unless asked for"
    # deltas (from partials) only ever extend a turn's text, and come before its completed event
    for item in completed:
        deltas = [e.delta for e in of_type(events, "conversation.item.input_audio_transcription.delta")
                  if e.item_id == item.item_id]
        assert item.transcript.startswith("".join(deltas))


def test_a_session_paced_in_real_time_completes_its_last_turn_on_commit(app):
    from deployments.speech.audio import float_to_pcm16
    from deployments.stream_client import realtime_pcm

    recording = phrase_recording(["two", "zero", "five"], voice=2, tail_s=0.2)
    at_24k = soxr.resample(recording.audio, SAMPLE_RATE, 24000).astype(np.float32)
    outcome = asyncio.run(realtime_pcm(app.url.replace("http", "ws") + "/v1/realtime", float_to_pcm16(at_24k),
                                       24000, realtime=True))
    completed = [e for e in outcome.events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert not [e for e in outcome.events if e["type"] == "error"]
    assert [normalise(e["transcript"]) for e in completed] == [recording.text]


def test_manual_commits_and_logprobs(app):
    first = phrase_recording(["three", "one", "four"], voice=1)
    events = asyncio.run(realtime_session(app, first.audio, {
        "audio": {"input": {"turn_detection": None}}, "include": ["item.input_audio_transcription.logprobs"]}))
    assert of_type(events, "session.updated")[0].session.audio.input.turn_detection is None
    assert not of_type(events, "input_audio_buffer.speech_started")
    [committed] = of_type(events, "input_audio_buffer.committed")
    [completed] = of_type(events, "conversation.item.input_audio_transcription.completed")
    assert completed.item_id == committed.item_id
    assert normalise(completed.transcript) == normalise(offline_text(app, first.audio)) == first.text
    assert completed.logprobs and all(p.logprob <= 0 for p in completed.logprobs)
    assert "".join(p.token for p in completed.logprobs).strip() == completed.transcript
    assert all(bytes(p.bytes).decode() == p.token for p in completed.logprobs)


def test_eight_concurrent_sessions_get_their_own_transcripts(app):
    rng = random.Random(8)
    recordings = [phrase_recording(words, voice=i % 4, rng=rng) for i, words in enumerate(random_phrases(rng, 8))]

    async def everyone():
        return await asyncio.gather(*[realtime_session(app, r.audio, {"audio": {"input": {
            "turn_detection": SERVER_VAD}}}) for r in recordings])

    results = asyncio.run(everyone())
    texts = [normalise(" ".join(e.transcript for e in of_type(events, "conversation.item.input_audio_transcription"
                                                                            ".completed"))) for events in results]
    assert_own_results([r.text for r in recordings], texts)


@pytest.mark.parametrize("event,code,param", [
    ({"type": "input_audio_buffer.append", "audio": "not base64!!"}, "invalid_base64", "audio"),
    ({"type": "response.create"}, "unknown_event", "type"),
    ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 12345}}}}}, "invalid_value", "session.audio.input.format.rate"),
    ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "threshold": 2}}}}}, "invalid_value",
     "session.audio.input.turn_detection.threshold"),
    ({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(2 << 20)).decode()},
     "append_too_large", None),
    ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
])
def test_bad_events_get_an_error_and_the_session_stays_usable(app, event, code, param):
    from openai import AsyncOpenAI

    speech = phrase_recording(["seven", "two"], voice=2)

    async def run():
        client = AsyncOpenAI(base_url=app.url + "/v1", api_key="unused")
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
            await connection.session.update(session={"type": "transcription",
                                                     "audio": {"input": {"turn_detection": None}}})
            await connection.send({**event, "event_id": "evt_bad"})
            errors, received = [], []
            async for message in connection:
                received.append(message)
                if message.type == "error":
                    errors.append(message)
                    break
            # still usable: a good utterance goes through
            for chunk in pcm24k_chunks(speech.audio):
                await connection.input_audio_buffer.append(audio=chunk)
            await connection.input_audio_buffer.commit()
            async for message in connection:
                if message.type == "conversation.item.input_audio_transcription.completed":
                    return errors, message
        return errors, None

    errors, completed = asyncio.run(run())
    assert len(errors) == 1 and errors[0].error.code == code and errors[0].error.param == param
    assert errors[0].error.event_id == "evt_bad" and errors[0].error.message
    assert completed is not None and normalise(completed.transcript) == speech.text


def test_conversation_sessions_are_refused_with_a_reason(app):
    import json

    import websockets

    async def run():
        async with websockets.connect(app.url.replace("http", "ws") + "/v1/realtime?model=x") as ws:
            message = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return message, ws.close_code

    message, code = asyncio.run(run())
    assert message["type"] == "error" and "intent=transcription" in message["error"]["message"] and code == 1008


def test_commit_under_server_vad_ends_the_turn_now_and_semantic_vad_sets_the_pause(app):
    """A commit ends the open turn at once (the 2 s pause would not have), the session goes on; a commit with no
    turn open is not an error; semantic_vad's eagerness then sets the pause without ending the session's audio."""
    from openai import AsyncOpenAI

    first = phrase_recording(["four", "nine", "one"], voice=1, tail_s=0.3)
    second = phrase_recording(["eight", "two", "six"], voice=3, tail_s=0.3)
    pause = np.zeros(int(0.7 * SAMPLE_RATE), np.float32)
    third = np.concatenate([phrase_recording(["five", "zero"], voice=2, tail_s=0).audio, pause,
                            phrase_recording(["seven", "three"], voice=2, lead_s=0).audio, pause])

    async def run():
        client = AsyncOpenAI(base_url=app.url + "/v1", api_key="unused")
        events = []
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
            await connection.session.update(session={"type": "transcription", "audio": {"input": {
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 2000}}}})
            await connection.input_audio_buffer.commit()  # nothing open yet: ignored
            for audio in (first.audio, second.audio):
                for chunk in pcm24k_chunks(audio):
                    await connection.input_audio_buffer.append(audio=chunk)
                await connection.input_audio_buffer.commit()
            await connection.session.update(session={"type": "transcription", "audio": {"input": {
                "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}})
            for chunk in pcm24k_chunks(third):
                await connection.input_audio_buffer.append(audio=chunk)
            completed = 0
            async for event in connection:
                events.append(event)
                completed += event.type == "conversation.item.input_audio_transcription.completed"
                if completed == 4 or event.type == "error":
                    break
        return events

    events = asyncio.run(asyncio.wait_for(run(), 120))
    assert not of_type(events, "error")
    transcripts = [normalise(e.transcript) for e in of_type(
        events, "conversation.item.input_audio_transcription.completed")]
    assert transcripts == [first.text, second.text, "five zero", "seven three"]
    updated = of_type(events, "session.updated")[-1]
    assert updated.session.audio.input.turn_detection.type == "semantic_vad"
