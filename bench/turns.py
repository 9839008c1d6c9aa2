"""Live turns: the time from the true end of speech to the turn's final transcript (TTFS), and what partials cost.

    python -m bench.turns                      # the digits model on this machine (~12 min on 2 cores)
    python -m bench.turns --quick              # a smoke run (~2 min)
    python -m bench.turns --before             # the rows a service without finalize can run (server pauses only)
    python -m bench.turns --only fast_streaming   # re-measure parts of the report (partial_cost, fast_streaming,
                                                  # listen_throughput, splits) into the existing one

Every session streams held-out utterances (tests/fixtures/digits_heldout.npz: voices the model never heard),
each followed by 1.6 s of quiet, in 20 ms PCM16 frames paced in real time over ``/v1/audio/stream``. The true end
of an utterance's speech is the end of its last 10 ms frame louder than 5 % of its loudest and than twice its noise
floor; TTFS runs from the moment the frame holding that sample was sent to the arrival of the final that covers the
utterance. Rows:

- ``finalize``: the client sends ``{"type": "finalize"}`` 200 ms after speech ends (what voice agents do);
- ``pause N``: no finalize, the stream's ``end_of_utterance_ms`` ends the turn;
- ``+ uploads``: the same while two 3-minute files are transcribed back to back over HTTP;
- partial cost: the Transcriber's model seconds per second of live audio for unbroken 2 / 10 / 29 s turns, a minute
  of them each, paced in real time (partials every second), and the audio the model ran per second of it;
- fast streaming: whole files in 1024-byte frames as fast as possible, timestamps and partials on (the defaults),
  against the offline path with timestamps on the same file;
- splits: held-out utterances at 200 / 300 / 500 ms pauses: how many are split into more than one final, counted
  apart for the fluent ones (no quiet inside over ``INNER_PAUSE_MS``: the target, 0 at 300 ms) and those where the
  speaker pauses mid-phrase (a split there is the pause rule doing its job), finals equal to the offline path's
  text for the same audio, and the finals' word errors against the references.

Writes bench/results/<name>.json and .md. Nothing here is asserted: ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.audio import SAMPLE_RATE, encode, heldout, long_recording, synthetic_speech, word_errors
from bench.run import RESULTS, NodeLoad, Served, model_path, save_report
from deployments import front_door

FRAME_S = 0.02
QUIET_S = 1.6


@dataclass
class Utterance:
    audio: np.ndarray
    text: str
    speech_end: int  # samples into ``audio``


def _loud_frames(audio: np.ndarray) -> np.ndarray:
    """Per 10 ms frame: speech, i.e. louder (RMS) than 5 % of the loudest frame and than twice the recording's noise
    floor (its 5th-percentile frame). The floor matters: 9 of the 40 held-out utterances carry background noise above
    5 % of their peak, where 5 % alone put their end of speech at the end of the recording, up to 0.6 s after the
    last word (which made their time to final look that much shorter)."""
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    return rms > max(0.05 * rms.max(), 2 * np.percentile(rms, 5))


def true_end(audio: np.ndarray) -> int:
    """The end of the last loud 10 ms frame."""
    return int((np.nonzero(_loud_frames(audio))[0][-1] + 1) * 160)


def longest_inner_quiet_ms(audio: np.ndarray) -> int:
    """The longest run of quiet 10 ms frames between an utterance's first and last loud frame (its longest pause)."""
    loud = _loud_frames(audio)
    first, last = np.nonzero(loud)[0][[0, -1]]
    longest = run = 0
    for is_loud in loud[first:last + 1]:
        run = 0 if is_loud else run + 1
        longest = max(longest, run)
    return longest * 10


# An utterance is *fluent* (no inner pause) when no quiet inside it lasts this long. The held-out utterances fall
# on either side with room: 20 have no quiet over 160 ms (gaps between words), 20 pause 240-620 ms mid-phrase.
INNER_PAUSE_MS = 200


def utterances() -> list[Utterance]:
    return [Utterance(audio, text, true_end(audio)) for audio, text in heldout()["utterances"]]


