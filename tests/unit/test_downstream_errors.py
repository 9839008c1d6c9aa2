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
