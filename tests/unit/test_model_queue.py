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


def test_waiting_calls_of_one_priority_and_model_run_as_one_call_up_to_the_limit():
    queue = ModelQueue()
    gate, calls = threading.Event(), []

    def model(items):  # one model call: records what it held, answers each item
        calls.append(list(items))
        return [item.upper() for item in items]

    file = PRIORITIES["file"]
    running = queue.submit(file, gate.wait)  # the model is busy while the calls below queue up
    first = queue.submit_items(file, "digits", ["a"], model, 3)
    other_model = queue.submit_items(file, "tiny", ["x"], model, 3)
    second = queue.submit_items(file, "digits", ["b", "c"], model, 3)
    dropped = queue.submit_items(file, "digits", ["gone"], model, 3)
    assert dropped.cancel()
    too_many = queue.submit_items(file, "digits", ["d"], model, 3)  # would make 4: the next call
    urgent = queue.submit_items(PRIORITIES["final"], "digits", ["f"], model, 3)
    gate.set()
    running.result(timeout=5)
    assert [f.result(timeout=5) for f in (first, second, too_many, other_model, urgent)] == [
        ["A"], ["B", "C"], ["D"], ["X"], ["F"]]
    # the final first (more urgent, alone), then the file calls of one model together, in order, as far as they fit
    assert calls == [["f"], ["a", "b", "c"], ["x"], ["d"]]
    assert queue.started[file] == 4  # (the busy call and three model calls: merged calls count once)


def test_a_failed_merged_call_hands_its_exception_to_every_caller_in_it():
    queue = ModelQueue()
    gate = threading.Event()

    def model(items):
        raise ValueError(f"bad batch of {len(items)}")

    running = queue.submit(0, gate.wait)
    futures = [queue.submit_items(0, "m", [i], model, 4) for i in range(2)]
    gate.set()
    running.result(timeout=5)
    for future in futures:
        try:
            future.result(timeout=5)
            raise AssertionError("no exception")
        except ValueError as exc:
            assert str(exc) == "bad batch of 2"


def test_a_later_call_never_joins_ahead_of_an_earlier_one_that_did_not_fit():
    queue = ModelQueue()
    gate, calls = threading.Event(), []

    def model(items):
        calls.append(list(items))
        return list(items)

    running = queue.submit(PRIORITIES["file"], gate.wait)
    futures = [queue.submit_items(PRIORITIES["file"], "m", items, model, 3) for items in (["a"], ["b", "c", "d"], ["e"])]
    gate.set()
    running.result(timeout=5)
    assert [f.result(timeout=5) for f in futures] == [["a"], ["b", "c", "d"], ["e"]]
    assert calls == [["a"], ["b", "c", "d"], ["e"]]  # (not ["a", "e"] first: "e" came after "b c d")
