"""Stream an audio file to the service's WebSocket and print partials and finals as they arrive.

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

import numpy as np
import soundfile as sf


def pcm16(path: str) -> tuple[bytes, int]:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    return (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes(), rate


async def stream_file(path: str, url: str, frame_bytes: int = 1024, realtime: bool = False,
                      timestamps: bool = False, partials: bool = True, on_event=None) -> list[dict]:
    import websockets

    data, rate = pcm16(path)
    events: list[dict] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"sample_rate": rate, "encoding": "pcm_s16le", "timestamps": timestamps,
                                  "partials": partials}))

        async def send() -> None:
            started = time.perf_counter()
            for offset in range(0, len(data), frame_bytes):
                await ws.send(data[offset:offset + frame_bytes])
                if realtime:  # pace frames at the audio's own speed
                    due = (offset + frame_bytes) / 2 / rate
                    await asyncio.sleep(max(0.0, due - (time.perf_counter() - started)))
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        async for message in ws:
            event = json.loads(message)
            events.append(event)
            if on_event:
                on_event(event)
            if event["type"] in ("done", "error"):
                break
        sender.cancel()
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/audio/stream")
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

    events = asyncio.run(stream_file(args.file, args.url, args.frame_bytes, args.realtime, args.timestamps,
                                     not args.no_partials, show))
    sys.exit(1 if any(e["type"] == "error" for e in events) else 0)


if __name__ == "__main__":
    main()
