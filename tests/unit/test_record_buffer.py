"""The Ingress's metric buffer: what requests count reaches Ray's series in one go, summed where it can be."""

from __future__ import annotations

import asyncio
import threading

from deployments.metrics import RecordBuffer


class FakeSeries:
    """A Ray Counter / Histogram stand-in that remembers each record call and the thread it came on."""

    def __init__(self):
        self.calls: list[tuple[float, dict]] = []
        self.threads: set[str] = set()

    def inc(self, value: float, tags: dict) -> None:
        self.calls.append((value, tags))
        self.threads.add(threading.current_thread().name)

    observe = inc


def test_counts_with_the_same_tags_become_one_record_and_every_observation_is_kept():
    buffer, requests, latency = RecordBuffer(), FakeSeries(), FakeSeries()
    for status in ("429", "429", "200", "429"):
        buffer.inc(requests, 1, {"status": status, "route": "openai"})
    for ms in (3.0, 5.0, 3.0):
        buffer.observe(latency, ms, {"route": "openai"})
    assert requests.calls == [] and latency.calls == []  # nothing is recorded on the request's path
    buffer.take().record()
    assert sorted(requests.calls, key=lambda call: call[1]["status"]) == [
        (1, {"route": "openai", "status": "200"}), (3, {"route": "openai", "status": "429"})]
    assert latency.calls == [(3.0, {"route": "openai"}), (5.0, {"route": "openai"}), (3.0, {"route": "openai"})]


def test_taking_empties_the_buffer_so_nothing_is_recorded_twice():
    buffer, requests = RecordBuffer(), FakeSeries()
    buffer.inc(requests, 2.5, {"route": "listen"})
    buffer.take().record()
    buffer.take().record()
    buffer.inc(requests, 1, {"route": "listen"})
    buffer.take().record()
    assert requests.calls == [(2.5, {"route": "listen"}), (1, {"route": "listen"})]


def test_the_flush_loop_records_on_a_worker_thread():
    buffer, shed = RecordBuffer(), FakeSeries()

    async def run() -> None:
        flushing = asyncio.create_task(buffer.flush_forever(interval_s=0.01))
        buffer.inc(shed, 1, {"route": "openai"})
        while not shed.calls:
            await asyncio.sleep(0.01)
        flushing.cancel()

    asyncio.run(asyncio.wait_for(run(), timeout=10))
    assert shed.calls == [(1, {"route": "openai"})]
    assert threading.main_thread().name not in shed.threads
