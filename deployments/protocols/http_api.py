"""FastAPI glue for the Ingress: the error handlers, reading an upload, and rendering a result as a response."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.speech import formats
from deployments.speech.errors import ApiError, InternalError, InvalidRequest, PayloadTooLarge
from deployments.speech.jobs import JobDeleted, JobList, JobOptions, JobView
from deployments.speech.protocol import ErrorInfo, ErrorResponse, OpenAIRequest, TranscriptionJson
from deployments.speech.schemas import TranscriptionResult
from deployments.speech.uploads import MAX_FIELD_BYTES, UploadForm, read_form

log = logging.getLogger("ray.serve")
Options = TypeVar("Options")
DEMO_PAGE = (Path(__file__).parent / "demo.html").read_text(encoding="utf-8")  # GET /demo

# The OpenAPI description of what the routes read from the raw request (they parse multipart themselves, counting
# bytes as they arrive), and of every error they answer with: clients, docs and the schema fuzzer read it.
# Each body's schema is defined once, in components (TranscriptionResult is verbose_json's, ErrorResponse every
# error's), and referenced from each response.
_, _DEFINITIONS = models_json_schema([(m, "validation") for m in (ErrorResponse, TranscriptionJson,
                                                                     TranscriptionResult, JobView, JobList,
                                                                     JobDeleted)],
                                     ref_template="#/components/schemas/{model}")
COMPONENTS = _DEFINITIONS["$defs"]


def component(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_ERROR = {"content": {"application/json": {"schema": component("ErrorResponse")}}}
ERROR_RESPONSES = {status: {"description": description, **_ERROR} for status, description in [
    (400, "a bad parameter, missing file, empty or too short audio"), (401, "missing or wrong API key"),
    (404, "unknown model (or job)"), (413, "upload or audio too large"), (415, "not decodable as audio"),
    (429, "over the admission limits (Retry-After)"), (503, "overloaded, a replica failed, or too slow (Retry-After)")]}
CONFLICT = {409: {"description": "the job has not completed", **_ERROR}}
_TEXT = {"type": "string"}
_BOOLEAN = {"type": "string", "enum": ["true", "false"]}
_KEYTERMS = {"keyterms": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 50},
                          "maxItems": 1000, "description": "words and phrases to boost (repeat the field)"},
             "keyterms_boost": {"type": "number", "exclusiveMinimum": 0, "maximum": 3}}


def form_body(fields: dict[str, dict]) -> dict:
    schema = {"type": "object", "required": ["file"],
              "properties": {"file": {"type": "string", "format": "binary"}, **fields}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


OPENAI_FORM = form_body({
    "model": _TEXT, "language": _TEXT, "prompt": _TEXT, "temperature": {"type": "number"},
    "response_format": {"type": "string", "enum": list(formats.RESPONSE_FORMATS)},
    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
    "include[]": {"type": "array", "items": {"type": "string", "enum": ["logprobs"]}},
    "stream": _BOOLEAN, "vad": _BOOLEAN, "multichannel": _BOOLEAN, **_KEYTERMS})
LEGACY_FORM = form_body({"include_timestamps": _BOOLEAN, "should_chunk": _BOOLEAN, "model": _TEXT,
                         "multichannel": _BOOLEAN, **_KEYTERMS})
# (any audio content type is accepted, audio/wav as Deepgram's clients send it; documented as octet-stream)
LISTEN_BODY = {"requestBody": {"required": True, "description": "the audio file itself (audio/wav, audio/mpeg, ...)",
                               "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}}
_TEXT_BODY = {"schema": {"type": "string"}}
OPENAI_RESPONSES = {200: {"description": "the transcript in the response_format asked for: json "
                                         "(TranscriptionJson), verbose_json (TranscriptionResult), text, srt, vtt; "
                                         "stream=true: Server-Sent Events (transcript.text.delta, "
                                         "transcript.text.done)", "content": {
    "application/json": {"schema": {"anyOf": [component("TranscriptionJson"), component("TranscriptionResult")]}},
    "text/plain": _TEXT_BODY, "text/vtt": _TEXT_BODY, "application/x-subrip": _TEXT_BODY,
    "text/event-stream": _TEXT_BODY}}, **ERROR_RESPONSES}


_JOB_FIELDS = {"url": {"type": "string", "format": "uri", "description": "fetch the audio from here instead "
                                                                        "(under jobs.url_prefixes)"},
               "webhook_url": {"type": "string", "format": "uri", "description": "POSTed a Standard Webhooks-signed "
                                                                                 "event when the job finishes"}}
_JOB_FORM = form_body({**OPENAI_FORM["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"],
                       **_JOB_FIELDS})
_JOB_FORM["requestBody"]["content"]["multipart/form-data"]["schema"].pop("required")  # file, or url
_JOB_FORM["requestBody"]["content"]["application/json"] = {"schema": {
    "type": "object", "required": ["url"], "properties": {
        **{k: v for k, v in _JOB_FORM["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"].items()
           if k != "file"}}}}
_JOB_FORM["requestBody"]["content"]["application/x-www-form-urlencoded"] = _JOB_FORM["requestBody"]["content"][
    "application/json"]
JOB_FORM = _JOB_FORM


def json_responses(model: str, status: int = 200, description: str = "") -> dict:
    return {status: {"description": description or model,
                     "content": {"application/json": {"schema": component(model)}}}, **ERROR_RESPONSES}


def install_openapi_components(api: FastAPI) -> None:
    """The schemas the responses reference, in the document's components (FastAPI only adds the ones its own
    routes' models need)."""
    build = api.openapi

    def openapi() -> dict:
        if api.openapi_schema is None:
            document = build()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(COMPONENTS)
            # FastAPI documents a 422 for routes with parameters; ours answer a bad parameter with the usual 400
            for operation in (op for path in document["paths"].values() for op in path.values()):
                operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
        return api.openapi_schema

    api.openapi = openapi


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=ErrorInfo.of(error)).model_dump(), status_code=error.status,
                        headers=error.headers)


