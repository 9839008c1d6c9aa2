"""Transcription jobs: submitted, followed, run and resumed by whichever Ingress replica gets there (Ray-free).

Every Ingress replica runs a ``Jobs`` loop beside its requests. It looks for jobs with work left in the shared store
(``speech/jobs.py``), claims one, and runs it through the same pipeline as a synchronous request, with three
differences: its segments are background work in the Transcriber (behind live and synchronous work, a few at a time),
each finished segment is stored the moment it arrives, and a segment stored by an earlier run is not sent again. So a
dead Ingress costs the job only the segments in flight (another replica claims it once its lease lapses), a dead
Transcriber costs nothing (the segment is retried), and a restarted application resumes every unfinished job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Awaitable, Callable, Optional

from .catalog import ModelCatalog
from .errors import ApiError, Conflict, InternalError, InvalidRequest, PayloadTooLarge, TooBusy
from .jobs import (FINISHED, JobDeleted, JobList, JobOptions, JobRecord, JobStore, Lease, WebhookDelivery,
                   allowed_url, new_job_id, webhook_headers)
from .pipeline import TranscriptionPipeline
from .protocol import ErrorInfo, OpenAIRequest
from .schemas import SegmentTokens, TranscriptionResult
from .settings import AppSettings, JobSettings
from .uploads import UploadForm

log = logging.getLogger(__name__)
MAX_RUNS = 5  # a job whose runs keep failing for passing reasons fails after this many
EXPIRY_SWEEP_S = 60.0

# (url, max_bytes, timeout_s) -> the body; (url, body, headers, timeout_s) -> the HTTP status (None: no answer)
Fetch = Callable[[str, int, float], Awaitable[bytes]]
Post = Callable[[str, bytes, dict, float], Awaitable[Optional[int]]]


class JobCancelled(Exception):
    """The job was cancelled (or another replica took it over): stop before the next segment."""


async def http_fetch(url: str, max_bytes: int, timeout_s: float) -> bytes:
    """GET ``url`` (no redirects: they could leave the allow-list), counting bytes as they arrive."""
    import aiohttp  # (Ray Serve's own HTTP client library: no extra dependency)

    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=max(timeout_s, 60.0))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise InvalidRequest(f"Fetching the job's url answered HTTP {response.status}.",
                                     code="url_fetch_failed")
            chunks, received = [], 0
            async for chunk in response.content.iter_chunked(1 << 16):
                received += len(chunk)
                if received > max_bytes:
                    raise PayloadTooLarge(f"The file at the job's url is larger than the "
                                          f"{max_bytes // (1024 * 1024)} MB limit.", code="file_too_large")
                chunks.append(chunk)
    return b"".join(chunks)


async def http_post(url: str, body: bytes, headers: dict, timeout_s: float) -> int | None:
    """POST a webhook; its HTTP status, or None when there was no answer (refused, timed out)."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.post(url, data=body, allow_redirects=False,
                                    headers={"content-type": "application/json", **headers}) as response:
                return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("Webhook %s: %s", url, exc)
        return None


class JobSegments:
    """The pipeline's ``SegmentStore`` for one run of one job."""

    def __init__(self, store: JobStore, record: JobRecord, settings: JobSettings, should_stop: Callable[[], bool],
                 channels: int):
        self.store = store
        self.record = record
        self.in_flight = settings.segments_in_flight
        self.should_stop = should_stop
        self.kept = store.segments(record.id)
        self.through = {channel: 0.0 for channel in range(channels)}
        self._saved_at = 0.0

    def known(self, key: str) -> SegmentTokens | None:
        return self.kept.get(key)

    def keep(self, key: str, tokens: SegmentTokens) -> None:
        self.store.keep_segment(self.record.id, key, tokens)
        self.kept[key] = tokens

    def check(self) -> None:
        if self.should_stop():
            raise JobCancelled()

    def done_through(self, channel: int, seconds: float) -> None:
        self.through[channel] = max(self.through.get(channel, 0.0), seconds)
        self.record.progress.audio_s_done = round(min(self.through.values()), 3)
        if time.monotonic() - self._saved_at > 1.0:  # progress is written about once a second
            self._saved_at = time.monotonic()
            self.store.save(self.record)


