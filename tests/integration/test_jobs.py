"""Transcription jobs through the served graph with the trained digits model: submit / poll / result in every format
(equal to the synchronous path), a URL job with its Standard Webhooks-signed callback redelivered after the receiver
fails twice, the allow-list, cancel, the Python handle, and durability: a Transcriber and the Ingress killed mid-job,
and the whole application restarted on the same storage, each completing without transcribing a segment twice."""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import stop_app
from tests.helpers import encode, kill_one_replica, long_recording, random_phrases, word_errors

pytestmark = pytest.mark.integration
SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
JOBS = "/v1/audio/transcriptions/jobs"
APP = "jobs"
FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


class Receiver:
    """A local web server: serves audio files and takes webhooks, answering each with the next scripted status."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.webhooks: list[tuple[bytes, dict, float]] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = receiver.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body or b"")

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.webhooks.append((body, dict(self.headers), time.monotonic()))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver():
    served = Receiver()
    yield served
    served.server.shutdown()


def deploy(module_app, digits_model, storage, receiver):
    return module_app({"Ingress": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}}},
                      model=str(digits_model), jobs={
                          "storage": str(storage), "url_prefixes": [receiver.url + "/audio/", receiver.url + "/hooks/"],
                          "webhook_secret": SECRET, "webhook_retry_s": [1, 1, 1, 1, 1], "lease_s": 3, "poll_s": 0.5,
                          "segments_in_flight": 2, "segments_per_model_call": 1})


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("job-storage")


@pytest.fixture(scope="module")
def app(module_app, digits_model, storage, receiver):
    assert module_app.app_name == APP
    return deploy(module_app, digits_model, storage, receiver)


@pytest.fixture(scope="module")
def short_wav() -> bytes:
    rng = random.Random(41)
    return encode(long_recording(random_phrases(rng, 6), rng, phrase_gap_s=(0.8, 2.0)).audio)


@pytest.fixture(scope="module")
def long_audio():
    """Several minutes of speech: long enough to kill things while it runs."""
    rng = random.Random(42)
    return long_recording(random_phrases(rng, 90), rng, phrase_gap_s=(0.8, 2.0))


def submit(app, wav: bytes | None = None, **fields) -> dict:
    files = {"file": ("a.wav", wav)} if wav is not None else None
    response = httpx.post(app.url + JOBS, files=files, data=fields, timeout=60)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"{JOBS}/{response.json()['id']}"
    return response.json()


def status(app, job_id: str) -> dict:
    for _ in range(120):  # an Ingress being replaced (or the app starting): the proxy answers 503 meanwhile
        try:
            response = httpx.get(f"{app.url}{JOBS}/{job_id}", timeout=10)
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 200:
            return response.json()
        time.sleep(1)
    raise AssertionError(f"job {job_id} could not be read: {response and response.text}")


def wait(app, job_id: str, until=lambda job: job["status"] in ("completed", "failed", "cancelled"),
         timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while not until(job := status(app, job_id)):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def result(app, job_id: str, response_format: str) -> httpx.Response:
    return httpx.get(f"{app.url}{JOBS}/{job_id}/result", params={"response_format": response_format,
                                                                   "timestamp_granularities[]": ["word", "segment"]},
                     timeout=60)


def kept_segments(storage, job_id: str) -> list[str]:
    lines = (storage / "jobs" / job_id / "segments.jsonl").read_text().splitlines()
    return [json.loads(line)["key"] for line in lines]


def test_a_job_gives_the_synchronous_result_in_every_format(app, short_wav):
    job = submit(app, short_wav, response_format="verbose_json")
    assert job["status"] == "queued" and job["object"] == "transcription.job"
    early = httpx.get(f"{app.url}{JOBS}/{job['id']}/result", timeout=30)
    assert early.status_code in (200, 409)  # 409 until it completes
    done = wait(app, job["id"])
    assert done["status"] == "completed" and done["progress"]["audio_s_done"] == done["progress"]["audio_s_total"] > 0
    for response_format in FORMATS:
        sync = httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", short_wav)}, timeout=120,
                          data={"response_format": response_format, "timestamp_granularities[]": ["word", "segment"]})
        got = result(app, job["id"], response_format)
        assert got.status_code == sync.status_code == 200 and got.headers["content-type"] == sync.headers[
            "content-type"], response_format
        if response_format in ("json", "text"):
            assert got.content == sync.content, response_format
        elif response_format == "verbose_json":
            ours, theirs = got.json(), sync.json()
            assert ours["text"] == theirs["text"] and [w["word"] for w in ours["words"]] == [
                w["word"] for w in theirs["words"]]
            # the same segments, batched with other neighbours: times within one 80 ms frame
            assert all(abs(a["start"] - b["start"]) <= 0.081 and abs(a["end"] - b["end"]) <= 0.081
                       for a, b in zip(ours["words"], theirs["words"]))
        else:  # the same cues (their times as above)
            assert [line for line in got.text.splitlines() if "-->" not in line] == [
                line for line in sync.text.splitlines() if "-->" not in line], response_format
    listing = httpx.get(app.url + JOBS, params={"limit": 1}, timeout=30).json()
    assert listing["object"] == "list" and len(listing["data"]) == 1 and listing["last_id"]
    assert httpx.get(f"{app.url}{JOBS}/job_0000nope/result", timeout=30).status_code == 404


def test_a_url_job_and_its_signed_webhook_redelivered_after_two_failures(app, short_wav, receiver):
    receiver.files["/audio/a.wav"] = short_wav
    receiver.answers = [500, 503]
    job = submit(app, url=receiver.url + "/audio/a.wav", webhook_url=receiver.url + "/hooks/done")
    done = wait(app, job["id"], until=lambda job: (job.get("webhook") or {}).get("delivered"))
    assert done["status"] == "completed" and done["webhook"]["attempts"] == 3
    assert len(receiver.webhooks) == 3 and receiver.webhooks[2][2] - receiver.webhooks[0][2] >= 2  # backed off
    event = Webhook(SECRET).verify(receiver.webhooks[-1][0], receiver.webhooks[-1][1])
    assert event["type"] == "transcription.job.completed" and event["data"]["id"] == job["id"]
    assert len({headers["webhook-id"] for _, headers, _ in receiver.webhooks}) == 1
    sync = httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", short_wav)}, timeout=120)
    assert result(app, job["id"], "json").json()["text"] == sync.json()["text"]


@pytest.mark.parametrize("field, value", [("url", "http://127.0.0.2/a.wav"), ("url", "https://example.com/a.wav"),
                                          ("webhook_url", "http://169.254.169.254/latest")])
def test_urls_outside_the_allow_list_are_refused(app, short_wav, field, value):
    fields = {field: value}
    response = httpx.post(app.url + JOBS, data=fields, timeout=30,
                          files={"file": ("a.wav", short_wav)} if field == "webhook_url" else None)
    assert response.status_code == 400 and "allowed prefix" in response.json()["error"]["message"]


def transcriber_stats(app_name: str) -> dict:
    """The (one) Transcriber replica's counters."""
    from ray import serve

    return serve.get_deployment_handle("Transcriber", app_name=app_name).stats.remote().result()