@dataclass
class Session:
    """One stream's audio (utterances with quiet after each) and when each utterance's speech truly ends."""

    audio: np.ndarray
    ends: list[int] = field(default_factory=list)  # absolute samples
    spans: list[tuple[int, int]] = field(default_factory=list)


def session_audio(chosen: list[Utterance], lead_s: float) -> Session:
    pieces, cursor = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)], int(lead_s * SAMPLE_RATE)
    session = Session(np.zeros(0, np.float32))
    quiet = np.random.default_rng(len(chosen)).standard_normal(int(QUIET_S * SAMPLE_RATE)).astype(np.float32) * 1e-3
    for utterance in chosen:
        session.spans.append((cursor, cursor + len(utterance.audio)))
        session.ends.append(cursor + utterance.speech_end)
        pieces += [utterance.audio, quiet]
        cursor += len(utterance.audio) + len(quiet)
    session.audio = np.concatenate(pieces)
    return session


async def run_session(url: str, session: Session, config: dict, finalize_after_s: float | None,
                      speed: float = 1.0) -> list[float]:
    """Stream one session; TTFS (ms) of each utterance (NaN where no final covered it). A ``url`` ending in
    ``/v1/listen...`` speaks Deepgram's protocol (what Pipecat's Deepgram service sends: ``Finalize``,
    ``CloseStream``), anything else ours (``config`` first, ``finalize``, ``end``)."""
    import websockets

    from deployments.speech.audio import float_to_pcm16

    deepgram = "/v1/listen" in url
    finalize_message = {"type": "Finalize"} if deepgram else {"type": "finalize"}
    end_message = {"type": "CloseStream"} if deepgram else {"type": "end"}
    frame = int(FRAME_S * SAMPLE_RATE)
    sent_at: dict[int, float] = {}  # utterance index -> when the frame holding its true end was sent
    finals: list[tuple[dict, float]] = []
    finalize_at = [end + int((finalize_after_s or 0) * SAMPLE_RATE) for end in session.ends]
    async with websockets.connect(url, max_size=None) as ws:
        if not deepgram:
            await ws.send(json.dumps(config))

        async def send() -> None:
            started = time.perf_counter()
            pending = 0
            for start in range(0, len(session.audio), frame):
                await ws.send(float_to_pcm16(session.audio[start:start + frame]))
                now = time.perf_counter()
                for index, end in enumerate(session.ends):
                    if index not in sent_at and start <= end < start + frame:
                        sent_at[index] = now
                if finalize_after_s is not None and pending < len(finalize_at) and \
                        finalize_at[pending] < start + frame:
                    await ws.send(json.dumps(finalize_message))
                    pending += 1
                due = (start + frame) / SAMPLE_RATE / speed
                await asyncio.sleep(max(0.0, due - (time.perf_counter() - started)))
            await ws.send(json.dumps(end_message))

        sender = asyncio.create_task(send())
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "final":
                finals.append((event, time.perf_counter()))
            elif event["type"] == "Results" and event["is_final"] and \
                    event["channel"]["alternatives"][0]["transcript"]:
                finals.append(({"start": event["start"], "end": event["start"] + event["duration"]},
                               time.perf_counter()))
            elif event["type"] in ("error", "Error"):
                raise RuntimeError(event)
        await sender
    latencies = []
    for index, (start, _) in enumerate(session.spans):
        # the utterance's final: the last one that overlaps its speech (VAD may end speech a little before our
        # energy-based true end, so "contains the end" would miss some)
        overlapping = [at for event, at in finals if event["start"] * SAMPLE_RATE < session.ends[index]
                       and event["end"] * SAMPLE_RATE > start]
        latencies.append((overlapping[-1] - sent_at[index]) * 1000 if overlapping and index in sent_at
                         else float("nan"))
    return latencies


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (the nearest rank: no interpolation)."""
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def percentiles(values: list[float]) -> dict:
    kept = sorted(v for v in values if v == v)
    if not kept:
        return {"n": 0}
    return {"n": len(kept), "missed": len(values) - len(kept), **{
        f"p{round(q * 100)}_ms": round(quantile(kept, q), 1) for q in (0.5, 0.95, 0.99)}}


def ttfs(served: Served, sessions: int, per_session: int, config: dict, finalize_after_s: float | None,
         uploads: int = 0, seed: int = 0, path: str = "/v1/audio/stream") -> dict:
    """``sessions`` concurrent streams (staggered starts) of ``per_session`` utterances each."""
    import httpx

    pool = utterances()
    rng = random.Random(seed)
    plans = [session_audio(rng.sample(pool, per_session), lead_s=0.5 + rng.uniform(0, 2.0)) for _ in range(sessions)]
    url = served.url.replace("http", "ws") + path
    stop = threading.Event()
    upload_audio = encode(synthetic_speech(180, seed=7))

    def upload_loop() -> None:
        while not stop.is_set():
            httpx.post(served.url + "/v1/audio/transcriptions", files={"file": ("a.wav", upload_audio)},
                       timeout=600).raise_for_status()

    threads = [threading.Thread(target=upload_loop, daemon=True) for _ in range(uploads)]
    for thread in threads:
        thread.start()
    if uploads:
        time.sleep(2.0)  # the uploads' segments are queued in the Transcriber before the first turn ends
    files_before = served.stats()["items_by_priority"]["file"]

    async def everyone() -> list[list[float]]:
        return await asyncio.gather(*[run_session(url, plan, config, finalize_after_s) for plan in plans])

    load = NodeLoad()
    try:
        latencies = [v for per in asyncio.run(everyone()) for v in per]
        cost = load.summary()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=600)
    # what the live sessions cost the uploads: their segments transcribed meanwhile
    done = {"upload_segments_done": served.stats()["items_by_priority"]["file"] - files_before} if uploads else {}
    return {"sessions": sessions, "utterances": len(latencies), **percentiles(latencies), **cost, **done}


def unbroken_turns(seconds: float, count: int) -> list[np.ndarray]:
    """``count`` recordings of held-out digit words without gaps, each ``seconds`` long (0.3 s of quiet first)."""
    rng = random.Random(int(seconds))
    clips = heldout()["clips"]
    recordings = []
    for _ in range(count):
        voice, words, length = rng.choice(heldout()["voices"]), [], int(0.3 * SAMPLE_RATE)
        while length < seconds * SAMPLE_RATE:  # (gapless: the recording is the lead and the clips end to end)
            words.append(rng.choice(["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
            length += len(clips[(voice, words[-1])])
        recordings.append(long_recording([words], random.Random(len(recordings)), voice=voice, word_gap_s=(0.0, 0.0),
                                         lead_s=0.3, tail_s=0.0).audio)
    return recordings


def partial_cost(served: Served, lengths: list[float]) -> list[dict]:
    """Model seconds per second of live audio for unbroken turns of each length (partials every second), paced in
    real time: the model's time is wall time on its thread, so a faster pace would add the Ingress's and VAD's
    contention for the same cores to it."""
    from deployments.speech.model_queue import PRIORITIES
    rows = []
    url = served.url.replace("http", "ws") + "/v1/audio/stream"
    for seconds in lengths:
        count = max(2, int(round(60 / seconds)))  # a minute of speech a row: one call more or less is noise
        recordings = unbroken_turns(seconds, count)
        plan = session_audio([Utterance(a, "", true_end(a)) for a in recordings], lead_s=0.3)
        turn_audio = sum(len(a) for a in recordings) / SAMPLE_RATE
        before = served.stats()
        asyncio.run(run_session(url, plan, {"partials": True, "end_of_utterance_ms": 500}, None))
        after = served.stats()
        spent = after["model_seconds"] - before["model_seconds"]
        calls = {name: after["calls_started"][PRIORITIES[name]] - before["calls_started"][PRIORITIES[name]]
                 for name in ("final", "draft", "partial")}
        ran = {name: round((after["audio_seconds_by_priority"][name] - before["audio_seconds_by_priority"][name])
                           / turn_audio, 2) for name in ("final", "draft", "partial")}
        rows.append({"turn_s": round(turn_audio / count, 1), "turns": count,
                     "model_ms_per_audio_s": round(spent * 1000 / turn_audio, 2), "model_calls": calls,
                     "audio_s_run_per_audio_s": ran})
        print(f"partial cost: {rows[-1]}", flush=True)
    return rows


def fast_streaming(served: Served, minutes: list[float], rounds: int) -> list[dict]:
    """Whole files in 1024-byte frames as fast as possible (timestamps, partials on) / the offline path."""
    import httpx

    from deployments.speech.audio import float_to_pcm16
    from deployments.stream_client import stream_pcm

    rows = []
    for m in minutes:
        audio = synthetic_speech(m * 60, seed=int(m * 60))
        wav, pcm = encode(audio), float_to_pcm16(audio)
        streamed, offline = [], []
        for round_ in range(rounds + 1):  # the first round warms up
            started = time.perf_counter()
            httpx.post(served.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, timeout=3600,
                       data={"response_format": "verbose_json", "timestamp_granularities[]": "word"}
                       ).raise_for_status()
            offline.append(time.perf_counter() - started)
            started = time.perf_counter()
            outcome = asyncio.run(stream_pcm(served.url.replace("http", "ws") + "/v1/audio/stream", pcm,
                                             {"timestamps": True}))
            assert outcome.events[-1] == {"type": "done"}, outcome.events[-1:]
            streamed.append(time.perf_counter() - started)
        s, o = statistics.median(streamed[1:]), statistics.median(offline[1:])
        rows.append({"minutes": m, "stream_ms": round(s * 1000), "offline_ms": round(o * 1000),
                     "stream_over_offline": round(s / o, 3)})
        print(f"fast streaming: {rows[-1]}", flush=True)
    return rows


def listen_throughput(served: Served, streams: int, seconds: float) -> dict:
    """``streams`` concurrent live streams, each ``seconds`` of speech sent as fast as possible in 20 ms frames, over
    ``/v1/listen`` and over ``/v1/audio/stream`` asking for the same words with times that every Deepgram ``Results``
    carries (interleaved, best of two each): audio seconds per second. (Against a stream without words the ratio
    read the Aligner's share, not the protocol's: 0.79 where the same work read 0.89.)"""
    audios = [synthetic_speech(seconds, seed=3000 + i) for i in range(streams)]
    plans = [Session(audio, ends=[], spans=[]) for audio in audios]
    base = served.url.replace("http", "ws")
    rates: dict[str, list[float]] = {"listen": [], "stream": []}
    for _ in range(2):
        for name, path, config in (("listen", "/v1/listen?interim_results=true", {}),
                                   ("stream", "/v1/audio/stream", {"timestamps": True})):
            async def everyone() -> None:
                await asyncio.gather(*[run_session(base + path, plan, config, None, speed=1000.0) for plan in plans])

            started = time.perf_counter()
            asyncio.run(everyone())
            rates[name].append(streams * seconds / (time.perf_counter() - started))
    listen, stream = max(rates["listen"]), max(rates["stream"])
    return {"streams": streams, "seconds_each": seconds, "listen_x": round(listen, 1), "stream_x": round(stream, 1),
            "listen_over_stream": round(listen / stream, 3)}


def splits(served: Served, pause_ms: int) -> dict:
    """Held-out utterances (no inner pauses) at a ``pause_ms`` pause: finals per utterance, and finals equal to the
    offline path's text for the same audio."""
    import httpx

    pool = utterances()
    plan = session_audio(pool, lead_s=0.5)
    finals: list[dict] = []

    async def go() -> None:
        import websockets

        from deployments.speech.audio import float_to_pcm16

        async with websockets.connect(served.url.replace("http", "ws") + "/v1/audio/stream", max_size=None) as ws:
            await ws.send(json.dumps({"end_of_utterance_ms": pause_ms, "partials": False}))
            pcm = float_to_pcm16(plan.audio)

            async def send() -> None:
                for start in range(0, len(pcm), 6400):  # 200 ms frames, 4x real time
                    await ws.send(pcm[start:start + 6400])
                    await asyncio.sleep(0.05)
                await ws.send(json.dumps({"type": "end"}))

            sender = asyncio.create_task(send())
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "final":
                    finals.append(event)
            await sender

    asyncio.run(go())
    # each utterance's finals: those whose middle lies in its span
    heard = [[f for f in finals if start <= (f["start"] + f["end"]) / 2 * SAMPLE_RATE < end]
             for start, end in plan.spans]
    per_utterance = [len(found) for found in heard]
    # where VAD said each utterance's speech ended (its last final's end, less the turn's tail), after the true end
    from deployments.speech.settings import StreamSettings

    tail_s = StreamSettings().final_tail_ms / 1000
    lags = sorted((found[-1]["end"] - tail_s) * 1000 - end * 1000 / SAMPLE_RATE
                  for found, end in zip(heard, plan.ends) if found)
    fluent = [longest_inner_quiet_ms(u.audio) < INNER_PAUSE_MS for u in pool]
    errors = sum(word_errors(u.text, " ".join(f["text"] for f in found)) for u, found in zip(pool, heard))
    same = 0
    for event in finals:
        piece = plan.audio[int(round(event["start"] * SAMPLE_RATE)):int(round(event["end"] * SAMPLE_RATE))]
        offline = httpx.post(served.url + "/v1/audio/transcriptions", files={"file": ("a.wav", encode(piece))},
                             timeout=120).json()["text"]
        same += offline == event["text"]
    return {"pause_ms": pause_ms, "utterances": len(pool), "split": sum(n > 1 for n in per_utterance),
            "fluent": sum(fluent), "fluent_split": sum(n > 1 and f for n, f in zip(per_utterance, fluent)),
            "pausing_split": sum(n > 1 and not f for n, f in zip(per_utterance, fluent)),
            "missed": sum(n == 0 for n in per_utterance), "finals": len(finals),
            "vad_end_after_true_end_ms": {f"p{round(q * 100)}": round(quantile(lags, q)) for q in (0.1, 0.5, 0.9)}
            if lags else None,
            "finals_equal_offline": round(same / max(1, len(finals)), 3), "word_errors": errors,
            "words": sum(len(u.text.split()) for u in pool)}


