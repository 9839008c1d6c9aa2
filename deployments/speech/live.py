"""One live stream: audio pieces in, ``partial`` / ``final`` events out, in order (Ray-free; the Ingress wires it).

Three cooperating tasks per stream, all cancelled together when the consumer stops (client gone):
- the reader pulls audio from the transport into a small queue (when it is full, reading stops: TCP backpressure);
- the segmenter takes everything queued at once (so fast senders get big VAD blocks), runs VAD off the event loop,
  and issues a transcription per finished utterance (and per due partial) without waiting for it;
- the consumer (this generator) awaits those in the order they were issued and yields the events.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, Callable

import numpy as np

from .parakeet_defaults import SAMPLE_RATE
from .schemas import Segment, SegmentTokens, Word
from .streaming import StreamSegmenter, UtteranceAudio

Transcribe = Callable[[np.ndarray], Awaitable[SegmentTokens]]
Align = Callable[[list[tuple[SegmentTokens, float, float]], float], Awaitable[tuple[list[Word], list[Segment]]]]
_END = object()


async def stream_events(chunks: AsyncIterator[np.ndarray], segmenter: StreamSegmenter, transcribe: Transcribe,
                        align: Align | None = None, max_pending: int = 8,
                        max_queued_samples: int = 30 * SAMPLE_RATE) -> AsyncIterator[dict]:
    """Yield ``{"type": "partial"|"final", ...}`` events for the audio ``chunks`` (16 kHz float32)."""
    incoming: asyncio.Queue = asyncio.Queue(maxsize=max(4, max_queued_samples // 512))
    results: asyncio.Queue = asyncio.Queue(maxsize=max_pending)
    partial_in_flight: list[asyncio.Future] = []

    async def read() -> None:
        try:
            async for chunk in chunks:
                await incoming.put(chunk)
        except BaseException as exc:  # noqa: BLE001 - hand transport errors to the consumer
            await incoming.put(exc)
            return
        await incoming.put(_END)

    async def event_for(utterance: UtteranceAudio) -> dict | None:
        tokens = await transcribe(utterance.audio)
        if not utterance.final:
            return {"type": "partial", "id": utterance.id, "text": tokens.text} if tokens.text else None
        start, end = utterance.start / SAMPLE_RATE, utterance.end / SAMPLE_RATE
        event = {"type": "final", "id": utterance.id, "text": tokens.text, "start": round(start, 3),
                 "end": round(end, 3)}
        if align is not None:
            words, _ = await align([(tokens, start, end)], end)
            event["words"] = [w.model_dump() for w in words]
        return event

    async def issue(utterances: list[UtteranceAudio]) -> None:
        for utterance in utterances:
            if not utterance.final:
                if partial_in_flight and not partial_in_flight[0].done():
                    continue  # one partial at a time: a slow model gets fewer, fresher partials
                partial_in_flight[:] = []
            future = asyncio.ensure_future(event_for(utterance))
            if not utterance.final:
                partial_in_flight.append(future)
            await results.put(future)

    async def segment() -> None:
        try:
            ended = False
            while not ended:
                pieces = [await incoming.get()]
                while not incoming.empty():
                    pieces.append(incoming.get_nowait())
                if any(isinstance(p, BaseException) for p in pieces):
                    raise next(p for p in pieces if isinstance(p, BaseException))
                ended = any(p is _END for p in pieces)
                audio = [p for p in pieces if isinstance(p, np.ndarray) and p.size]
                joined = np.concatenate(audio) if audio else np.zeros(0, np.float32)
                await issue(await asyncio.to_thread(segmenter.push, joined))
            await issue(await asyncio.to_thread(segmenter.finish))
            await results.put(_END)
        except BaseException as exc:  # noqa: BLE001
            await results.put(exc)

    tasks = [asyncio.create_task(read()), asyncio.create_task(segment())]
    try:
        while True:
            item = await results.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            event = await item
            if event is not None:
                yield event
    finally:
        for task in tasks:
            task.cancel()
        while not results.empty():
            item = results.get_nowait()
            if isinstance(item, asyncio.Future):
                item.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
