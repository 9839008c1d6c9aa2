"""Transcription jobs kept on disk (Ray-free): records, finished segments, results, claims, and signed webhooks.

Everything a job is lives in one directory under ``jobs.storage``, so it outlives the replica (and the application)
that ran it, and any Ingress replica on any node that mounts the same storage can answer for it::

    <storage>/jobs/<id>/job.json          the record (status, options, progress, error, webhook deliveries)
    <storage>/jobs/<id>/audio             the uploaded (or fetched) file, as sent
    <storage>/jobs/<id>/segments.jsonl    each finished segment's tokens, appended the moment they arrive
    <storage>/jobs/<id>/result.json       the finished transcript (every response format is rendered from it)
    <storage>/jobs/<id>/cancelled         written by DELETE; the runner stops before its next segment
    <storage>/jobs/<id>/lease.<n>         claims: the replica that created the newest one runs the job
    <storage>/active/<id>                 the jobs with work left (to run, to resume, a webhook to deliver)

Only the holder of a job's newest lease writes its record (a claim is ``open(O_CREAT | O_EXCL)`` of the next lease
number, atomic on local and network filesystems); every write of a record replaces the file whole.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import posixpath
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterator, Literal, Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from .errors import InvalidRequest, NotFound
from .protocol import ErrorInfo, OpenAIRequest
from .schemas import SegmentTokens, TranscriptionResult
from .uploads import UploadForm

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
FINISHED = ("completed", "failed", "cancelled")
JOB_PATH = "/v1/audio/transcriptions/jobs"


class JobOptions(BaseModel):
    """What the job was submitted with: ``/v1/audio/transcriptions``'s fields, and where its audio and webhook are."""

    response_format: str = "json"  # the result's default format
    granularities: list[str] = Field(default_factory=list)
    vad: bool = True
    model: Optional[str] = None
    language: Optional[str] = None
    logprobs: bool = False
    multichannel: bool = False
    keyterms: list[str] = Field(default_factory=list)
    keyterms_boost: Optional[str] = None
    url: Optional[str] = None  # fetched by the replica that runs the job (none: the upload is stored)
    webhook_url: Optional[str] = None
    filename: Optional[str] = None

    @classmethod
    def from_form(cls, form: UploadForm) -> "JobOptions":
        """The submit's fields: ``/v1/audio/transcriptions``'s (checked the same way), ``url``, ``webhook_url``."""
        request = OpenAIRequest.from_form(form)
        if request.stream:
            raise InvalidRequest("stream=true is not offered for jobs: poll the job, or give a webhook_url.",
                                 code="invalid_parameter")
        return cls.of(request, url=form.get("url") or None, webhook_url=form.get("webhook_url") or None,
                      filename=form.filename)

    @classmethod
    def of(cls, request: OpenAIRequest, **where: Optional[str]) -> "JobOptions":
        return cls(response_format=request.response_format, granularities=sorted(request.granularities),
                   vad=request.vad, model=request.model, language=request.language, logprobs=request.logprobs,
                   multichannel=request.multichannel, keyterms=request.keyterms,
                   keyterms_boost=request.keyterms_boost, **where)


class JobProgress(BaseModel):
    audio_s_done: float = 0.0  # the file is transcribed up to here (every channel)
    audio_s_total: Optional[float] = None  # known once the audio is decoded


class WebhookDelivery(BaseModel):
    url: str
    attempts: int = 0
    delivered: bool = False
    gave_up: bool = False
    last_status: Optional[int] = None  # the receiver's last HTTP status (None: no answer)
    next_at: Optional[float] = None  # unix time of the next try


class JobView(BaseModel):
    """A job as clients see it (the submit's 202, GET, the list, the handle)."""

    id: str
    object: Literal["transcription.job"] = "transcription.job"
    status: JobStatus
    created_at: float  # unix seconds
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    progress: JobProgress
    error: Optional[ErrorInfo] = None  # why it failed
    model: Optional[str] = None
    response_format: str  # the result's default format
    webhook: Optional[WebhookDelivery] = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView]
    has_more: bool
    last_id: Optional[str] = None  # the next page: ?after=<last_id>


class JobDeleted(BaseModel):
    """DELETE's answer: an unfinished job is cancelled (``deleted`` false, its record kept); a finished one is
    deleted with its audio and result (``deleted`` true)."""

    id: str
    object: Literal["transcription.job"] = "transcription.job"
    status: JobStatus
    deleted: bool