def transcriber_job_items(app_name: str) -> int:
    """Job segments the Transcriber has taken into a model call."""
    return transcriber_stats(app_name)["items_by_priority"]["job"]


def test_a_jobs_batches_run_as_smaller_model_calls_while_other_work_is_about(app, long_audio):
    """While other work comes to the Transcriber (any in its last 2 s), it waits behind at most one job model call
    of ``jobs.segments_per_model_call`` segments (1 in this app), not a whole Serve batch: each call is queued on its
    own, and more urgent work that comes meanwhile runs first. (Jobs alone on the model run whole batches:
    ``model_queue.segments_per_call``, tests/unit/test_model_queue.py.) Here a synchronous client's segments come
    one after another while the job runs. A job keeps only 2 segments in flight, so whether two of them meet in one
    Serve batch is timing; the splitting itself is shown on a burst of job-priority calls that Serve batches,
    beside the same burst as file work, whose batches stay one model call each."""
    import threading

    import numpy as np
    from ray import serve

    from deployments.speech.model_queue import PRIORITIES

    def counts(priority: str) -> tuple[int, int, int]:
        stats = transcriber_stats(APP)
        return (stats["items_by_priority"][priority], stats["batches_by_priority"][priority],
                stats["calls_started"][PRIORITIES[priority]])

    def since(then: tuple[int, int, int], priority: str) -> tuple[int, int, int]:
        return tuple(after - before for after, before in zip(counts(priority), then))

    transcriber = serve.get_deployment_handle("Transcriber", app_name=APP)
    segment = np.ascontiguousarray(long_audio.audio[:3 * 16000], dtype=np.float32)
    started, done = threading.Event(), threading.Event()

    def synchronous_client() -> None:
        while not done.is_set():
            assert transcriber.transcribe.remote(segment, priority="file").result().text
            started.set()

    before = counts("job")
    client = threading.Thread(target=synchronous_client, daemon=True)
    client.start()
    try:
        assert started.wait(60)
        wait(app, submit(app, encode(long_audio.audio))["id"])
    finally:
        done.set()
        client.join(60)
    items, batches, calls = since(before, "job")
    print(f"a job beside a synchronous client: {items} segments in {batches} Serve batches, {calls} model calls")
    assert items > 1 and calls == items  # every segment of the job was a model call of its own

    for priority in ("job", "file"):
        if priority == "job":  # other work, just now: the burst's job calls are split
            assert transcriber.transcribe.remote(segment, priority="file").result().text
        before = counts(priority)
        responses = [transcriber.transcribe.remote(segment, priority=priority) for _ in range(12)]
        assert all(response.result().text for response in responses)
        items, batches, calls = since(before, priority)
        print(f"12 {priority} calls at once: {batches} Serve batches, {calls} model calls")
        assert items == 12 and batches < items  # Serve batched some of them ...
        if priority == "job":
            assert calls == items  # ... and each job segment still ran as a model call of its own
        else:
            assert calls <= batches  # ... while a file batch is one model call (or joins a waiting one)


