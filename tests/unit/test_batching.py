"""One bad item in a batch fails only its own request (fake model: this is glue code)."""

from deployments.speech.batching import ItemFailure, run_isolated
from deployments.speech.errors import InternalError, InvalidRequest


def fake_model(items):
    if "crash" in items:
        raise RuntimeError("CUDA error: boom")
    if "bad" in items:
        raise InvalidRequest("bad item")
    return [item.upper() for item in items]


def test_good_batch_runs_once():
    calls = []
    assert run_isolated(lambda xs: calls.append(list(xs)) or fake_model(xs), ["a", "b"]) == ["A", "B"]
    assert calls == [["a", "b"]]


def test_bad_items_fail_alone():
    results = run_isolated(fake_model, ["a", "crash", "b", "bad"])
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], ItemFailure) and isinstance(results[1].error, InternalError)
    assert "CUDA" not in results[1].error.message  # no internals reach the client
    assert isinstance(results[3], ItemFailure) and isinstance(results[3].error, InvalidRequest)
