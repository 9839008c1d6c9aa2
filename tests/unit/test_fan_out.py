"""Segments go to the model while VAD reads on; results come back in order; a failure anywhere cancels the rest."""

import asyncio

import pytest

from deployments.speech.fan_out import transcribe_as_found
from deployments.speech.schemas import SegmentTokens, SpeechSegment


class FakeCall:
    """A started transcription: resolved by the test, cancellable like a DeploymentResponse."""

    def __init__(self, segment: SpeechSegment):
        self.segment = segment
        self.result: asyncio.Future = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.result.cancel()


class FakeModel:
    """Stands in for the Transcriber's handle: every started call is kept for the test to resolve or inspect."""

    def __init__(self):
        self.calls: list[FakeCall] = []

    def issue(self, seg: SpeechSegment) -> FakeCall:
        self.calls.append(FakeCall(seg))
        return self.calls[-1]


def segment(index: int) -> SpeechSegment:
    return SpeechSegment(start=index * 100, end=index * 100 + 50)


async def collect(call: FakeCall) -> SegmentTokens:
    return await call.result


async def until(condition) -> None:
    """Let the other tasks run until ``condition()`` holds (fails after 5 s instead of hanging)."""
    async def poll():
        while not condition():
            await asyncio.sleep(0)
    await asyncio.wait_for(poll(), 5)


def test_the_first_segments_are_issued_before_vad_finishes_and_results_keep_their_order():
    async def scenario():
        model = FakeModel()

        async def vad():
            yield [segment(0), segment(1)]
            await until(lambda: model.calls)  # VAD only goes on once the model has work: no waiting for the file
            yield [segment(2)]

        texts: list[str] = []

        async def on_text(text: str) -> None:
            texts.append(text)

        task = asyncio.create_task(transcribe_as_found(vad(), model.issue, collect, on_text))
        await until(lambda: len(model.calls) == 3)
        for call in reversed(model.calls):  # the model finishes them in reverse order
            call.result.set_result(SegmentTokens(text=f"s{call.segment.start // 100}"))
        segments, tokens = await asyncio.wait_for(task, 5)
        assert [s.start for s in segments] == [0, 100, 200]
        assert [t.text for t in tokens] == ["s0", "s1", "s2"] == texts

    asyncio.run(scenario())


def test_a_vad_failure_fails_at_once_and_cancels_the_calls_already_issued():
    async def scenario():
        model = FakeModel()
        waiting = asyncio.Event()

        async def collect_and_tell(call: FakeCall) -> SegmentTokens:
            waiting.set()
            return await collect(call)

        async def vad():
            yield [segment(0), segment(1)]
            await waiting.wait()  # fail while the request waits on the model
            raise RuntimeError("VAD worker died")

        # no model call ever finishes: the error must not wait for them
        with pytest.raises(RuntimeError, match="VAD worker died"):
            await asyncio.wait_for(transcribe_as_found(vad(), model.issue, collect_and_tell), 5)
        assert len(model.calls) == 2 and all(call.cancelled for call in model.calls)

    asyncio.run(scenario())


def test_a_failed_segment_stops_vad_and_cancels_the_others():
    async def scenario():
        model = FakeModel()
        vad_closed = asyncio.Event()

        async def vad():
            try:
                yield [segment(0), segment(1)]
                await asyncio.Event().wait()  # still reading a long file
            finally:
                vad_closed.set()

        task = asyncio.create_task(transcribe_as_found(vad(), model.issue, collect))
        await until(lambda: len(model.calls) == 2)
        model.calls[0].result.set_exception(ValueError("bad segment"))
        with pytest.raises(ValueError, match="bad segment"):
            await asyncio.wait_for(task, 5)
        await asyncio.wait_for(vad_closed.wait(), 5)
        assert model.calls[1].cancelled

    asyncio.run(scenario())
