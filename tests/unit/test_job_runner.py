"""Jobs without Ray: the store's claims, the allow-list, Standard Webhooks signatures (checked by the spec's own
library), and the runner over the real pipeline with fake deployments (glue code): job priority, resume without
re-transcribing, cancel, webhook retries, expiry, the jobs' own admission budget."""

import asyncio
import json
import time

import numpy as np
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from deployments.speech.catalog import ModelCatalog
from deployments.speech.errors import InvalidRequest, TooBusy
from deployments.speech.job_runner import Jobs
from deployments.speech.jobs import JobOptions, allowed_url, webhook_headers
from deployments.speech.pipeline import TranscriptionPipeline
from deployments.speech.schemas import SegmentTokens, SpeechSegment
from deployments.speech.settings import AppSettings
from tests.helpers import SAMPLE_RATE, TaskCall, encode

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SEGMENTS = [(0, 1), (2, 3), (4, 5)]  # seconds


class Deployments:
    """The Segmenter, Transcriber and Aligner as the pipeline sees them; records each transcription's priority."""

    def __init__(self, model_s: float = 0.0):
        self.model_s = model_s
        self.calls: list[tuple[int, str]] = []  # (start second, priority), once transcribed
        self.issued = 0

    async def put(self, audio):
        return audio

    async def segments(self, audio_ref):
        for start, end in SEGMENTS:
            yield [SpeechSegment(start=start * SAMPLE_RATE, end=end * SAMPLE_RATE)]

    def transcribe(self, audio_ref, start, end, model, keyterms=None, priority="file"):
        self.issued += 1

        async def work():
            await asyncio.sleep(self.model_s)
            self.calls.append((start // SAMPLE_RATE, priority))
            return SegmentTokens(text=f"w{start // SAMPLE_RATE}")
        return TaskCall(work())

    async def collect(self, call):
        return await call.task

    async def align(self, pieces, duration):
        return [], []


def make_jobs(tmp_path, deployments: Deployments, posts: list | None = None, answers=(200,), **jobs) -> Jobs:
    settings = AppSettings(jobs={"storage": str(tmp_path), "url_prefixes": ["https://hooks.example/"],
                                 "webhook_secret": SECRET, **jobs})
    catalog = ModelCatalog(settings.served_models, settings.model_aliases, settings.keyterms)
    replies = list(answers)

    async def post(url, body, headers, timeout_s):
        posts.append((url, body, headers, time.time()))
        return replies.pop(0) if len(replies) > 1 else replies[0]

    return Jobs(TranscriptionPipeline(deployments, settings), catalog, settings, owner="test", post=post)


def six_seconds() -> bytes:
    return encode(np.random.default_rng(0).standard_normal(6 * SAMPLE_RATE).astype(np.float32) * 0.01)


async def until_finished(jobs: Jobs, job_id: str, timeout_s: float = 10):
    deadline = time.monotonic() + timeout_s
    while jobs.store.get(job_id).has_work:
        assert time.monotonic() < deadline, jobs.store.get(job_id)
        await jobs.tick()
        await asyncio.sleep(0.01)
    return jobs.store.get(job_id)


def test_signatures_verify_with_the_standard_webhooks_library():
    body = json.dumps({"type": "transcription.job.completed", "data": {"id": "job_1"}}).encode()
    headers = webhook_headers(SECRET, "msg_job_1", body)
    assert Webhook(SECRET).verify(body, headers)["data"]["id"] == "job_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"job_1", b"job_2"), headers)
    with pytest.raises(WebhookVerificationError):  # another secret
        Webhook("whsec_" + "QUJD" * 8).verify(body, headers)


def test_urls_only_under_the_allowed_prefixes():
    prefixes = ["https://bucket.example/audio/"]
    assert allowed_url("https://bucket.example/audio/a.wav", prefixes, "url")
    for url in ["https://bucket.example/other/a.wav", "https://bucket.example.evil/audio/a.wav",
                "https://user@bucket.example/audio/a.wav", "https://bucket.example/audio/../secret",
                "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/"]:
        with pytest.raises(InvalidRequest, match="url"):
            allowed_url(url, prefixes, "url")
    with pytest.raises(InvalidRequest, match="jobs.url_prefixes"):  # the shipped default: nothing is allowed
        allowed_url("https://bucket.example/audio/a.wav", [], "url")


def test_one_replica_holds_a_job_until_its_lease_lapses(tmp_path):
    jobs = make_jobs(tmp_path, Deployments())
    record = asyncio.run(jobs.submit(JobOptions(), six_seconds()))
    first = jobs.store.claim(record.id, lease_s=0.3, owner="a")
    assert first is not None and jobs.store.claim(record.id, lease_s=0.3, owner="b") is None
    time.sleep(0.4)  # not renewed: stale
    second = jobs.store.claim(record.id, lease_s=0.3, owner="b")
    assert second is not None and second.generation == first.generation + 1
    assert first.lost() and not second.lost()


def test_a_job_runs_as_background_work_and_a_resumed_one_skips_what_was_kept(tmp_path):
    deployments = Deployments()
    jobs = make_jobs(tmp_path, deployments)

    async def scenario():
        record = await jobs.submit(JobOptions(response_format="text"), six_seconds())
        assert record.status == "queued"
        # an earlier run (a replica that died) kept the first segment
        jobs.store.keep_segment(record.id, f"0:0:{SAMPLE_RATE}", SegmentTokens(text="kept"))
        return await until_finished(jobs, record.id)

    record = asyncio.run(scenario())
    assert record.status == "completed" and record.progress.audio_s_done == record.progress.audio_s_total == 6.0
    assert deployments.calls == [(2, "job"), (4, "job")]  # not the kept one, and all as job work
    assert jobs.result(record.id)[1].text == "kept w2 w4"
    keys = [key for key, _ in jobs.store.segment_lines(record.id)]
    assert len(keys) == len(set(keys)) == 3


def test_a_cancelled_job_sends_no_more_segments_and_a_finished_one_is_deleted(tmp_path):
    deployments = Deployments(model_s=0.2)
    jobs = make_jobs(tmp_path, deployments, segments_in_flight=1)

    async def scenario():
        queued = await jobs.submit(JobOptions(), six_seconds())
        assert jobs.delete(queued.id).status == "cancelled"  # nobody ran it: cancelled at once
        running = await jobs.submit(JobOptions(), six_seconds())
        await jobs.tick()
        while not deployments.calls:
            await asyncio.sleep(0.01)
        assert jobs.delete(running.id).deleted is False
        issued = deployments.issued
        record = await until_finished(jobs, running.id)
        await asyncio.sleep(0.5)
        return queued, record, issued

    queued, record, issued = asyncio.run(scenario())
    # nothing sent after the cancel (the one segment in flight then may finish)
    assert record.status == "cancelled" and deployments.issued == issued < len(SEGMENTS)
    assert jobs.delete(queued.id).deleted and not (tmp_path / "jobs" / queued.id).exists()


def test_a_webhook_is_retried_until_answered_and_a_4xx_stops_it(tmp_path):
    posts: list = []
    jobs = make_jobs(tmp_path, Deployments(), posts, answers=(500, None, 200), webhook_retry_s=[0.1, 0.2, 0.3])

    async def scenario(options):
        record = await jobs.submit(options, six_seconds())
        return await until_finished(jobs, record.id)

    record = asyncio.run(scenario(JobOptions(webhook_url="https://hooks.example/a")))
    assert record.webhook.delivered and record.webhook.attempts == 3 and len(posts) == 3
    gaps = [b[3] - a[3] for a, b in zip(posts, posts[1:])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2, gaps
    assert len({p[2]["webhook-id"] for p in posts}) == 1  # one message, retried
    assert Webhook(SECRET).verify(posts[-1][1], posts[-1][2])["data"]["status"] == "completed"

    posts.clear()
    jobs = make_jobs(tmp_path, Deployments(), posts, answers=(410,), webhook_retry_s=[0.1, 0.2])
    record = asyncio.run(scenario(JobOptions(webhook_url="https://hooks.example/b")))
    assert record.webhook.gave_up and record.webhook.attempts == 1 and len(posts) == 1


def test_webhooks_need_an_allowed_url_and_a_secret(tmp_path):
    jobs = make_jobs(tmp_path, Deployments())
    with pytest.raises(InvalidRequest, match="not under an allowed prefix"):
        asyncio.run(jobs.submit(JobOptions(webhook_url="https://elsewhere.example/"), six_seconds()))
    jobs.settings.webhook_secret = None
    with pytest.raises(InvalidRequest, match="webhook secret"):
        asyncio.run(jobs.submit(JobOptions(webhook_url="https://hooks.example/a"), six_seconds()))


def test_finished_jobs_expire_and_unfinished_ones_have_a_budget(tmp_path):
    jobs = make_jobs(tmp_path, Deployments(), result_ttl_s=0.2, max_unfinished=1)

    async def scenario():
        first = await jobs.submit(JobOptions(), six_seconds())
        with pytest.raises(TooBusy) as refused:
            await jobs.submit(JobOptions(), six_seconds())
        assert refused.value.status == 429 and refused.value.headers["Retry-After"]
        await until_finished(jobs, first.id)
        await asyncio.sleep(0.3)
        jobs._swept_at = 0.0  # the next tick sweeps
        await jobs.tick()
        return first

    first = asyncio.run(scenario())
    assert not (tmp_path / "jobs" / first.id).exists()
