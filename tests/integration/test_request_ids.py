"""Request ids: every response carries one (the client's ``X-Request-Id`` when it sent one), and the log lines of
every deployment that worked on the request carry it too, so one grep follows a request through the graph."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import encode, phrase_recording

pytestmark = pytest.mark.integration


ALL = {"Ingress", "Segmenter", "Transcriber", "Aligner"}


def deployments_that_logged(logs: Path, request_id: str, expected: set[str] = ALL, timeout_s: float = 30) -> set[str]:
    """The deployments whose replica logs mention ``request_id``, polled until ``expected`` are among them (log
    files are written asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {path.name.split("_")[2] for path in logs.glob("replica_parakeet_*.log")
                 if request_id in path.read_text(errors="replace")}
        if found >= expected or time.monotonic() > deadline:
            return found


def test_the_clients_request_id_is_echoed_and_in_every_deployments_log(digits_app, local_ray):
    logs = Path(local_ray.cluster.head_node.get_logs_dir_path()) / "serve"
    request_id = f"client-{uuid.uuid4()}"
    response = httpx.post(digits_app.url + "/v1/audio/transcriptions", headers={"X-Request-Id": request_id},
                          files={"file": ("a.wav", encode(phrase_recording(["four", "two"], voice=0).audio))},
                          data={"response_format": "verbose_json", "timestamp_granularities[]": "word"}, timeout=60)
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id
    assert deployments_that_logged(logs, request_id) == ALL


def test_requests_without_an_id_get_one_and_errors_carry_it_too(digits_app, local_ray):
    logs = Path(local_ray.cluster.head_node.get_logs_dir_path()) / "serve"
    ok = httpx.post(digits_app.url + "/v1/audio/transcriptions", timeout=60,
                    files={"file": ("a.wav", encode(phrase_recording(["nine"], voice=1).audio))})
    bad = httpx.post(digits_app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", b"not audio")},
                     headers={"X-Request-Id": "bad-upload-1"}, timeout=60)
    generated = ok.headers["x-request-id"]
    assert ok.status_code == 200 and len(generated) >= 16 and generated != bad.headers["x-request-id"]
    assert bad.status_code == 415 and bad.headers["x-request-id"] == "bad-upload-1"
    no_timestamps = {"Ingress", "Segmenter", "Transcriber"}
    assert deployments_that_logged(logs, generated, no_timestamps) == no_timestamps
    assert deployments_that_logged(logs, "bad-upload-1", {"Ingress"}) == {"Ingress"}  # refused before any other