def markdown(report: dict) -> str:
    lines = [f"# Live turns: {report['name']}", "",
             f"`{report['command']}` ({report['machine']}; ingress: {report.get('ingress', 'proxy')})", "",
             "Time to final transcript from the true end of speech (ms):", "",
             "| row | sessions | utterances | p50 | p95 | p99 | node CPU busy | VAD steps / Segmenter call |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["ttfs"]:
        lines.append(f"| {row['row']} | {row['sessions']} | {row.get('n', 0)} | {row.get('p50_ms')} | "
                     f"{row.get('p95_ms')} | {row.get('p99_ms')} | {row.get('node_cpu_busy')} | "
                     f"{row.get('vad_steps_per_segmenter_call')} |")
    processes = sorted({name for row in report["ttfs"] for name in row.get("cpu_s", {})})
    if processes:
        lines += ["", "CPU seconds by process over each row (the node has os.cpu_count() x wall seconds):", "",
                  "| row | sessions | wall s | " + " | ".join(processes) + " |",
                  "|---|---|---|" + "---|" * len(processes)]
        for row in report["ttfs"]:
            spent = [str(row.get("cpu_s", {}).get(name, "")) for name in processes]
            lines.append(f"| {row['row']} | {row['sessions']} | {row.get('wall_s')} | " + " | ".join(spent) + " |")
    if report.get("partial_cost"):
        lines += ["", "Partial cost (model ms per second of live audio, unbroken turns, partials every second, real "
                      "time; the audio the model ran per second of it, partials and first passes / finals):", "",
                  "| turn length (s) | turns | model ms / audio s | partial audio / s | first pass + final audio / s |",
                  "|---|---|---|---|---|"]
        for r in report["partial_cost"]:
            ran = r.get("audio_s_run_per_audio_s", {})
            lines.append(f"| {r['turn_s']} | {r['turns']} | {r['model_ms_per_audio_s']} | {ran.get('partial', '-')} | "
                         f"{round(ran.get('draft', 0) + ran.get('final', 0), 2) if ran else '-'} |")
    if report.get("fast_streaming"):
        lines += ["", "Streaming in 1024-byte frames as fast as possible, timestamps and partials on, / offline "
                      "(timestamps):", "", "| minutes | stream ms | offline ms | ratio |", "|---|---|---|---|"]
        lines += [f"| {r['minutes']:g} | {r['stream_ms']} | {r['offline_ms']} | {r['stream_over_offline']} |"
                  for r in report["fast_streaming"]]
    if report.get("splits"):
        lines += ["", f"Held-out utterances by pause: utterances split into more than one final, the fluent ones (no "
                      f"quiet inside over {INNER_PAUSE_MS} ms) and those with a pause mid-phrase apart; finals equal "
                      "to the offline path's text for the same audio, and the finals' word errors against the "
                      "references:", "",
                  "| pause ms | utterances | fluent split | pausing split | missed | finals | equal to offline | "
                  "word errors |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['pause_ms']} | {s['utterances']} | {s.get('fluent_split', '-')} of {s.get('fluent', '-')} | "
                  f"{s.get('pausing_split', '-')} of {s['utterances'] - s.get('fluent', 0)} | {s['missed']} | "
                  f"{s['finals']} | {s['finals_equal_offline']:.1%} | {s.get('word_errors', '-')} / "
                  f"{s.get('words', '-')} |" for s in report["splits"]]
        lags = [s["vad_end_after_true_end_ms"] for s in report["splits"] if s.get("vad_end_after_true_end_ms")]
        if lags:
            lines += ["", "Where VAD said speech ended, after the true end (each utterance's last final, less the "
                          "turn's tail), ms p10 / p50 / p90, by pause row: " + "; ".join(
                              f"{s['pause_ms']}: {s['vad_end_after_true_end_ms']['p10']} / "
                              f"{s['vad_end_after_true_end_ms']['p50']} / {s['vad_end_after_true_end_ms']['p90']}"
                              for s in report["splits"] if s.get("vad_end_after_true_end_ms"))]
    if report.get("listen_throughput"):
        t = report["listen_throughput"]
        lines += ["", f"{t['streams']} live streams of {t['seconds_each']:g} s each, as fast as possible: "
                      f"`/v1/listen` {t['listen_x']}x real time, `/v1/audio/stream` with words {t['stream_x']}x "
                      f"(ratio {t['listen_over_stream']}).", ""]
    if report.get("checks"):
        lines += ["", "Targets:", ""] + [f"- {k}: {v}" for k, v in report["checks"].items()]
    return "\n".join(lines) + "\n"


def checks(report: dict) -> dict:
    rows = {(r["row"], r["sessions"]): r for r in report["ttfs"]}
    out = {}

    def get(row, sessions, key):
        return rows.get((row, sessions), {}).get(key)

    if get("finalize 200 ms", 1, "p50_ms") is not None:
        out["finalize, 1 session: p50 <= 280, p95 <= 350"] = (get("finalize 200 ms", 1, "p50_ms"),
                                                               get("finalize 200 ms", 1, "p95_ms"))
        out["finalize, 8 sessions: p50 <= 350, p95 <= 500"] = (get("finalize 200 ms", 8, "p50_ms"),
                                                                get("finalize 200 ms", 8, "p95_ms"))
        if get("finalize 200 ms", 16, "p95_ms") is not None:
            out["16 / 1 session p95 (<= 2)"] = round(get("finalize 200 ms", 16, "p95_ms")
                                                     / get("finalize 200 ms", 1, "p95_ms"), 2)
        if get("finalize 200 ms + 2 uploads", 8, "p50_ms") is not None:
            out["8 sessions with / without uploads, p50 (<= 1.5)"] = round(
                get("finalize 200 ms + 2 uploads", 8, "p50_ms") / get("finalize 200 ms", 8, "p50_ms"), 2)
    for sessions in (1, 8):
        for stream_row, label in (("finalize 200 ms", ""), ("finalize 200 ms, words", ", both with words")):
            if get("listen: Finalize 200 ms", sessions, "p50_ms") and get(stream_row, sessions, "p50_ms"):
                out[f"/v1/listen / stream finalize p50, {sessions} session(s){label} (<= 1.1)"] = round(
                    get("listen: Finalize 200 ms", sessions, "p50_ms") / get(stream_row, sessions, "p50_ms"), 2)
    if report.get("listen_throughput"):
        out["/v1/listen / stream throughput, 16 streams (>= 0.95)"] = report["listen_throughput"]["listen_over_stream"]
    if get("pause 300 ms", 1, "p50_ms") is not None:
        out["pause 300 ms, 1 session: p50 <= 400"] = get("pause 300 ms", 1, "p50_ms")
    default = report.get("default_pause_ms")
    if get(f"pause {default} ms (default)", 1, "p50_ms") is not None:
        out[f"default pause, 1 session: p50 <= {default + 100}"] = get(f"pause {default} ms (default)", 1, "p50_ms")
    if report.get("partial_cost"):
        costs = [r["model_ms_per_audio_s"] for r in report["partial_cost"]]
        out["partial cost, longest / shortest turn (<= 1.5)"] = round(max(costs) / min(costs), 2)
    if report.get("fast_streaming"):
        out["fast streaming / offline (<= 1.3)"] = [r["stream_over_offline"] for r in report["fast_streaming"]]
    for s in report.get("splits", []):
        if s["pause_ms"] == 300:
            out["fluent utterances split at 300 ms (0) / finals equal offline (>= 98 %)"] = (
                s.get("fluent_split"), s["finals_equal_offline"])
    return out


PARTS = ["partial_cost", "fast_streaming", "listen_throughput", "splits"]  # the report after its time-to-final rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits", help="digits | tiny | full-random | <.nemo path or HF id>")
    parser.add_argument("--name", default="live-turns-digits-cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", action="store_true", help="server-pause rows only (a service without finalize)")
    parser.add_argument("--minutes", type=float, nargs="*", default=[1, 3, 15], help="fast-streaming rows")
    parser.add_argument("--out-dir", default=str(RESULTS))
    parser.add_argument("--listen", action="store_true",
                        help="only Deepgram's /v1/listen against /v1/audio/stream asking for the same (timestamps: "
                             "words with times, as every Results message carries), 1 and 8 sessions")
    parser.add_argument("--ingress", choices=front_door.CHOICES, default=None,
                        help="what clients connect to (deployments/front_door.py): HAProxy in front of the Ingress "
                             "replicas' own servers, or Serve's proxy actor (default: $PARAKEET_INGRESS, else auto: "
                             "haproxy where a binary is found, as make serve)")
    parser.add_argument("--ttfs-only", action="store_true", help="only the time-to-final rows")
    parser.add_argument("--rows", nargs="*", default=None, metavar="ROW:SESSIONS",
                        help="only these time-to-final rows, e.g. 'finalize 200 ms:8' 'finalize 200 ms + 2 uploads:8' "
                             "(implies --ttfs-only)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None,
                        help="only these parts of the report (no time-to-final rows), each replacing its rows in an "
                             "existing report of the same name")
    parser.add_argument("--splits-only", action="store_true", help="the same as --only splits")
    args = parser.parse_args(argv)
    import os
    import platform

    from deployments.speech.settings import StreamSettings

    path = model_path(args.model, Path("/tmp/parakeet-bench"))
    served = Served(path, 4, 15, {}, ingress=args.ingress)
    default = StreamSettings().end_of_utterance_ms
    report = {"name": args.name, "command": "python -m bench.turns " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "ingress": served.front_door, "default_pause_ms": default, "ttfs": []}
    many = 2 if args.quick else 5  # utterances per session when several sessions run
    one = 6 if args.quick else 20
    plan = [(f"pause {default} ms (default)", 1, one, {}, None, 0)]
    if not args.before:  # (a service without per-stream turn rules knows only its default)
        plan.insert(0, ("pause 300 ms", 1, one, {"end_of_utterance_ms": 300}, None, 0))
        plan = [("finalize 200 ms", 1, one, {"end_of_utterance_ms": 2000}, 0.2, 0),
                ("listen: Finalize 200 ms", 1, one, {}, 0.2, 0),
                ("listen: Finalize 200 ms", 8, many, {}, 0.2, 0),
                ("finalize 200 ms", 8, many, {"end_of_utterance_ms": 2000}, 0.2, 0),
                ("finalize 200 ms", 16, many, {"end_of_utterance_ms": 2000}, 0.2, 0),
                ("finalize 200 ms + 2 uploads", 8, many, {"end_of_utterance_ms": 2000}, 0.2, 2)] + plan
    if args.listen:
        stamped = {"end_of_utterance_ms": 2000, "timestamps": True}
        plan = [("listen: Finalize 200 ms", 1, one, {}, 0.2, 0), ("finalize 200 ms, words", 1, one, stamped, 0.2, 0),
                ("listen: Finalize 200 ms", 8, many, {}, 0.2, 0), ("finalize 200 ms, words", 8, many, stamped, 0.2, 0)]
    if args.rows is not None:
        wanted = {tuple(r.rsplit(":", 1)) for r in args.rows}
        plan = [step for step in plan if (step[0], str(step[1])) in wanted]
        if len(plan) != len(wanted):
            parser.error(f"--rows: no such row in {sorted(wanted)}")
        args.ttfs_only = True
    existing = Path(args.out_dir) / f"{args.name}.json"
    if args.splits_only:
        args.only = ["splits"]
    if args.only:
        # (a report of that name gets the new rows; without one, a report of only those)
        if existing.is_file():  # (its command says which run added which rows)
            command = report["command"]
            report = json.loads(existing.read_text())
            report["command"] = f"{report['command']}`, rows added by `{command}"
        plan = []
    try:
        for row, sessions, per, config, finalize_after, uploads in plan:
            # Deepgram's protocol: what Pipecat's DeepgramSTTService sends (endpointing off: its VAD's Finalize
            # ends turns)
            path = "/v1/listen?interim_results=true&endpointing=false" if row.startswith("listen") else \
                "/v1/audio/stream"
            result = {"row": row, **ttfs(served, sessions, per, {"partials": True, **config}, finalize_after,
                                         uploads, seed=sessions, path=path)}
            report["ttfs"].append(result)
            print(f"ttfs: {result}", flush=True)
        parts = args.only or ([] if args.before or args.listen or args.ttfs_only else PARTS)
        if "partial_cost" in parts:
            # (29 s: a turn of 30 s with its padding would reach vad.max_segment_s and be cut in two)
            report["partial_cost"] = partial_cost(served, [2, 10] if args.quick else [2, 10, 29])
        if "fast_streaming" in parts:
            report["fast_streaming"] = fast_streaming(served, [1 / 3] if args.quick else args.minutes,
                                                      1 if args.quick else 2)
        if "listen_throughput" in parts:
            report["listen_throughput"] = listen_throughput(served, 16, 10 if args.quick else 30)
            print(f"listen throughput: {report['listen_throughput']}", flush=True)
        if "splits" in parts:
            report["splits"] = [splits(served, pause) for pause in ((300,) if args.quick else (200, 300, 500))]
            print(f"splits: {report['splits']}", flush=True)
    finally:
        served.shutdown()
    report["checks"] = checks(report)
    save_report(args.name, report, markdown(report), args.out_dir)
    return report


if __name__ == "__main__":
    main()
