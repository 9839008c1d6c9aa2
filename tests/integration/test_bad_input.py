"""A corpus of bad inputs sent while good requests run: each gets its documented status and a message a user can
act on (never a stack trace or an internal path), and every good request gets exactly the transcript it gets
alone."""

from __future__ import annotations

import io
import random
import threading

import av
import httpx
import numpy as np
import pytest

from tests.helpers import SAMPLE_RATE, encode, phrase_recording, random_phrases

pytestmark = pytest.mark.integration
MAX_UPLOAD_MB = 1
MAX_AUDIO_S = 60


@pytest.fixture(scope="module")
def app(module_app, digits_model):
    return module_app(model=str(digits_model), limits={"max_upload_mb": MAX_UPLOAD_MB, "max_audio_s": MAX_AUDIO_S})


def wav_bytes(audio: np.ndarray, rate: int = SAMPLE_RATE, subtype: str | None = None, fmt: str = "WAV") -> bytes:
    return encode(audio, fmt, sample_rate=rate, subtype=subtype)


def speech(seconds: float = 2.0) -> np.ndarray:
    return phrase_recording(["one", "two", "three"], voice=1).audio[: int(seconds * SAMPLE_RATE)]


def mp3(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray((audio * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def corpus() -> list[tuple[str, dict, int, str]]:
    """(kind, request for httpx, status, a word the message must contain)."""
    good = speech()
    wav = wav_bytes(good)
    nan = good.copy()
    nan[500] = np.nan
    inf = good.copy()
    inf[900] = np.inf
    post = "/v1/audio/transcriptions"

    def upload(data: bytes, path: str = post, **fields) -> dict:
        return {"path": path, "files": {"file": ("a.bin", data)}, "data": fields}

    big = np.random.default_rng(0).standard_normal(SAMPLE_RATE * 40).astype(np.float32) * 0.1
    boundary = "XyZ123"
    return [
        ("empty file", upload(b""), 400, "empty"),
        ("truncated WAV", upload(wav[: len(wav) // 3]), 415, "truncated"),
        ("truncated FLAC", upload(wav_bytes(good, fmt="FLAC")[:200]), 415, "audio"),
        ("truncated MP3", upload(mp3(speech(2.0))[:100]), 415, "audio"),
        ("text, not audio", upload(b"hello, this is a text file\n" * 50), 415, "audio"),
        ("a PNG image", upload(b"\x89PNG\r\n\x1a\n" + bytes(500)), 415, "audio"),
        ("a path instead of a file", {"path": post, "files": {"file": (None, b"/etc/passwd")}}, 415, "audio"),
        ("a form instead of multipart", {"path": post, "data": {"file": "/etc/passwd"}}, 400, "multipart"),
        ("no file field", upload(b"", model="parakeet-tdt-0.6b-v2") | {"files": None}, 400, "'file'"),
        ("JSON body", {"path": post, "json": {"file": "x"}}, 400, "multipart/form-data"),
        ("multipart without boundary", {"path": post, "content": b"--x\r\n",
                                        "headers": {"Content-Type": "multipart/form-data"}}, 400, "multipart"),
        ("malformed multipart", {"path": post, "content": b"--XyZ123\r\nGarbage\x00\x01\r\n\r\n--nope",
                                 "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}},
         400, "multipart"),
        ("a form field over 64 kB", upload(wav, prompt="x" * 70000), 400, "prompt"),
        ("too short (10 ms)", upload(wav_bytes(good[:160])), 400, "minimum is 32 ms"),
        ("NaN samples", upload(wav_bytes(nan, subtype="FLOAT")), 400, "NaN"),
        ("infinite samples", upload(wav_bytes(inf, subtype="DOUBLE")), 400, "infinite"),
        ("hours of compressed silence", upload(wav_bytes(np.zeros(SAMPLE_RATE * 600, np.float32), 8000, fmt="FLAC")),
         413, "maximum is 60 s"),
        ("upload over the limit", upload(wav_bytes(big)), 413, "limit"),
        ("Content-Length over the limit (a lying header)",
         {"path": post, "raw_headers": {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                        "Content-Length": str(50 << 20)}, "content": b"x" * 10}, 413, "limit"),
        ("chunked body over the limit (no Content-Length)",
         {"path": post, "content": iter([multipart(boundary, [("file", "a.wav", wav_bytes(big))])]),
          "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}, 413, "limit"),
        ("bad response_format", upload(wav, response_format="mp3"), 400, "response_format"),
        ("bad timestamp granularity", upload(wav, **{"timestamp_granularities[]": "sentence"}), 400,
         "timestamp_granularities"),
        ("temperature out of range", upload(wav, temperature="7"), 400, "temperature"),
        ("not a boolean", upload(wav, vad="maybe"), 400, "vad"),
        ("stream with srt", upload(wav, stream="true", response_format="srt"), 400, "stream"),
        ("unknown include", upload(wav, **{"include[]": "everything"}), 400, "include"),
        ("unknown model", upload(wav, model="whisper-9000"), 404, "served models"),
        ("unsupported language", upload(wav, language="ja"), 400, "language"),
        ("legacy: bad boolean", upload(wav, path="/transcribe", include_timestamps="perhaps"), 400,
         "include_timestamps"),
        ("unknown route", {"path": "/v1/audio/translations", "method": "GET"}, 404, "Not Found"),
        ("wrong method", {"path": post, "method": "GET"}, 405, "Method Not Allowed"),
    ]


# odd but valid audio: decoded and transcribed like any other
ODD_BUT_VALID = [
    ("192 kHz", lambda a: wav_bytes(np.repeat(a, 12), 192000)),
    ("8 channels", lambda a: wav_bytes(np.repeat(a[:, None], 8, axis=1))),
    ("8-bit unsigned", lambda a: wav_bytes(a, subtype="PCM_U8")),
    ("MP3", mp3),
]


def send(client: httpx.Client, app, request: dict) -> httpx.Response:
    request = dict(request)
    method = request.pop("method", "POST")
    path = request.pop("path")
    if "raw_headers" in request:  # headers no HTTP client library would send (they contradict the body)
        return send_raw(app.url + path, request["raw_headers"], request["content"])
    return client.request(method, app.url + path, **{k: v for k, v in request.items() if v is not None})


def send_raw(url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    import socket

    parsed = httpx.URL(url)
    head = f"POST {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {parsed.host}\r\nConnection: close\r\n" + \
        "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection((parsed.host, parsed.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, rest = reply.split(b"\r\n", 1)
    head_lines, content = rest.split(b"\r\n\r\n", 1)
    return httpx.Response(int(status_line.split()[1]), content=content[:_length(reply)],
                          headers=[tuple(line.decode().split(": ", 1)) for line in head_lines.split(b"\r\n")])


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


def test_every_bad_input_gets_its_status_while_good_requests_get_their_own_results(app):
    rng = random.Random(25)
    goods = [phrase_recording(words, voice=i % 4, rng=rng).audio for i, words in enumerate(random_phrases(rng, 6))]
    with httpx.Client(timeout=120) as client:
        expected = [send(client, app, {"path": "/v1/audio/transcriptions",
                                       "files": {"file": ("a.wav", wav_bytes(a))}}).json()["text"] for a in goods]
    stop = threading.Event()
    background: list[bool] = []

    def good_load() -> None:
        with httpx.Client(timeout=120) as client:
            turn = 0
            while not stop.is_set():
                response = client.post(app.url + "/v1/audio/transcriptions",
                                       files={"file": ("a.wav", wav_bytes(goods[turn % len(goods)]))})
                background.append(response.status_code == 200 and response.json()["text"] == expected[turn % 6])
                turn += 1

    workers = [threading.Thread(target=good_load) for _ in range(2)]
    for worker in workers:
        worker.start()
    cases = corpus()
    try:
        with httpx.Client(timeout=120) as client:
            for kind, request, status, needle in cases:
                response = send(client, app, request)
                assert response.status_code == status, (kind, response.status_code, response.text[:300])
                error = response.json()["error"]
                assert needle.lower() in error["message"].lower(), (kind, error)
                assert error["type"] and "Traceback" not in response.text and ".py" not in response.text, kind
                assert "/work" not in response.text and "/tmp" not in response.text, kind
            for kind, make in ODD_BUT_VALID:
                response = send(client, app, {"path": "/v1/audio/transcriptions",
                                              "files": {"file": ("a", make(speech()))}})
                assert response.status_code == 200 and response.json()["text"], kind
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    print(f"{len(cases)} bad-input kinds, {len(ODD_BUT_VALID)} odd-but-valid; {len(background)} good requests "
          "in the background")
    assert len(cases) >= 25 and len(background) >= 4 and all(background)
