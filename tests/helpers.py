"""Test helpers: word error counts, text normalisation (recordings and encoders come from bench.audio)."""

from __future__ import annotations

from bench.audio import (DIGITS, FIXTURES, SAMPLE_RATE, Recording, encode, heldout,  # noqa: F401
                         long_recording, phrase_recording, noisy_heldout, random_phrases, word_errors)
from deployments.front_door import free_port  # noqa: F401


def wer(references: list[str], hypotheses: list[str]) -> float:
    return sum(word_errors(r, h) for r, h in zip(references, hypotheses)) / max(
        1, sum(len(r.split()) for r in references))


def assert_own_results(references: list[str], hypotheses: list[str]) -> None:
    """Each caller's text is nearer its own digits than anyone else's, and nearly all are exact."""
    for i, text in enumerate(hypotheses):
        own = word_errors(references[i], text)
        assert all(own < word_errors(other, text) for j, other in enumerate(references) if j != i), (i, text)
    assert sum(r == h for r, h in zip(references, hypotheses)) >= 0.9 * len(references)


def listening_processes(port: int) -> set[str]:
    """Names of the processes listening on ``port`` of this machine (one by one: the system-wide table may not name
    them)."""
    import psutil

    names = set()
    for process in psutil.process_iter(["name"]):
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp")):
                names.add(process.info["name"])
        except psutil.Error:
            continue
    return names


def normalise(text: str) -> str:
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split())


class Scrape:
    """One read of a Prometheus endpoint: each sample's value summed over the labels a query leaves out (replicas,
    workers, nodes)."""

    def __init__(self, metrics_url: str):
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(metrics_url, timeout=10).text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for_metrics(metrics_url: str, moved, timeout_s: float = 60) -> Scrape:
    """Scrape until ``moved(scrape)`` holds (Ray reports each process's series every second in the tests); the last
    scrape either way, for the test to assert on."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        scrape = Scrape(metrics_url)
        if moved(scrape) or time.monotonic() > deadline:
            return scrape
        time.sleep(0.5)



def require(available: bool, reason: str) -> None:
    """A test's setup it cannot do without: under ``CI=true`` (``.ci/run``) a missing piece fails the test with the
    one-line reason, so CI never quietly does less than it says; elsewhere the test is skipped, saying why."""
    import os

    import pytest

    if available:
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def kill_one_replica(app_name: str, deployment: str) -> None:
    """Kill one replica of ``deployment`` in the app (as a crash would: no restart of that actor; Serve replaces it)."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if f"{app_name}#{deployment}#" in a["name"]]
    assert names, f"no {deployment} replica found"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)


def bound_options(application) -> dict:
    """Each deployment's options as build_app bound them, by name (Ingress.bind(segmenter, transcriber, aligner))."""
    ingress = application._bound_deployment
    deployments = [ingress, *(arg._bound_deployment for arg in ingress.init_args[:3])]
    return {d.name: d for d in deployments}


class TaskCall:
    """A fake deployment call for the pipeline's unit tests: ``work`` running as a task, cancellable."""

    def __init__(self, work):
        import asyncio

        self.task = asyncio.ensure_future(work)

    def cancel(self) -> None:
        self.task.cancel()
