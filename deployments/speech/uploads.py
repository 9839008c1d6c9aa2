"""multipart/form-data read straight from the request stream, counting bytes as they arrive.

Starlette's form parser spools whole uploads before anyone can look at their size; this one stops reading the moment
the body passes the limit (413), keeps everything in memory (no temporary files to leave behind) and returns plain
fields plus the bytes of the ``file`` part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import InvalidRequest, PayloadTooLarge

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class UploadForm:
    fields: dict[str, list[str]] = field(default_factory=dict)
    file: bytes | None = None
    filename: str | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else default

    def get_all(self, *names: str) -> list[str]:
        return [value for name in names for value in self.fields.get(name, [])]


class _Collector:
    def __init__(self, max_file_bytes: int):
        self.max_file_bytes = max_file_bytes
        self.form = UploadForm()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._data = bytearray()
        self._part: tuple[str, str | None] | None = None  # the part's name and filename, read once per part

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._append("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._append("_header_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _append(self, name: str, chunk: bytes) -> None:
        setattr(self, name, getattr(self, name) + chunk)

    def _part_begin(self) -> None:
        self._headers, self._data, self._part = {}, bytearray(), None

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _disposition(self) -> tuple[str, str | None]:
        if self._part is None:  # (a file's data comes in many callbacks; a form of 1,000 keyterms has 1,000 parts)
            _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
            name = params.get(b"name", b"").decode("utf-8", "replace")
            filename = params.get(b"filename")
            self._part = name, filename.decode("utf-8", "replace") if filename is not None else None
        return self._part

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        name, filename = self._disposition()
        limit = self.max_file_bytes if (name == "file" or filename is not None) else MAX_FIELD_BYTES
        if len(self._data) + (end - start) > limit:
            if limit == MAX_FIELD_BYTES:
                raise InvalidRequest(f"Form field {name!r} is larger than {MAX_FIELD_BYTES} bytes.",
                                     code="field_too_large")
            raise PayloadTooLarge(f"The upload is larger than the {self.max_file_bytes // (1024 * 1024)} MB limit.",
                                  code="file_too_large")
        self._data += data[start:end]

    def _part_end(self) -> None:
        name, filename = self._disposition()
        if name == "file":
            self.form.file = bytes(self._data)
            self.form.filename = filename
        else:
            self.form.fields.setdefault(name, []).append(self._data.decode("utf-8", "replace"))
        self._data = bytearray()


async def read_form(content_type: str | None, content_length: str | None, body: AsyncIterator[bytes],
                    max_file_bytes: int) -> UploadForm:
    """Parse a multipart body; 413 as soon as more than ``max_file_bytes`` (+ form overhead) has arrived."""
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequest("Send the request as multipart/form-data with the audio in a 'file' field.",
                             code="invalid_content_type")
    body_limit = max_file_bytes + 1024 * 1024  # room for the other fields and part headers
    if content_length and content_length.isdigit() and int(content_length) > body_limit:
        raise PayloadTooLarge(f"The upload is larger than the {max_file_bytes // (1024 * 1024)} MB limit.",
                              code="file_too_large")
    collector = _Collector(max_file_bytes)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > body_limit:
            raise PayloadTooLarge(f"The upload is larger than the {max_file_bytes // (1024 * 1024)} MB limit.",
                                  code="file_too_large")
        try:
            parser.write(chunk)
        except (InvalidRequest, PayloadTooLarge):
            raise
        except Exception as exc:  # noqa: BLE001 - python-multipart raises several types for malformed bodies
            raise InvalidRequest(f"Malformed multipart body: {exc}", code="invalid_multipart") from None
    parser.finalize()
    return collector.form