class Jobs:
    """The job API of one Ingress replica, and its runner."""

    def __init__(self, pipeline: TranscriptionPipeline, catalog: ModelCatalog, settings: AppSettings, owner: str,
                 fetch: Fetch = http_fetch, post: Post = http_post):
        self.settings = settings.jobs
        self.max_upload_bytes = settings.limits.max_upload_bytes
        self.store = JobStore(self.settings.storage)
        self.pipeline = pipeline
        self.catalog = catalog
        self.owner = owner
        self.fetch = fetch
        self.post = post
        self.running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._swept_at = 0.0

    # ------------------------------------------------------------------------------------------ the API

    async def submit(self, options: JobOptions, audio: bytes | None) -> JobRecord:
        """A new job (202): checked now (the model, its keyterms, the URLs), run by whichever replica claims it."""
        if (audio is None) == (options.url is None):
            raise InvalidRequest("Send the audio as the 'file' field or give a 'url' to fetch it from (one of them).",
                                 code="missing_file")
        if options.url is not None:
            allowed_url(options.url, self.settings.url_prefixes, "url")
        if options.webhook_url is not None:
            allowed_url(options.webhook_url, self.settings.url_prefixes, "webhook_url")
            if self.settings.webhook_secret is None:
                raise InvalidRequest("This service has no webhook secret (jobs.webhook_secret), so it cannot sign "
                                     "webhooks; poll the job instead.", code="webhooks_not_configured")
        await self.pipeline.checked(self.catalog.choose(options.model, options.language, options.keyterms,
                                                        options.keyterms_boost))
        if len(self.store.unfinished()) >= self.settings.max_unfinished:
            raise TooBusy(f"{self.settings.max_unfinished} jobs are queued or running; retry later.",
                          retry_after_s=30, code="too_many_jobs")
        record = JobRecord(id=new_job_id(), created_at=round(time.time(), 3), options=options,
                           webhook=WebhookDelivery(url=options.webhook_url) if options.webhook_url else None)
        await asyncio.to_thread(self.store.create, record, audio)
        self._wake.set()
        return record

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def result(self, job_id: str) -> tuple[JobRecord, TranscriptionResult]:
        record = self.store.get(job_id)
        if record.status != "completed":
            why = f": {record.error.message}" if record.error else ""
            raise Conflict(f"Job {job_id} is {record.status}{why}; its result exists once it is completed.",
                           code="job_not_completed")
        return record, self.store.result(job_id)

    def delete(self, job_id: str) -> JobDeleted:
        """An unfinished job is cancelled (its record stays, ``cancelled``); a finished one is deleted with its
        audio and result."""
        record = self.store.get(job_id)
        if record.status in FINISHED:
            self.store.delete(job_id)
            return JobDeleted(id=job_id, status=record.status, deleted=True)
        self.store.cancel(job_id)
        if job_id not in self.running and (lease := self.store.claim(job_id, self.settings.lease_s, self.owner)):
            try:  # nobody runs it now: it is cancelled here and then
                self._finish(self.store.get(job_id), "cancelled")
            finally:
                lease.release()
        self._wake.set()
        return JobDeleted(id=job_id, status=self.store.get(job_id).status, deleted=False)

    def page(self, limit: int, after: str | None) -> JobList:
        if not 1 <= limit <= 100:
            raise InvalidRequest(f"limit must be between 1 and 100; got {limit}.", code="invalid_parameter")
        records, more = self.store.page(limit, after)
        return JobList(data=[r.view() for r in records], has_more=more, last_id=records[-1].id if records else None)

    def result_as(self, job_id: str, response_format: str | None, granularities: list[str] | None = None
                  ) -> tuple[OpenAIRequest, TranscriptionResult]:
        """The result and how to render it: ``response_format`` and ``timestamp_granularities`` as asked (checked
        like the synchronous request's), else as the job was submitted."""
        record, result = self.result(job_id)
        form = UploadForm(fields={"response_format": [response_format or record.options.response_format],
                                  "timestamp_granularities[]": granularities or record.options.granularities})
        return OpenAIRequest.from_form(form), result

    # ------------------------------------------------------------------------------------------ the runner

    async def run_forever(self) -> None:
        """The replica's loop: claim what has work left, run it, look again every ``poll_s`` (or on a submit)."""
        while True:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad job or a storage hiccup
                log.exception("Job loop")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)
            self._wake.clear()

    async def tick(self) -> None:
        """Expire old jobs, then claim what is due, up to this replica's free slots. The storage is read on a worker
        thread: a scan over many jobs (or a slow network filesystem) never holds the event loop."""
        now = time.time()
        if now - self._swept_at > EXPIRY_SWEEP_S:
            self._swept_at = now
            await asyncio.to_thread(self._expire, now)
        free = self.settings.jobs_per_replica - len(self.running)
        if free > 0:
            for job_id, lease in await asyncio.to_thread(self._claim_due, now, free, set(self.running)):
                self.running[job_id] = asyncio.create_task(self._hold(job_id, lease))

    def _expire(self, now: float) -> None:
        for job_id in list(self.store.expired(now, self.settings.result_ttl_s)):
            log.info("Job %s expired", job_id)
            with contextlib.suppress(ApiError):
                self.store.delete(job_id)

    def _claim_due(self, now: float, free: int, running: set[str]) -> list[tuple[str, Lease]]:
        claimed: list[tuple[str, Lease]] = []
        for job_id in self.store.unfinished():
            if len(claimed) >= free:
                break
            if job_id in running:
                continue
            with contextlib.suppress(ApiError):  # deleted meanwhile
                record = self.store.get(job_id)
                if record.not_before is not None and record.not_before > now:
                    continue
                if record.webhook and record.status in FINISHED and (record.webhook.next_at or 0) > now + 1:
                    continue  # a webhook retry not due yet: claim it when it is
                lease = self.store.claim(job_id, self.settings.lease_s, self.owner)
                if lease is not None:
                    claimed.append((job_id, lease))
        return claimed

    async def _hold(self, job_id: str, lease: Lease) -> None:
        """Run the job while renewing the lease; stop if it is lost (another replica took the job over)."""
        work = asyncio.create_task(self._run(job_id, lambda: lease.lost()))
        cancelled = False
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=min(1.0, self.settings.lease_s / 3))
                if work.done():
                    break
                if lease.lost():
                    log.warning("Job %s was taken over by another replica", job_id)
                    work.cancel()
                    break
                if self.store.cancelled(job_id):  # its segments in flight are cancelled with it
                    cancelled = True
                    work.cancel()
                    break
                lease.renew()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            if cancelled:
                self._finish(self.store.get(job_id), "cancelled")
        except Exception:  # noqa: BLE001 - logged; the job is retried by whoever claims it next
            log.exception("Job %s", job_id)
        finally:
            if not work.done():
                work.cancel()
            lease.release()
            self.running.pop(job_id, None)
            self._wake.set()

    async def _run(self, job_id: str, lost: Callable[[], bool]) -> None:
        record = self.store.get(job_id)
        if record.status not in FINISHED:
            await self._transcribe(record, lost)
        if record.has_work and record.status != "cancelled":
            await self._deliver(record, lost)

    async def _transcribe(self, record: JobRecord, lost: Callable[[], bool]) -> None:
        job_id = record.id
        if self.store.cancelled(job_id):
            return self._finish(record, "cancelled")
        record.status, record.runs, record.not_before = "running", record.runs + 1, None
        record.started_at = record.started_at or round(time.time(), 3)
        self.store.save(record)
        options = record.options
        try:
            audio = await self._audio(record)
            choice = await self.pipeline.checked(self.catalog.choose(options.model, options.language,
                                                                     options.keyterms, options.keyterms_boost))
            loaded = await self.pipeline.load(audio, multichannel=options.multichannel)
            del audio
            record.progress.audio_s_total = round(loaded.duration, 3)
            segments = JobSegments(self.store, record, self.settings,
                                   lambda: lost() or self.store.cancelled(job_id),
                                   len(loaded.samples) if loaded.samples.ndim == 2 else 1)
            # (a job's result is kept for every format, so its words and segments are timed: the Aligner runs)
            result = await self.pipeline.transcribe(loaded, timestamps=True, vad=options.vad, model=choice,
                                                    logprobs=options.logprobs, job=segments)
        except JobCancelled:
            if lost():
                return  # the new holder carries on
            return self._finish(record, "cancelled")
        except ApiError as exc:
            if exc.status < 500 or record.runs >= MAX_RUNS:
                return self._finish(record, "failed", ErrorInfo.of(exc))
            return self._later(record, exc)
        except Exception as exc:  # noqa: BLE001 - the job fails with a clean message; the log has the details
            log.exception("Job %s failed", job_id)
            if record.runs >= MAX_RUNS:
                return self._finish(record, "failed", ErrorInfo.of(InternalError("Internal server error.")))
            return self._later(record, exc)
        await asyncio.to_thread(self.store.save_result, job_id, result)
        record.progress.audio_s_done = record.progress.audio_s_total or 0.0
        self._finish(record, "completed")

    async def _audio(self, record: JobRecord) -> bytes:
        path = self.store.audio_path(record.id)
        if not path.exists():  # a url job's first run: fetched once, then kept like an upload
            data = await self.fetch(record.options.url, self.max_upload_bytes, self.settings.webhook_timeout_s)
            await asyncio.to_thread(path.write_bytes, data)
            return data
        return await asyncio.to_thread(path.read_bytes)

    def _later(self, record: JobRecord, exc: Exception) -> None:
        """A passing failure (a replica died twice under a segment, the service at capacity): run it again after
        ``retry_s``; the segments already finished are kept."""
        log.warning("Job %s: run %d stopped (%s); retrying in %.0f s", record.id, record.runs, exc,
                    self.settings.retry_s)
        record.status, record.not_before = "queued", time.time() + self.settings.retry_s
        self.store.save(record)

    def _finish(self, record: JobRecord, status: str, error: ErrorInfo | None = None) -> None:
        record.status, record.error, record.finished_at = status, error, round(time.time(), 3)
        if record.webhook is not None and status != "cancelled":
            record.webhook.next_at = record.finished_at
        self.store.save(record)
        log.info("Job %s %s", record.id, status)

    async def _deliver(self, record: JobRecord, lost: Callable[[], bool]) -> None:
        """POST the Standard Webhooks-signed event until it is answered 2xx; a 4xx (but 408 and 429) stops the
        tries, and so does running out of ``webhook_retry_s`` waits. Each try is saved, so a replica that takes
        the job over carries on from the same try."""
        webhook = record.webhook
        body = json.dumps({"type": f"transcription.job.{record.status}", "timestamp": record.finished_at,
                           "data": record.view().model_dump()}, separators=(",", ":")).encode()
        secret = self.settings.webhook_secret.get_secret_value()
        while not (webhook.delivered or webhook.gave_up) and not lost():
            if (wait := (webhook.next_at or 0) - time.time()) > 1:
                return  # the lease goes back; the loop claims the job again when the try is due
            await asyncio.sleep(max(0.0, wait))
            headers = webhook_headers(secret, f"msg_{record.id}", body)
            status = await self.post(webhook.url, body, headers, self.settings.webhook_timeout_s)
            webhook.attempts, webhook.last_status = webhook.attempts + 1, status
            if status is not None and 200 <= status < 300:
                webhook.delivered = True
            elif status is not None and 400 <= status < 500 and status not in (408, 429):
                webhook.gave_up = True
            elif webhook.attempts > len(self.settings.webhook_retry_s):
                webhook.gave_up = True
            else:
                webhook.next_at = time.time() + self.settings.webhook_retry_s[webhook.attempts - 1]
            self.store.save(record)
            log.info("Job %s webhook try %d: %s", record.id, webhook.attempts, status)

