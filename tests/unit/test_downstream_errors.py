"""How failures of downstream deployments reach the client (glue code: fake awaitables)."""

import asyncio

import pytest
from ray.serve.exceptions import BackPressureError

from deployments.backends import downstream
from deployments.speech.errors import InternalError, InvalidRequest, Overloaded


async def raising(exc):
    raise exc


def test_overload_becomes_503_with_retry_after():
    with pytest.raises(Overloaded) as info:
        asyncio.run(downstream(raising(BackPressureError(num_queued_requests=10, max_queued_requests=10))))
    assert info.value.status == 503 and info.value.headers["Retry-After"]


def test_client_errors_pass_through_and_worker_failures_hide_internals():
    import ray

    with pytest.raises(InvalidRequest):
        asyncio.run(downstream(raising(InvalidRequest("bad segment"))))
    task_error = ray.exceptions.RayTaskError("transcribe", "Traceback ... CUDA out of memory", RuntimeError("OOM"))
    with pytest.raises(InternalError) as info:
        asyncio.run(downstream(raising(task_error)))
    assert "CUDA" not in info.value.message and info.value.status == 500


def test_a_segment_whose_replica_died_is_sent_once_more_then_gets_503():
    import ray

    from deployments.backends import SegmentCall, retried
    from deployments.speech.errors import ReplicaGone

    outcomes = []

    def issue_from(results):
        def issue():
            outcome = results.pop(0)
            outcomes.append(outcome)
            return raising(outcome) if isinstance(outcome, Exception) else succeeding(outcome)
        return issue

    async def succeeding(value):
        return value

    died = ray.exceptions.RayActorError()
    assert asyncio.run(SegmentCall(issue_from([died, "tokens"])).result()) == "tokens"
    assert asyncio.run(retried(issue_from([died, "words"]))) == "words"
    with pytest.raises(ReplicaGone) as info:
        asyncio.run(SegmentCall(issue_from([died, died])).result())
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "5"
    assert len(outcomes) == 6  # each failed call was sent exactly twice


class SlowGraph:
    """``ready()`` as the deployments answer it, after ``delay_s``; the controller's view of missing replicas."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.missing: list[str] = []
        self.asked = 0

    async def ready(self):
        self.asked += 1
        await asyncio.sleep(self.delay_s)
        return {"id": "m"}


def test_readiness_answers_from_the_last_check_without_waiting_for_a_slow_graph():
    from deployments.backends import NotReady, Readiness

    async def scenario():
        graph = SlowGraph(delay_s=0.05)
        readiness = Readiness(graph, refresh_s=0.1, stale_s=0.5, replicas_missing=lambda: list(graph.missing))
        assert await readiness.check() == {"id": "m"}  # the first probe waits for the first check
        graph.delay_s = 5  # the deployments' queues are full: probes do not wait for them
        await asyncio.sleep(0.15)
        started = asyncio.get_running_loop().time()
        assert await readiness.check() == {"id": "m"}
        assert asyncio.get_running_loop().time() - started < 0.05 and graph.asked == 1
        graph.missing = ["Transcriber"]  # the controller: no running Transcriber
        await asyncio.sleep(0.15)
        for _ in range(20):
            try:
                await readiness.check()
            except NotReady as exc:
                return str(exc)
            await asyncio.sleep(0.05)
        raise AssertionError("still ready without a running Transcriber")

    assert asyncio.run(scenario()) == "no running replica of Transcriber"


def test_a_new_replica_is_ready_by_the_controllers_view_while_the_graph_is_too_busy_to_describe():
    from deployments.backends import Readiness

    async def scenario():
        fresh = Readiness(SlowGraph(delay_s=5), fallback={"id": "configured"}, replicas_missing=lambda: [])
        return await fresh.check()

    assert asyncio.run(scenario()) == {"id": "configured"}



def test_readiness_keeps_checking_while_no_one_probes():
    """An application that no one probed for longer than ``stale_s`` is ready at its next probe, answered at once."""
    from deployments.backends import Readiness

    async def scenario():
        asked = []
        readiness = Readiness(SlowGraph(delay_s=0.01), refresh_s=0.05, stale_s=0.2,
                              replicas_missing=lambda: asked.append(1) or [])
        readiness.prepare()
        await asyncio.sleep(0.6)
        checks_while_idle = len(asked)
        return checks_while_idle, await readiness.check(), len(asked) == checks_while_idle

    checks_while_idle, model, answered_from_the_last_check = asyncio.run(scenario())
    assert checks_while_idle >= 5 and model == {"id": "m"} and answered_from_the_last_check


def test_a_not_ready_answer_is_confirmed_by_a_fresh_check():
    """A deployment missing at the last check but running now (the application just became ready) is not reported
    missing from that old answer."""
    from deployments.backends import Readiness

    async def scenario():
        missing = ["Transcriber"]
        readiness = Readiness(SlowGraph(delay_s=0.01), refresh_s=60, replicas_missing=lambda: list(missing))
        readiness.prepare()
        await asyncio.sleep(0.1)  # the loop's answer: no Transcriber; its next check is a minute away
        missing.clear()
        return await readiness.check()

    assert asyncio.run(scenario()) == {"id": "m"}