def test_a_cancelled_job_does_no_more_segment_work(app, long_audio):
    job = submit(app, encode(long_audio.audio))
    wait(app, job["id"], until=lambda job: job["progress"]["audio_s_done"] > 0)
    answer = httpx.delete(f"{app.url}{JOBS}/{job['id']}", timeout=30).json()
    assert answer == {"id": job["id"], "object": "transcription.job", "status": "cancelled", "deleted": False}
    time.sleep(2)  # what was in flight at the cancel (at most segments_in_flight) is cancelled or done by now
    before = transcriber_job_items(APP)
    time.sleep(4)
    assert transcriber_job_items(APP) == before and status(app, job["id"])["status"] == "cancelled"
    assert httpx.delete(f"{app.url}{JOBS}/{job['id']}", timeout=30).json()["deleted"] is True
    assert httpx.get(f"{app.url}{JOBS}/{job['id']}", timeout=30).status_code == 404


def test_the_handle_submits_and_follows_jobs(app, short_wav):
    handle = app.handle()
    job = handle.submit_job.remote(short_wav, response_format="text").result()
    deadline = time.monotonic() + 120
    while handle.job.remote(job["id"]).result()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert handle.job_result.remote(job["id"]).result().text == handle.job_result.remote(
        job["id"], response_format="text").result().strip() != ""
    page = handle.list_jobs.remote(limit=100).result()
    assert job["id"] in [j["id"] for j in page["data"]]


def test_killed_replicas_mid_job_lose_nothing_and_repeat_no_segment(app, long_audio, storage):
    job = submit(app, encode(long_audio.audio))
    wait(app, job["id"], until=lambda job: job["progress"]["audio_s_done"] > 0)
    kill_one_replica(APP, "Transcriber")
    wait(app, job["id"], until=lambda job: job["progress"]["audio_s_done"] > 30 or job["status"] != "running")
    killed_at = status(app, job["id"])
    kill_one_replica(APP, "Ingress")
    kill_one_replica(APP, "Ingress")
    done = wait(app, job["id"])
    assert killed_at["status"] == "running" and done["status"] == "completed", (killed_at, done)
    record = json.loads((storage / "jobs" / job["id"] / "job.json").read_text())
    keys = kept_segments(storage, job["id"])
    print(f"killed at {killed_at['progress']}; {len(keys)} segments, {record['runs']} runs")
    assert record["runs"] >= 2  # the Ingress that ran it died: another replica resumed it
    assert len(keys) == len(set(keys)) > 10  # every segment transcribed once
    text = httpx.get(f"{app.url}{JOBS}/{job['id']}/result", timeout=60).json()["text"]
    assert word_errors(long_audio.text, text) <= 0.1 * len(long_audio.text.split())


def test_a_restarted_application_resumes_its_jobs(app, module_app, digits_model, storage, receiver, long_audio):
    job = submit(app, encode(long_audio.audio))
    wait(app, job["id"], until=lambda job: job["progress"]["audio_s_done"] > 0)
    stop_app(APP)
    kept = len(kept_segments(storage, job["id"]))
    restarted = deploy(module_app, digits_model, storage, receiver)
    done = wait(restarted, job["id"])
    assert done["status"] == "completed", done
    record = json.loads((storage / "jobs" / job["id"] / "job.json").read_text())
    keys = kept_segments(storage, job["id"])
    assert record["runs"] >= 2 and len(keys) == len(set(keys)) > kept > 0
