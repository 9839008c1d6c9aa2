"""Health under a real burst, on the shipped config: 400 short requests, 200 at a time (each sent again after
Retry-After while it is shed, as the OpenAI SDK does), while a prober reads /healthz and /readyz. Every request is
served in the end, the only refusals are 429s, every probe is answered 200, and Kubernetes, probing with its defaults
(``timeoutSeconds: 1``, ``failureThreshold: 3``), would never have failed the pod: no three probes of an endpoint in a
row took a second or more. That is far stricter than a kubelet: the prober reads each endpoint as soon as its last
probe is answered (~0.2 s apart), so three slow ones in a row here are a stall of about 3 s, where a kubelet, probing
every ``periodSeconds: 10``, fails a pod only after ~20 s of them. The bulk of the probes answer well within that
second (p95 < 1 s).

The probes are read from a process of their own, as a kubelet reads them. Measured here (2 cores, the load generator on
them too; bench/results/README.md, "health-under-load"): p90 0.08-0.26 s over seven runs, p95 0.12 s in the one that
printed it, p99 0.5-0.85 s (1.03 s in one CI run), max 1.2-2.4 s, Ray Serve's own
proxy endpoint (``/-/healthz``, which never reaches a replica), read beside them, p99 0.03-0.07 s. The slowest probes
come in two places: the burst's first seconds (200 requests reach the Ingress at once) and the seconds after an
autoscaling step starts new replica processes on the 2 busy cores (the Segmenter 1 -> 4, the Ingress 1 -> 3, ~30 s into
a burst that lasts longer than Serve's upscale delay); each is one or two slow probes, never three in a row. What it
took: no ``ray.put`` or metric recording on the Ingress's event loop, the Segmenter scaling to 4 replicas, not 8, on 2
cores, and a refused request told to come back when the audio admitted before it is done (``Admission.retry_after_s``);
with a fixed 2 s Retry-After the refused clients came back ~1,200 times, each refusal a trip through Serve's request
path on the Ingress, and the probes' p99 was 3-4 s. Before the readiness check stopped calling ``serve.status()`` and
the Ingress's ``max_ongoing_requests`` went from 128 to 1024: p99 7.3-9.7 s."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time

import httpx
import numpy as np
import pytest

from tests.helpers import encode, phrase_recording, random_phrases

pytestmark = pytest.mark.integration
REQUESTS = 400
CONCURRENCY = 200
PROBE_TIMEOUT_S = 1.0  # Kubernetes' default timeoutSeconds
FAILURE_THRESHOLD = 3  # and failureThreshold: this many failed probes in a row fail the pod


@pytest.fixture(scope="module")
def app(shipped_digits_app):
    return shipped_digits_app


def wait_until_ready(app) -> None:
    """As a load balancer does: traffic only once the readiness probe says so."""
    deadline = time.monotonic() + 120
    while httpx.get(app.url + "/readyz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.5)


def probe_until(urls: list[str], probing, stop, found) -> None:
    """The prober, in a process of its own as a kubelet is: each probe URL in turn, every 0.1 s, until ``stop``;
    ``(url, seconds, status, body)`` for each into ``found``. ``probing`` is set once its connection is open: it is
    probing before the burst starts, as a kubelet is (a connection opened in the burst's first instant waits behind
    the 200 clients' connects in Ray Serve's proxy, 1.4-1.7 s here, before any replica sees the probe)."""
    with httpx.Client(timeout=30) as prober:
        prober.get(urls[0])
        probing.set()
        while not stop.is_set():
            for url in urls:
                started = time.perf_counter()
                response = prober.get(url)
                found.put((url, time.perf_counter() - started, response.status_code, response.text[:200]))
            time.sleep(0.1)


def longest_run_over(latencies: list[float], limit_s: float) -> int:
    """The most probes in a row (in the order they were sent) that took ``limit_s`` or more."""
    longest = run = 0
    for seconds in latencies:
        run = run + 1 if seconds >= limit_s else 0
        longest = max(longest, run)
    return longest


def test_longest_run_over_counts_consecutive_slow_probes_only():
    assert longest_run_over([0.1, 1.2, 1.5, 0.2, 1.1, 1.0, 1.3, 0.1], 1.0) == 3
    assert longest_run_over([1.2, 0.1, 1.2, 0.1], 1.0) == 1 and longest_run_over([], 1.0) == 0


def test_kubernetes_would_never_fail_a_probe_while_200_clients_saturate_the_node(app):
    wait_until_ready(app)
    rng = random.Random(60)
    files = [encode(phrase_recording(p, voice=i % 4, rng=rng).audio) for i, p in enumerate(random_phrases(rng, 20))]
    # (/-/healthz: Ray Serve's proxy answers it itself; the control that shows how saturated the node is)
    paths = {"/healthz": app.url + "/healthz", "/readyz": app.url + "/readyz",
             "/-/healthz": app.url.rsplit("/", 1)[0] + "/-/healthz"}
    probes: dict[str, list[float]] = {path: [] for path in paths}
    statuses: list[int] = []
    told: list[int] = []  # each refusal's Retry-After
    burst_s: list[float] = []
    bad: list[str] = []

    async def burst() -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=300, limits=limits) as clients:
            slots = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int) -> None:
                """One request, sent again after Retry-After while it is shed, as the OpenAI SDK does."""
                async with slots:
                    while True:
                        response = await clients.post(app.url + "/v1/audio/transcriptions",
                                                      files={"file": ("a.wav", files[i % len(files)])})
                        statuses.append(response.status_code)
                        if response.status_code != 429:
                            break
                        told.append(int(response.headers["Retry-After"]))
                        await asyncio.sleep(int(response.headers["Retry-After"]))

            await asyncio.gather(*[one(i) for i in range(REQUESTS)])
            # the probes cover the burst alone: the client's teardown after the last answer took up to a minute
            # here, and the probes of an idle service read meanwhile thinned the tail out
            stop.set()
            burst_s.append(time.monotonic() - burst_started)

    spawn = multiprocessing.get_context("spawn")
    probing, stop, found = spawn.Event(), spawn.Event(), spawn.Queue()
    prober = spawn.Process(target=probe_until, args=(list(paths.values()), probing, stop, found), daemon=True)
    prober.start()
    assert probing.wait(timeout=60), "the prober never connected"
    burst_started = time.monotonic()
    try:
        asyncio.run(burst())
    finally:
        stop.set()
        prober.join(timeout=60)
    by_url = {url: path for path, url in paths.items()}
    while not found.empty():
        url, seconds, status, body = found.get()
        probes[by_url[url]].append(seconds)
        if status != 200:
            bad.append(f"{by_url[url]}: {status} {body}")
    p95 = {path: float(np.percentile(latencies, 95)) for path, latencies in probes.items()}
    p99 = {path: float(np.percentile(latencies, 99)) for path, latencies in probes.items()}
    in_a_row = {path: longest_run_over(latencies, PROBE_TIMEOUT_S) for path, latencies in probes.items()}
    print("probe ms p50 / p90 / p95 / p99 / max:", {path: [round(float(np.percentile(latencies, q)) * 1000)
                                                         for q in (50, 90, 95, 99, 100)]
                                                  for path, latencies in probes.items()})
    print(f"burst: {burst_s[0]:.0f} s, {statuses.count(200)} served, Retry-After up to {max(told, default=0)} s, "
          f"{statuses.count(429)} times shed; probe p99 "
          + ", ".join(f"{path} {seconds * 1000:.0f} ms over {len(probes[path])}" for path, seconds in p99.items())
          + f"; most probes in a row over {PROBE_TIMEOUT_S:g} s: {in_a_row}")
    assert statuses.count(200) == REQUESTS and set(statuses) <= {200, 429}, sorted(set(statuses))
    assert not bad, bad[:5]
    assert all(len(latencies) >= 10 for latencies in probes.values())
    ours = ("/healthz", "/readyz")
    assert all(in_a_row[path] < FAILURE_THRESHOLD for path in ours), in_a_row  # the kubelet never fails the pod
    assert all(p95[path] < PROBE_TIMEOUT_S for path in ours), p95
    # the refused clients came back when told to, not every 2 s (~1,200 refusals of 400 requests before)
    assert statuses.count(429) < 2 * REQUESTS, statuses.count(429)
