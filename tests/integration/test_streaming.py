"""Live WebSocket streaming through the served graph with the trained digits model."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import numpy as np
import pytest
import websockets

from deployments.speech.audio import float_to_pcm16
from deployments.speech.model_queue import PRIORITIES
from deployments.stream_client import stream_pcm
from bench.run import every_replicas_stats
from tests.helpers import (SAMPLE_RATE, Recording, assert_own_results, encode, long_recording, normalise,
                           phrase_recording, random_phrases, word_errors)

pytestmark = pytest.mark.integration
FRAME_S = 0.08


@pytest.fixture(scope="module")
def app(digits_app):
    return digits_app


def ws_url(app, path: str = "/v1/audio/stream") -> str:
    return app.url.replace("http://", "ws://") + path


async def stream(url: str, audio: np.ndarray, config: dict | None = None, frame_bytes: int = 1024,
                 finish: bool = True) -> tuple[list[dict], int | None]:
    outcome = await stream_pcm(url, float_to_pcm16(audio), config, frame_bytes, finish=finish)
    return outcome.events, outcome.close_code


def finals(events):
    return [e for e in events if e["type"] == "final"]


def test_streamed_finals_match_the_offline_transcript(app):
    rng = random.Random(55)
    recording = long_recording(random_phrases(rng, 20), rng, phrase_gap_s=(0.6, 2.5))
    offline = httpx.post(app.url + "/v1/audio/transcriptions", timeout=600,
                         files={"file": ("a.wav", encode(recording.audio))},
                         data={"response_format": "verbose_json", "timestamp_granularities[]": "word"}).json()
    events, code = asyncio.run(stream(ws_url(app), recording.audio, {"sample_rate": 16000, "timestamps": True}))
    assert events[-1] == {"type": "done"} and code == 1000
    got = finals(events)
    assert [e["id"] for e in got] == list(range(len(got))) and len(got) >= 10
    matches, differences, errors = 0, [], []
    for event in got:
        inside = [w for w in offline["words"] if event["start"] <= (w["start"] + w["end"]) / 2 <= event["end"]]
        matches += normalise(event["text"]) == normalise(" ".join(w["word"] for w in inside))
        for streamed, reference in zip(event["words"], inside):
            differences += [abs(streamed["start"] - reference["start"]), abs(streamed["end"] - reference["end"])]
            truth = min(recording.words, key=lambda w: abs(w[1] - streamed["start"]))
            errors += [abs(streamed["start"] - truth[1]), abs(streamed["end"] - truth[2])]
    assert matches / len(got) >= 0.98
    # Streamed and offline times are each within one frame of the truth (>= 95 %); they see different context (a
    # final is one utterance, offline segments merge up to 12 s), so their errors can add up against each other.
    assert np.mean(np.array(errors) <= FRAME_S) >= 0.95
    assert np.mean(np.array(differences) <= FRAME_S) >= 0.9


def test_a_stream_paced_in_real_time_ends_with_its_last_utterance(app):
    """Paced, the end message comes after every frame was read, so the last VAD step carries no audio."""
    recording = phrase_recording(["six", "one", "eight"], voice=3, tail_s=0.2)
    outcome = asyncio.run(stream_pcm(ws_url(app), float_to_pcm16(recording.audio), {"partials": True},
                                     frame_bytes=3200, realtime=True))
    assert outcome.events[-1] == {"type": "done"} and outcome.close_code == 1000
    assert normalise(" ".join(e["text"] for e in finals(outcome.events))) == recording.text


def test_the_ws_alias_and_other_sample_rates(app):
    import soxr

    recording = phrase_recording(["four", "two", "seven", "one"], voice=2)
    at_8k = soxr.resample(recording.audio, SAMPLE_RATE, 8000).astype(np.float32)
    events, code = asyncio.run(stream(ws_url(app, "/ws"), at_8k, {"sample_rate": 8000}))
    # the same 8 kHz audio offline (decoded and resampled by the HTTP path) gives the same words
    offline = httpx.post(app.url + "/v1/audio/transcriptions", timeout=120,
                         files={"file": ("a.wav", encode(at_8k, sample_rate=8000))}).json()["text"]
    assert code == 1000 and normalise(" ".join(e["text"] for e in finals(events))) == normalise(offline)


def test_sixteen_concurrent_streams_get_their_own_results(app):
    rng = random.Random(16)
    recordings = [long_recording(random_phrases(rng, 2, 4, 6), rng, phrase_gap_s=(1.0, 1.5)) for _ in range(16)]

    async def everyone():
        return await asyncio.gather(*[stream(ws_url(app), r.audio, {"partials": False}) for r in recordings])

    results = asyncio.run(everyone())
    texts = []
    for (events, code), recording in zip(results, recordings):
        got = finals(events)
        assert code == 1000 and [e["id"] for e in got] == list(range(len(got)))
        assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(got, got[1:]))  # in order
        texts.append(normalise(" ".join(e["text"] for e in got)))
    assert_own_results([r.text for r in recordings], texts)


def test_real_time_streams_step_together_one_segmenter_call_a_tick(app):
    """Concurrent real-time streams (20 ms frames) step on the Ingress's shared clock: their steps of one tick go
    to the Segmenter as one call (one call per stream per step before), and each stream still gets its own words."""
    rng = random.Random(6)
    recordings = [phrase_recording(words, voice=i % 4, rng=rng, tail_s=0.8)
                  for i, words in enumerate(random_phrases(rng, 6, 3, 5))]

    def totals() -> dict[str, tuple[int, int]]:
        return {replica: (stats["live_steps"], stats["live_batches"])
                for replica, stats in every_replicas_stats(app.name, "Segmenter").items()}

    async def everyone():
        return await asyncio.gather(*[stream_pcm(ws_url(app), float_to_pcm16(r.audio), {"partials": False},
                                                 frame_bytes=640, realtime=True) for r in recordings])

    before = totals()
    outcomes = asyncio.run(everyone())
    after = totals()
    steps, calls = (sum(after[r][k] - before.get(r, (0, 0))[k] for r in after) for k in (0, 1))
    assert all(o.close_code == 1000 for o in outcomes)
    assert_own_results([r.text for r in recordings],
                       [normalise(" ".join(e["text"] for e in finals(o.events))) for o in outcomes])
    print(f"6 real-time streams: {steps} VAD steps in {calls} Segmenter calls")
    # (every stream stepped; one call per step reads about 1: under load a stream behind steps more audio at once)
    assert steps >= 6 * 10 and steps >= 2.5 * calls, (steps, calls)


def test_partials_arrive_before_the_final_of_a_long_utterance(app):
    rng = random.Random(4)
    words = [rng.choice(["one", "two", "three", "four", "five", "six"]) for _ in range(14)]
    recording = phrase_recording(words, voice=3, rng=rng, word_gap_s=(0.0, 0.0))  # one unbroken utterance
    assert recording.duration > 4
    # paced at twice real time (a client streaming as fast as it can gets fewer partials: their wall-clock gate)
    events = asyncio.run(converse(app, recording.audio, {"partials": True}, speed=2.0))
    kinds = [(e["type"], e.get("id")) for e in events if e["type"] in ("partial", "final")]
    first_final = kinds.index(("final", 0))
    assert kinds[:first_final].count(("partial", 0)) >= 2
    partials = [e["text"] for e in events if e["type"] == "partial" and e["id"] == 0]
    assert word_errors(finals(events)[0]["text"].lower(), partials[-1].lower()) <= 3, "partials converge"


def test_end_flushes_speech_without_trailing_silence(app):
    recording = phrase_recording(["nine", "eight", "seven"], voice=1, tail_s=0.0)
    events, code = asyncio.run(stream(ws_url(app), recording.audio))
    assert code == 1000 and events[-1]["type"] == "done"
    assert normalise(" ".join(e["text"] for e in finals(events))) == recording.text


def test_handle_stream_gives_the_same_events(app):
    rng = random.Random(21)
    recording = long_recording(random_phrases(rng, 3), rng, phrase_gap_s=(1.0, 1.5))
    handle = app.handle().options(stream=True)
    events = [e for e in handle.transcribe_stream.remote(recording.audio, sample_rate=SAMPLE_RATE, chunk_ms=32)]
    ws_events, _ = asyncio.run(stream(ws_url(app), recording.audio, {"partials": True}))
    assert events[-1] == {"type": "done"}
    assert [(e["text"], e["start"], e["end"]) for e in finals(events)] == [
        (e["text"], e["start"], e["end"]) for e in finals(ws_events)]


@pytest.mark.parametrize("config,frame,code,needle", [
    ({"sample_rate": 16000, "encoding": "opus"}, None, 1008, "encoding"),
    ({"sample_rate": 16000, "volume": 3}, None, 1008, "volume"),
    ({"sample_rate": 16000}, b"\x01\x02\x03", 1007, "even number of bytes"),
    ({"sample_rate": 16000}, "hello", 1007, '{"type": "end"}'),
])
def test_bad_config_and_frames_get_an_error_and_a_close(app, config, frame, code, needle):
    async def run():
        async with websockets.connect(ws_url(app)) as ws:
            await ws.send(json.dumps(config))
            if frame is not None:
                await ws.send(frame)
            message = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return message, ws.close_code

    message, close_code = asyncio.run(run())
    assert message["type"] == "error" and needle in message["message"] and close_code == code


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


def test_a_disconnect_mid_utterance_leaves_nothing_behind(app):
    ingress = app.deployment("Ingress")
    baseline = ingress.stream_stats.remote().result()
    recording = phrase_recording(["one", "two", "three", "four", "five", "six", "seven"], voice=0,
                                 word_gap_s=(0.0, 0.0))

    async def leave_early():
        async with websockets.connect(ws_url(app)) as ws:
            await ws.send(json.dumps({"partials": True}))
            data = float_to_pcm16(recording.audio)
            for offset in range(0, len(data) * 2 // 3, 1024):
                await ws.send(data[offset:offset + 1024])
            # gone without {"type": "end"}, mid-utterance

    asyncio.run(leave_early())
    settled = wait_for(lambda: (lambda s: s if s["active_streams"] == 0 and s["tasks"] <= baseline["tasks"]
                                else None)(ingress.stream_stats.remote().result()))
    assert settled, ingress.stream_stats.remote().result()


def test_too_many_streams_are_refused_with_a_reason(app):
    async def run():
        held = [await websockets.connect(ws_url(app)) for _ in range(20)]
        try:
            for ws in held:
                await ws.send(json.dumps({"partials": False}))
            await asyncio.sleep(0.5)
            async with websockets.connect(ws_url(app)) as extra:
                message = json.loads(await extra.recv())
                with pytest.raises(websockets.ConnectionClosed):
                    await extra.recv()
                return message, extra.close_code
        finally:
            for ws in held:
                await ws.close()

    message, code = asyncio.run(run())
    assert message["type"] == "error" and "Too many concurrent streams" in message["message"] and code == 1013


# ---------------------------------------------------------------------------------------------- live turns

async def converse(app, audio: np.ndarray, config: dict, controls: dict[float, dict] | None = None,
                   speed: float = 2.0, frame_s: float = 0.02) -> list[dict]:
    """Stream ``audio`` in ``frame_s`` PCM16 frames at ``speed`` x real time; each control message is sent once the
    audio up to its time (seconds) is sent; then ``end``. Every event, until the server closes."""
    pending = sorted((controls or {}).items())
    frame = int(frame_s * SAMPLE_RATE)
    async with websockets.connect(ws_url(app), max_size=None) as ws:
        await ws.send(json.dumps(config))

        async def send() -> None:
            for start in range(0, len(audio), frame):
                await ws.send(float_to_pcm16(audio[start:start + frame]))
                while pending and pending[0][0] * SAMPLE_RATE <= start + frame:
                    await ws.send(json.dumps(pending.pop(0)[1]))
                await asyncio.sleep(frame_s / speed)
            for _, message in pending:
                await ws.send(json.dumps(message))
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        events = []
        try:
            async for message in ws:
                events.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass
        await sender
        assert ws.close_code == 1000, events[-3:]
    return events


def offline_text(app, audio: np.ndarray, start: float, end: float) -> str:
    """What the offline path gives for ``audio[start:end]`` (seconds)."""
    piece = audio[int(round(start * SAMPLE_RATE)):int(round(end * SAMPLE_RATE))]
    return httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(piece))},
                      timeout=120).json()["text"]


def two_phrases(gap_s: float, voice: int = 2) -> tuple[Recording, float]:
    """Two phrases ``gap_s`` apart (no pause inside either); returns the recording and where the first ends (s)."""
    rng = random.Random(int(gap_s * 1000) + voice)
    recording = long_recording([random_phrases(rng, 1, 3, 4)[0], random_phrases(rng, 1, 3, 4)[0]], rng, voice=voice,
                               phrase_gap_s=(gap_s, gap_s), word_gap_s=(0.0, 0.05), lead_s=0.4, tail_s=1.2)
    first_end = recording.words[len(recording.phrases[0].split()) - 1][2]
    return recording, first_end


def test_finals_with_the_first_pass_are_the_finals_without_it(app):
    rng = random.Random(18)
    recording = long_recording(random_phrases(rng, 4), rng, phrase_gap_s=(0.7, 1.3), tail_s=1.0)
    runs = [asyncio.run(converse(app, recording.audio, {"first_pass": first_pass, "partials": True}))
            for first_pass in (True, False)]
    with_first, without = ([(e["text"], e["start"], e["end"]) for e in finals(events)] for events in runs)
    assert with_first == without and len(with_first) >= 3
    assert normalise(" ".join(text for text, _, _ in with_first)) == recording.text


def test_finalize_in_a_short_pause_ends_the_turn_and_the_stream_goes_on(app):
    recording, first_end = two_phrases(gap_s=0.6)
    # without it the 0.6 s pause is inside one turn (end_of_utterance_ms 1000) ...
    joined = finals(asyncio.run(converse(app, recording.audio, {"end_of_utterance_ms": 1000})))
    assert [normalise(e["text"]) for e in joined] == [recording.text]
    # ... a finalize 200 ms after the first phrase ends it there, and the second phrase is the next turn
    events = asyncio.run(converse(app, recording.audio, {"end_of_utterance_ms": 1000},
                                  controls={first_end + 0.2: {"type": "finalize"}}))
    got = finals(events)
    assert [(e["id"], normalise(e["text"]), e.get("from_finalize", False)) for e in got] == [
        (0, recording.phrases[0], True), (1, recording.phrases[1], False)]
    assert got[0]["end"] <= got[1]["start"] and events[-1] == {"type": "done"}


def test_finalize_mid_speech_and_with_nothing_open(app):
    rng = random.Random(7)
    words = [rng.choice(["one", "two", "three", "four", "five", "six", "seven", "eight"]) for _ in range(10)]
    recording = phrase_recording(words, voice=4, rng=rng, word_gap_s=(0.0, 0.0), lead_s=0.6, tail_s=1.2)
    middle = (recording.words[4][2] + recording.words[5][1]) / 2  # between the 5th and 6th word
    events = asyncio.run(converse(app, recording.audio, {"end_of_utterance_ms": 500}, controls={
        0.2: {"type": "finalize"}, middle: {"type": "finalize"}}))
    assert events[0] == {"type": "nothing_to_finalize"}, "nothing was open 0.2 s in"
    got = finals(events)
    assert [e["id"] for e in got] == list(range(len(got))) and got[0].get("from_finalize") is True
    assert abs(got[0]["end"] - middle) < 0.1 and len(got) >= 2, "the turn ended at the finalize; the rest followed"
    assert all(a["end"] <= b["start"] for a, b in zip(got, got[1:])), "no audio in two turns"
    heard = normalise(" ".join(e["text"] for e in got)).split()
    assert abs(len(heard) - len(words)) <= 1 and word_errors(" ".join(words), " ".join(heard)) <= 2


def test_speech_that_resumes_after_a_short_pause_stays_one_turn_with_every_word(app):
    recording, _ = two_phrases(gap_s=0.3, voice=5)
    got = finals(asyncio.run(converse(app, recording.audio, {"end_of_utterance_ms": 600, "partials": True})))
    assert [normalise(e["text"]) for e in got] == [recording.text]


def test_turn_rules_change_mid_stream_and_bad_values_are_named(app):
    first, _ = two_phrases(gap_s=0.7, voice=1)
    second, _ = two_phrases(gap_s=0.7, voice=0)
    audio = np.concatenate([first.audio, second.audio])
    events = asyncio.run(converse(app, audio, {"end_of_utterance_ms": 1200}, controls={
        0.1: {"type": "configure", "end_of_utterance_ms": -5},
        first.duration: {"type": "configure", "end_of_utterance_ms": 300}}))
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["param"] == "end_of_utterance_ms" and errors[0]["code"] == "invalid_configure"
    # the first recording under 1200 ms: one turn; the second under 300 ms: its pause ends a turn
    assert [normalise(e["text"]) for e in finals(events)] == [first.text, *second.phrases]
    assert events[-1] == {"type": "done"}


def test_a_live_final_waits_for_at_most_one_batch_while_a_long_upload_runs(app):
    """A long file's segments queue in the Transcriber; a live turn's final goes ahead of them: at most the model
    call already running (a file call) starts between its arrival and its own call, and while live work is about
    the file's calls hold one segment each (stream.file_segments_per_call, auto on CPU), not a whole batch."""
    import threading

    transcriber = app.deployment("Transcriber")
    rng = random.Random(31)
    # long enough to outlast the conversation below (with 60 phrases the upload was sometimes done first, and the
    # check that it was still running failed)
    upload = long_recording(random_phrases(rng, 150, 4, 8), rng, phrase_gap_s=(0.3, 0.8))
    before = transcriber.stats.remote().result()
    done = threading.Event()

    def send_upload() -> None:
        httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(upload.audio))},
                   timeout=600).raise_for_status()
        done.set()

    recording, _ = two_phrases(gap_s=0.8, voice=3)
    thread = threading.Thread(target=send_upload, daemon=True)
    thread.start()
    file_calls = lambda: transcriber.stats.remote().result()["calls_started"][PRIORITIES["file"]]  # noqa: E731
    wait_for(lambda: file_calls() >= before["calls_started"][PRIORITIES["file"]] + 2, timeout=60)
    got = finals(asyncio.run(converse(app, recording.audio, {"end_of_utterance_ms": 500, "partials": False},
                                      speed=4)))
    assert not done.is_set(), "the upload was still running when the live finals came"
    assert len(got) == 2 and all(e["text"] == offline_text(app, recording.audio, e["start"], e["end"]) for e in got)
    thread.join(timeout=600)
    stats = transcriber.stats.remote().result()
    waits = stats["live_waits"][len(before["live_waits"]):]
    assert waits and max(waits) <= 1, waits
    # and that one call was small: beside live work the file's segments went one per model call (CPU: auto is 1)
    beside = {size: count - before["file_calls_beside_live"].get(size, 0)
              for size, count in stats["file_calls_beside_live"].items()}
    assert sum(beside.values()) >= 2 and {size for size, count in beside.items() if count} == {1}, beside