def install_error_handlers(api: FastAPI) -> None:
    """Every error leaves as ``{"error": {"message", "type", "code"}}`` with its status; never a stack trace."""

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequest(f"Invalid request: {exc.errors()}", code="invalid_request"))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ApiError(str(exc.detail), code=str(exc.status_code))
        error.status, error.type = exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(error)

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("Unhandled error", exc_info=exc)
        return error_response(InternalError("Internal server error."))


async def read_upload(request: Request, parse_options: Callable[[UploadForm], Options], max_upload_bytes: int
                      ) -> tuple[Options, bytes]:
    """The multipart form (byte-counted as it arrives) -> validated options and the file's bytes."""
    form = await read_form(request.headers.get("content-type"), request.headers.get("content-length"),
                           request.stream(), max_upload_bytes)
    options = parse_options(form)
    if form.file is None:
        raise InvalidRequest("Attach the audio as the 'file' form field.", code="missing_file")
    return options, form.file


async def read_body(request: Request, max_upload_bytes: int) -> bytes:
    """A raw request body (Deepgram's pre-recorded audio), byte-counted as it arrives (413 past the limit)."""
    if (request.headers.get("content-type") or "").split(";")[0].strip() == "application/json":
        raise InvalidRequest("Send the audio itself as the request body (audio/wav, audio/mpeg, ...); fetching a "
                             "URL is not offered here.", code="url_not_supported")
    return await _capped_body(request, max_upload_bytes, lambda: PayloadTooLarge(
        f"The upload is larger than the {max_upload_bytes // (1024 * 1024)} MB limit.", code="file_too_large"))


async def _capped_body(request: Request, max_bytes: int, too_large: Callable[[], ApiError]) -> bytes:
    """The request body, counted as it arrives: ``too_large()`` is raised the moment it passes ``max_bytes``."""
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def read_job_submit(request: Request, max_upload_bytes: int) -> tuple[JobOptions, bytes | None]:
    """A job's submit: the same multipart form as /v1/audio/transcriptions (the file optional when a ``url`` is
    given), or the same fields with a ``url`` as a JSON object or a urlencoded form."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip()
    if content_type not in ("application/json", "application/x-www-form-urlencoded"):
        form = await read_form(request.headers.get("content-type"), request.headers.get("content-length"),
                               request.stream(), max_upload_bytes)
        return JobOptions.from_form(form), form.file
    body = await _capped_body(request, MAX_FIELD_BYTES, lambda: InvalidRequest(
        f"A job's {content_type} body must be under {MAX_FIELD_BYTES} bytes; upload the audio as multipart/form-data.",
        code="field_too_large"))
    if content_type == "application/x-www-form-urlencoded":
        return JobOptions.from_form(UploadForm(fields=parse_qs(body.decode("utf-8", "replace")))), None
    try:
        fields = json.loads(body)
        assert isinstance(fields, dict)
    except (ValueError, AssertionError):
        raise InvalidRequest("The body must be a JSON object of the job's fields.", code="invalid_json") from None
    return JobOptions.from_form(UploadForm(fields={
        name: [str(v).lower() if isinstance(v, bool) else str(v) for v in (value if isinstance(value, list) else
                                                                            [value])]
        for name, value in fields.items() if value is not None})), None


def openai_response(result: TranscriptionResult, options: OpenAIRequest) -> Response:
    body = formats.render(result, options.response_format, options.granularities)
    if isinstance(body, dict):
        return JSONResponse(body)
    return PlainTextResponse(body, media_type=formats.MEDIA_TYPES[options.response_format])
