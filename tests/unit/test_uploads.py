"""The streaming multipart reader: fields, the file, and 413 as soon as the limit is passed."""

import asyncio

import pytest

from deployments.speech.errors import InvalidRequest, PayloadTooLarge
from deployments.speech.uploads import read_form

BOUNDARY = "XyZ123"


def body(fields: list[tuple[str, str]], file: bytes | None) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields]
    if file is not None:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                     f'Content-Type: audio/wav\r\n\r\n'.encode() + file + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def read(raw: bytes, limit: int, chunk: int = 7, content_length: str | None = None, sent: list | None = None):
    async def stream():
        for start in range(0, len(raw), chunk):
            if sent is not None:
                sent.append(chunk)
            yield raw[start:start + chunk]

    return asyncio.run(read_form(f"multipart/form-data; boundary={BOUNDARY}", content_length, stream(), limit))


def test_fields_and_file_in_small_chunks():
    form = read(body([("response_format", "srt"), ("timestamp_granularities[]", "word"),
                      ("timestamp_granularities[]", "segment")], b"RIFF\x00\x01binary"), limit=1000)
    assert form.file == b"RIFF\x00\x01binary" and form.filename == "a.wav"
    assert form.get("response_format") == "srt"
    assert form.get_all("timestamp_granularities[]", "timestamp_granularities") == ["word", "segment"]


def test_stops_reading_once_the_limit_is_passed():
    sent: list = []
    raw = body([], b"x" * (3 * 1024 * 1024))
    with pytest.raises(PayloadTooLarge):
        read(raw, limit=1024 * 1024, chunk=64 * 1024, sent=sent)
    assert len(sent) * 64 * 1024 < len(raw)  # rejected before the whole body arrived


def test_declared_length_over_limit_is_rejected_up_front():
    sent: list = []
    with pytest.raises(PayloadTooLarge):
        read(body([], b"x"), limit=10, content_length=str(50 * 1024 * 1024), sent=sent)
    assert sent == []


def test_not_multipart():
    async def empty():
        yield b""

    with pytest.raises(InvalidRequest, match="multipart/form-data"):
        asyncio.run(read_form("application/json", None, empty(), 100))


def test_a_thousand_repeated_fields_come_back_in_order():
    terms = [f"term {i}" for i in range(1000)]
    form = read(body([("keyterms", t) for t in terms] + [("keyterm_boost", "3")], b"RIFF"), limit=1000, chunk=4096)
    assert form.get_all("keyterms") == terms and form.get("keyterm_boost") == "3" and form.file == b"RIFF"


@pytest.mark.parametrize("raw,needle", [
    (body([("response_format", "json")], b"RIFF")[:-30], "Malformed multipart body"),  # cut off mid-part
    (body([("response_format", "x" * (65 * 1024))], None), "larger than 65536 bytes"),
    (f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nhi\r\n--{BOUNDARY}--\r\n".encode(), "Malformed multipart body"),
])
def test_a_malformed_or_oversized_form_is_a_400_that_says_why(raw, needle):
    with pytest.raises(InvalidRequest, match=needle):
        read(raw, limit=1000, chunk=1024)