class JobRecord(BaseModel):
    """What is stored: the view, plus what the runners need."""

    id: str
    object: Literal["transcription.job"] = "transcription.job"
    status: JobStatus = "queued"
    created_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    progress: JobProgress = Field(default_factory=JobProgress)
    error: Optional[ErrorInfo] = None
    options: JobOptions
    webhook: Optional[WebhookDelivery] = None
    runs: int = 0  # times a replica started (or resumed) it
    not_before: Optional[float] = None  # a failed run's retry waits until then

    def view(self) -> JobView:
        return JobView(id=self.id, status=self.status, created_at=self.created_at, started_at=self.started_at,
                       finished_at=self.finished_at, progress=self.progress, error=self.error,
                       model=self.options.model, response_format=self.options.response_format, webhook=self.webhook)

    @property
    def has_work(self) -> bool:
        """Work left: the transcription, or a webhook still to deliver."""
        pending_webhook = self.webhook is not None and not (self.webhook.delivered or self.webhook.gave_up)
        return self.status not in FINISHED or (pending_webhook and self.status != "cancelled")


def new_job_id(now: float | None = None) -> str:
    """``job_`` + milliseconds since the epoch + randomness: ids sort by creation time (the list's order)."""
    return f"job_{int((now or time.time()) * 1000):012x}{secrets.token_hex(8)}"


