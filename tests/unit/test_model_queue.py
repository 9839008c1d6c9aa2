"""The Transcriber's model queue: one call at a time, the most urgent waiting call next, FIFO within a priority."""

import threading

from deployments.speech.model_queue import PRIORITIES, ModelQueue


def test_the_most_urgent_waiting_call_runs_next_and_cancelled_calls_never_run():
    queue = ModelQueue()
    gate, ran = threading.Event(), []
    running = queue.submit(PRIORITIES["file"], gate.wait)  # a long file batch holds the model
    waiting = [queue.submit(PRIORITIES[p], ran.append, name) for p, name in [
        ("job", "job"), ("file", "file 1"), ("partial", "partial"), ("file", "file 2"), ("final", "final")]]
    dropped = queue.submit(PRIORITIES["final"], ran.append, "dropped first pass")
    assert dropped.cancel()
    gate.set()
    running.result(timeout=5)
    for future in waiting:
        future.result(timeout=5)
    assert ran == ["final", "partial", "file 1", "file 2", "job"]
    # every call was counted under its priority (the Transcriber measures live waits with these)
    assert queue.started[PRIORITIES["file"]] == 3 and queue.started_below(PRIORITIES["final"]) == 5


def test_a_failing_call_hands_its_exception_to_the_caller_and_the_queue_goes_on():
    queue = ModelQueue()

    def fail():
        raise ValueError("bad audio")

    failed = queue.submit(0, fail)
    try:
        failed.result(timeout=5)
        raise AssertionError("no exception")
    except ValueError as exc:
        assert str(exc) == "bad audio"
    assert queue.submit(0, lambda: 42).result(timeout=5) == 42
