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


def test_a_limit_given_as_a_function_is_asked_when_the_call_starts():
    """File segments are queued one by one with the Transcriber's rule as the limit: the size due when the model
    frees up decides (one segment per call once live work is about), not the size due when they were queued."""
    queue = ModelQueue()
    gate, calls, limit = threading.Event(), [], [4]
    running = queue.submit(PRIORITIES["final"], gate.wait)

    def work(items: list) -> list:
        calls.append(list(items))
        return items

    waiting = [queue.submit_items(PRIORITIES["file"], "model", [i], work, lambda: limit[0]) for i in range(4)]
    limit[0] = 1  # live work came while they waited
    gate.set()
    running.result(timeout=5)
    assert [f.result(timeout=5) for f in waiting] == [[0], [1], [2], [3]]
    assert calls == [[0], [1], [2], [3]]
    # and without live work the same four join into one call
    gate.clear()
    calls.clear()
    limit[0] = 4
    running = queue.submit(PRIORITIES["final"], gate.wait)
    waiting = [queue.submit_items(PRIORITIES["file"], "model", [i], work, lambda: limit[0]) for i in range(4)]
    gate.set()
    assert [f.result(timeout=5) for f in waiting] == [[0], [1], [2], [3]]
    assert calls == [[0, 1, 2, 3]]


def test_bulk_work_runs_in_smaller_calls_where_more_urgent_work_would_wait_behind_it():
    from deployments.speech.model_queue import segments_per_call

    def size(priority, file_segments="auto", on_gpu=False, live_about=True, whole=4, job_segments=2,
             others_about=True):
        return segments_per_call(priority, whole, job_segments, file_segments, on_gpu, live_about, others_about)

    assert size("final") == size("draft") == size("partial") == 4  # live work: whole batches
    assert size("file", live_about=False) == 4  # no live work about: files batch as Serve forms them
    assert size("file") == 1 and size("file", on_gpu=True) == 4  # auto: one segment on CPU, the batch on a GPU
    assert size("file", file_segments=2, on_gpu=True) == 2 and size("file", file_segments=8) == 4
    assert size("job", live_about=False) == 2 and size("job", job_segments=8) == 4
    assert size("job", others_about=False) == 4  # jobs alone on the model: nothing waits behind their calls