def allowed_url(url: str, prefixes: list[str], field: str) -> str:
    """``url`` if it is http(s) and starts with one of ``prefixes`` (``jobs.url_prefixes``), else 400: the service
    fetches and calls only what its operator allowed (no server-side request forgery)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise InvalidRequest(f"{field} must be an http(s) URL without credentials; got {url!r}.",
                             code="invalid_url")
    if parts.path and posixpath.normpath(parts.path) != parts.path.rstrip("/") and parts.path != "/":
        raise InvalidRequest(f"{field} must not contain '.' or '..' path segments.", code="invalid_url")
    if not any(url.startswith(prefix) for prefix in prefixes):
        allowed = ", ".join(prefixes) if prefixes else "none: set jobs.url_prefixes (PARAKEET_JOBS__URL_PREFIXES)"
        raise InvalidRequest(f"{field} {url!r} is not under an allowed prefix ({allowed}).", code="url_not_allowed")
    return url


# ------------------------------------------------------------------------------------------- Standard Webhooks

def webhook_headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``: ``webhook-id`` (the same for every retry of one message),
    ``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` under the
    secret, given as ``whsec_`` + base64)."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    timestamp = str(int(now if now is not None else time.time()))
    signed = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": message_id, "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(signed).decode()}


# ------------------------------------------------------------------------------------------- the store

class Lease:
    """A replica's claim on one job: renewed while it works, lost when another replica took the job over."""

    def __init__(self, path: Path, generation: int):
        self.path = path
        self.generation = generation

    def renew(self) -> None:
        os.utime(self.path)

    def lost(self) -> bool:
        return self.path.with_name(f"lease.{self.generation + 1}").exists() or not self.path.exists()

    def release(self) -> None:
        """Stale at once, so the next claim needs no wait."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path, (0, 0))


class JobStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.jobs = self.root / "jobs"
        self.active = self.root / "active"
        self.trash = self.root / "trash"
        for folder in (self.jobs, self.active, self.trash):
            folder.mkdir(parents=True, exist_ok=True)

    def dir(self, job_id: str) -> Path:
        if not job_id.startswith("job_") or not job_id[4:].isalnum():
            raise NotFound(f"No job {job_id!r}.", code="job_not_found")
        return self.jobs / job_id

    # records

    def create(self, record: JobRecord, audio: bytes | None) -> None:
        folder = self.dir(record.id)
        folder.mkdir()
        if audio is not None:
            (folder / "audio").write_bytes(audio)
        self.save(record)
        (self.active / record.id).touch()

    def save(self, record: JobRecord) -> None:
        _replace(self.dir(record.id) / "job.json", record.model_dump_json().encode())
        if not record.has_work:
            with contextlib.suppress(FileNotFoundError):
                (self.active / record.id).unlink()

    def get(self, job_id: str) -> JobRecord:
        try:
            record = JobRecord.model_validate_json((self.dir(job_id) / "job.json").read_bytes())
        except FileNotFoundError:
            raise NotFound(f"No job {job_id!r} (never submitted, deleted, or expired).", code="job_not_found") from None
        if record.status in ("queued", "running") and self.cancelled(job_id):
            record.status = "cancelled"  # the runner writes it when it stops, before its next segment
        return record

    def cancel(self, job_id: str) -> None:
        (self.dir(job_id) / "cancelled").touch()

    def cancelled(self, job_id: str) -> bool:
        return (self.dir(job_id) / "cancelled").exists()

    def delete(self, job_id: str) -> None:
        """Gone at once (one rename, so a runner still writing fails instead of recreating it), then removed."""
        with contextlib.suppress(FileNotFoundError):
            (self.active / job_id).unlink()
        doomed = self.trash / f"{job_id}.{secrets.token_hex(4)}"
        try:
            os.rename(self.dir(job_id), doomed)
        except FileNotFoundError:
            raise NotFound(f"No job {job_id!r}.", code="job_not_found") from None
        shutil.rmtree(doomed, ignore_errors=True)

    def unfinished(self) -> list[str]:
        return sorted(p.name for p in self.active.iterdir())

    def ids(self) -> list[str]:
        """Every job, newest first."""
        return sorted((p.name for p in self.jobs.iterdir()), reverse=True)

    def page(self, limit: int, after: str | None) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs, newest first, older than ``after`` (the last id of the previous page)."""
        ids = [i for i in self.ids() if after is None or i < after]
        records = []
        for job_id in ids:
            with contextlib.suppress(NotFound):  # deleted meanwhile
                records.append(self.get(job_id))
            if len(records) > limit:
                break
        return records[:limit], len(records) > limit

    def expired(self, now: float, ttl_s: float) -> Iterator[str]:
        for job_id in self.ids():
            with contextlib.suppress(NotFound):
                record = self.get(job_id)
                if not record.has_work and record.finished_at is not None and now - record.finished_at > ttl_s:
                    yield job_id

    # audio, segments, result

    def audio_path(self, job_id: str) -> Path:
        return self.dir(job_id) / "audio"

    def keep_segment(self, job_id: str, key: str, tokens: SegmentTokens) -> None:
        """One finished segment, appended as one line the moment it arrives (so a resumed job skips it)."""
        line = json.dumps({"key": key, "tokens": tokens.model_dump()}, separators=(",", ":")) + "\n"
        fd = os.open(self.dir(job_id) / "segments.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def segment_lines(self, job_id: str) -> list[tuple[str, SegmentTokens]]:
        """Every stored segment in the order it was kept (a torn last line, from a crash mid-write, is dropped)."""
        try:
            text = (self.dir(job_id) / "segments.jsonl").read_text()
        except FileNotFoundError:
            return []
        kept = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                kept.append((item["key"], SegmentTokens.model_validate(item["tokens"])))
        return kept

    def segments(self, job_id: str) -> dict[str, SegmentTokens]:
        return dict(self.segment_lines(job_id))

    def save_result(self, job_id: str, result: TranscriptionResult) -> None:
        _replace(self.dir(job_id) / "result.json", result.model_dump_json().encode())

    def result(self, job_id: str) -> TranscriptionResult:
        return TranscriptionResult.model_validate_json((self.dir(job_id) / "result.json").read_bytes())

    # claims

    def claim(self, job_id: str, lease_s: float, owner: str) -> Lease | None:
        """This replica's lease on the job, unless another replica renewed its own within ``lease_s``."""
        folder = self.dir(job_id)
        generations = sorted(int(p.suffix[1:]) for p in folder.glob("lease.*") if p.suffix[1:].isdigit())
        if generations:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - (folder / f"lease.{generations[-1]}").stat().st_mtime < lease_s:
                    return None
        generation = generations[-1] + 1 if generations else 0
        path = folder / f"lease.{generation}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except (FileExistsError, FileNotFoundError):  # another replica was quicker, or the job was deleted
            return None
        try:
            os.write(fd, owner.encode())
        finally:
            os.close(fd)
        return Lease(path, generation)


def _replace(path: Path, data: bytes) -> None:
    """Write a whole file so that readers see the old or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    temporary.write_bytes(data)
    os.replace(temporary, path)
