"""A client for the live stream (``/v1/audio/stream``): the CLI below, and what the benchmark and tests use.

    python -m deployments.stream_client speech.wav                       # 1024-byte frames, as fast as possible
    python -m deployments.stream_client speech.wav --realtime --timestamps
    python -m deployments.stream_client speech.wav --url ws://host:8000/ws --frame-bytes 4096 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import soundfile as sf

from deployments.speech.audio import float_to_pcm16
from deployments.speech.parakeet_defaults import SAMPLE_RATE

DEFAULT_URL = "ws://127.0.0.1:8000/v1/audio/stream"


@dataclass
class StreamOutcome:
    events: list[dict] = field(default_factory=list)  # every event the server sent, in order
    close_code: int | None = None


def read_pcm16(path: str) -> tuple[bytes, int]:
    """An audio file's samples (mixed to mono) as PCM16 bytes, and its sample rate."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return float_to_pcm16(audio.mean(axis=1)), rate


async def paced(pcm: bytes, frame_bytes: int, rate: int, realtime: bool) -> AsyncIterator[bytes]:
    """PCM16 frames, each (with ``realtime``) no sooner than its audio would have been spoken."""
    started = time.perf_counter()
    for offset in range(0, len(pcm), frame_bytes):
        yield pcm[offset:offset + frame_bytes]
        if realtime:
            due = (offset + frame_bytes) / 2 / rate
            await asyncio.sleep(max(0.0, due - (time.perf_counter() - started)))


async def stream_pcm(url: str, pcm: bytes, config: dict | None = None, frame_bytes: int = 1024,
                     realtime: bool = False, finish: bool = True,
                     on_event: Callable[[dict], None] | None = None) -> StreamOutcome:
    """Send ``pcm`` in ``frame_bytes`` frames (paced at the audio's speed with ``realtime``), then ``{"type":
    "end"}`` unless ``finish`` is false; collect events until the server closes the connection."""
    import websockets

    rate = (config or {}).get("sample_rate", SAMPLE_RATE)
    outcome = StreamOutcome()
    async with websockets.connect(url, max_size=None) as ws:
        if config is not None:
            await ws.send(json.dumps(config))

        async def send() -> None:
            async for frame in paced(pcm, frame_bytes, rate, realtime):
                await ws.send(frame)
            if finish:
                await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        try:
            await _receive(ws, outcome, on_event)
        finally:
            sender.cancel()
        outcome.close_code = ws.close_code
    return outcome


async def _receive(ws, outcome: StreamOutcome, on_event: Callable[[dict], None] | None,
                   done: Callable[[dict], bool] = lambda event: False) -> None:
    """Every event into ``outcome`` until the server closes the connection or ``done(event)``."""
    import websockets

    try:
        async for message in ws:
            event = json.loads(message)
            outcome.events.append(event)
            if on_event:
                on_event(event)
            if done(event):
                return
    except websockets.ConnectionClosed:
        pass


async def realtime_pcm(url: str, pcm: bytes, rate: int = 24000, chunk_ms: int = 100, realtime: bool = True,
                       session: dict | None = None, on_event: Callable[[dict], None] | None = None) -> StreamOutcome:
    """The same audio through OpenAI's Realtime transcription protocol (``url`` ending in ``/v1/realtime``):
    base64 appends of ``chunk_ms``, a commit at the end (so the last turn is transcribed), events until every
    turn has its ``completed`` (or ``failed``) and the server has handled the commit."""
    import base64

    import websockets

    outcome = StreamOutcome()
    session = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}},
               **(session or {})}
    async with websockets.connect(url + "?intent=transcription", max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": session}))

        async def send() -> None:
            async for chunk in paced(pcm, rate * 2 * chunk_ms // 1000, rate, realtime):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(chunk).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))

        updates, open_items = [0], set()

        def done(event: dict) -> bool:
            kind = event["type"]
            updates[0] += kind == "session.updated"
            if kind == "input_audio_buffer.committed":
                open_items.add(event["item_id"])
            elif kind.rsplit(".", 1)[-1] in ("completed", "failed"):
                open_items.discard(event.get("item_id"))
            return kind == "error" or (updates[0] == 2 and not open_items)

        sender = asyncio.create_task(send())
        try:
            await _receive(ws, outcome, on_event, done)
        finally:
            sender.cancel()
        outcome.close_code = ws.close_code
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--frame-bytes", type=int, default=1024)
    parser.add_argument("--realtime", action="store_true", help="send at the audio's own pace")
    parser.add_argument("--timestamps", action="store_true", help="words with times in finals")
    parser.add_argument("--no-partials", action="store_true")
    parser.add_argument("--json", action="store_true", help="print raw events")
    args = parser.parse_args()

    def show(event: dict) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        elif event["type"] == "partial":
            print(f"  ... [{event['id']}] {event['text']}", flush=True)
        elif event["type"] == "final":
            print(f"[{event['id']}] {event['start']:8.2f}-{event['end']:8.2f}  {event['text']}", flush=True)
        elif event["type"] == "error":
            print(f"error: {event['message']}", file=sys.stderr, flush=True)

    pcm, rate = read_pcm16(args.file)
    config = {"sample_rate": rate, "encoding": "pcm_s16le", "timestamps": args.timestamps,
              "partials": not args.no_partials}
    outcome = asyncio.run(stream_pcm(args.url, pcm, config, args.frame_bytes, args.realtime, on_event=show))
    sys.exit(1 if any(e["type"] == "error" for e in outcome.events) else 0)


if __name__ == "__main__":
    main()
