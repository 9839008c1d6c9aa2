"""A replica killed under sustained load (the shipped deployment options): every request is answered (200 with its
own transcript, or a clear 503), and requests succeed again within 30 s."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from tests.helpers import encode, kill_one_replica, phrase_recording, random_phrases
from tests.load import LoadOutcome, send_until, with_transcripts

pytestmark = pytest.mark.integration
CLIENTS = 4


@pytest.fixture(scope="module")
def app(shipped_digits_app):
    return shipped_digits_app


@pytest.fixture(scope="module")
def files(app) -> list[tuple[bytes, str]]:
    """Short files and the transcript each gets alone."""
    rng = random.Random(30)
    return with_transcripts(app.url, [encode(phrase_recording(p, voice=i % 4, rng=rng).audio)
                                      for i, p in enumerate(random_phrases(rng, 12))])


def post(app, wav: bytes) -> httpx.Response:
    return httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, timeout=120)


def under_load_kill(app, files, deployment: str, kill_after_s: float = 2.0, run_s: float = 30.0) -> dict:
    """Clients send files back to back for ``run_s``; one replica of ``deployment`` is killed ``kill_after_s`` in.
    Times are in seconds from the kill."""
    started = time.monotonic()
    kill_at = started + kill_after_s

    async def killer() -> None:
        await asyncio.sleep(kill_after_s)
        await asyncio.to_thread(kill_one_replica, app.name, deployment)

    async def run() -> LoadOutcome:
        _, outcome = await asyncio.gather(killer(), send_until(
            app.url, files, CLIENTS, lambda: time.monotonic() > started + run_s, timeout_s=60))
        return outcome

    outcome = asyncio.run(run())
    after = [a for a in outcome.answers if a.sent >= kill_at]
    first_success = min((a.done - kill_at for a in after if a.status == 200), default=float("inf"))
    around = [a for a in outcome.answers if a.done >= kill_at]  # answered after the kill (sent before or after)
    return {"requests": len(outcome.answers), "failed": outcome.failed, "wrong": outcome.wrong,
            "recovered_s": first_success,
            "slowest_s": max((a.done - max(a.sent, kill_at) for a in around), default=0.0),
            "late": [a for a in after if a.sent - kill_at > first_success and a.status != 200]}


@pytest.mark.parametrize("deployment", ["Transcriber", "Segmenter"])
def test_a_killed_replica_is_survived(app, files, deployment):
    outcome = under_load_kill(app, files, deployment)
    print(f"{deployment} killed: {outcome['requests']} requests, {len(outcome['failed'])} failed "
          f"({sorted({a.status for a in outcome['failed']})}); first success of a request sent after the kill "
          f"{outcome['recovered_s']:.1f} s after it; slowest answer around the kill {outcome['slowest_s']:.1f} s")
    assert not outcome["wrong"], "a request got another request's (or a wrong) transcript"
    for failure in outcome["failed"]:  # a clear 503 with a message, no internals
        assert failure.status == 503 and failure.body["error"]["message"], failure
        assert "Traceback" not in str(failure.body)
    if deployment == "Transcriber":  # a segment's call is retried on the replacement: nothing fails
        assert not outcome["failed"], "a Transcriber's death failed requests that the retry should have saved"
    else:  # only the files whose VAD stream ran on the killed Segmenter, at most those in flight
        assert len(outcome["failed"]) <= CLIENTS, outcome["failed"]
    assert outcome["recovered_s"] < 30 and not outcome["late"], "requests succeed again within 30 s, and stay so"
    for wav, expected in files[:CLIENTS]:  # and it serves as before
        assert post(app, wav).json()["text"] == expected
