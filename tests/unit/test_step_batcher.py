"""An Ingress's live VAD steps go to the Segmenter together: one call for the steps of one tick."""

import asyncio

import pytest

from deployments.speech.step_batcher import StepBatcher, next_tick


def test_every_stream_steps_on_the_same_boundaries():
    assert next_tick(10.01, 0.064) == pytest.approx(10.048) and next_tick(10.047, 0.064) == pytest.approx(10.048)
    assert next_tick(10.048, 0.064) == pytest.approx(10.112)  # (a boundary itself waits for the next one)
    assert next_tick(5.0, 0) == 5.0


def test_steps_that_come_within_the_window_are_one_call_and_each_gets_its_own_result():
    sent: list[list[int]] = []

    async def send(calls):
        sent.append(list(calls))
        await asyncio.sleep(0)
        return [call * 10 for call in calls]

    async def run():
        batcher = StepBatcher(send, window_s=0.02, most=3)
        together = await asyncio.gather(*[batcher.step(i) for i in range(5)])  # 3 fill a call, 2 wait the window
        later = await batcher.step(7)
        return together, later, batcher.calls

    together, later, calls = asyncio.run(run())
    assert together == [0, 10, 20, 30, 40] and later == 70
    assert sent == [[0, 1, 2], [3, 4], [7]] and calls == 3


def test_a_failed_call_fails_its_callers_and_a_caller_that_left_does_not_stop_the_others():
    async def send(calls):
        await asyncio.sleep(0.01)
        if "bad" in calls:
            raise RuntimeError("segmenter gone")
        return [call.upper() for call in calls]

    async def run():
        batcher = StepBatcher(send, window_s=0.005, most=8)
        failing = await asyncio.gather(batcher.step("bad"), batcher.step("x"), return_exceptions=True)
        leaving = asyncio.ensure_future(batcher.step("gone"))
        staying = asyncio.ensure_future(batcher.step("kept"))
        await asyncio.sleep(0.008)  # sent, not answered yet
        leaving.cancel()
        return failing, await staying, leaving.cancelled()

    failing, kept, left = asyncio.run(run())
    assert [str(e) for e in failing] == ["segmenter gone"] * 2 and all(isinstance(e, RuntimeError) for e in failing)
    assert kept == "KEPT" and left
