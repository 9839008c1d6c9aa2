"""Send each speech segment to the model as soon as VAD finds it; collect the results in order (Ray-free glue).

The Ingress wires it to the Segmenter's stream and the Transcriber's handle; tests drive it with fakes.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable, Protocol, TypeVar

from .schemas import SegmentTokens, SpeechSegment


class Cancellable(Protocol):
    def cancel(self) -> None: ...


Call = TypeVar("Call", bound=Cancellable)


async def transcribe_as_found(found: AsyncIterator[list[SpeechSegment]], issue: Callable[[SpeechSegment], Call],
                              collect: Callable[[Call], Awaitable[SegmentTokens]],
                              on_text: Callable[[str], Awaitable[None]] | None = None,
                              max_in_flight: int | None = None) -> tuple[list[SpeechSegment], list[SegmentTokens]]:
    """Segments and their tokens, in order.

    ``issue(segment)`` starts one transcription without waiting for it (a batched model call) the moment the
    segment arrives from ``found``; ``collect(call)`` awaits its result. So the model works on the first segments
    while VAD is still reading the file, and ``on_text`` gets each segment's text in order as soon as it (and
    every segment before it) is done. If anything fails or the caller is cancelled, VAD and every issued call are
    cancelled too. With ``max_in_flight``, at most that many calls are issued and not yet collected (background
    work that must not flood the model's queue); VAD waits meanwhile.
    """
    issued: asyncio.Queue = asyncio.Queue()  # (segment, call) in order; None once VAD is done
    calls: list[Call] = []
    in_flight = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    async def fan_out() -> None:
        try:
            async for batch in found:
                for segment in batch:
                    if in_flight is not None:
                        await in_flight.acquire()
                    calls.append(issue(segment))
                    issued.put_nowait((segment, calls[-1]))
        finally:
            issued.put_nowait(None)

    producer = asyncio.create_task(fan_out())
    segments: list[SpeechSegment] = []
    tokens: list[SegmentTokens] = []
    try:
        while (item := await issued.get()) is not None:
            segments.append(item[0])
            result = asyncio.ensure_future(collect(item[1]))
            if not producer.done():  # a VAD failure must not wait for the model to finish what it has
                await asyncio.wait({result, producer}, return_when=asyncio.FIRST_COMPLETED)
            if producer.done() and not result.done() and producer.exception() is not None:
                result.cancel()
                raise producer.exception()
            tokens.append(await result)
            if in_flight is not None:
                in_flight.release()
            if on_text is not None and tokens[-1].text:
                await on_text(tokens[-1].text)
        await producer  # a VAD failure surfaces here
    except BaseException:
        producer.cancel()
        for call in calls:
            call.cancel()
        raise
    return segments, tokens
