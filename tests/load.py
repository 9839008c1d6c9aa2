"""Steady load for the scaling, recovery and multi-node tests: clients that send files back to back, each answer
recorded with when it was sent and answered and whether it was that file's own transcript."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Callable

import httpx


@dataclass
class Answer:
    sent: float  # time.monotonic()
    done: float
    status: int  # 0: no answer at all (connection error, timeout)
    body: dict
    right: bool  # 200 with the file's own transcript


@dataclass
class LoadOutcome:
    answers: list[Answer]

    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    @property
    def wrong(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200 and not a.right]


def with_transcripts(url: str, wavs: list[bytes]) -> list[tuple[bytes, str]]:
    """Each file with the transcript the service gives it alone (the reference the load's answers must equal)."""
    return [(wav, httpx.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                             timeout=120).json()["text"]) for wav in wavs]


async def send_until(url: str, files: list[tuple[bytes, str]], clients: int, stop: Callable[[], bool],
                     timeout_s: float = 120, answers: list[Answer] | None = None) -> LoadOutcome:
    """``clients`` clients post ``files`` (wav bytes, expected transcript) to ``url`` back to back until ``stop()``;
    answers are appended to ``answers`` as they come (for a watcher on another thread)."""
    answers = [] if answers is None else answers

    async def client(index: int) -> None:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            turn = index
            while not stop():
                wav, expected = files[turn % len(files)]
                turn += clients
                sent = time.monotonic()
                try:
                    response = await http.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)})
                    status, body = response.status_code, response.json()
                except httpx.HTTPError as exc:
                    status, body = 0, {"error": {"message": type(exc).__name__}}
                answers.append(Answer(sent, time.monotonic(), status, body,
                                      status == 200 and body.get("text") == expected))

    await asyncio.gather(*[client(i) for i in range(clients)])
    return LoadOutcome(answers)


class BackgroundLoad:
    """``send_until`` on a thread of its own, while the test watches the cluster: ``with BackgroundLoad(...) as
    load: ...`` then ``load.outcome``."""

    def __init__(self, url: str, files: list[tuple[bytes, str]], clients: int):
        self._stop = threading.Event()
        self.answers: list[Answer] = []  # so far
        self.outcome: LoadOutcome | None = None
        self._thread = threading.Thread(target=self._run, args=(url, files, clients), daemon=True)

    def _run(self, url, files, clients) -> None:
        self.outcome = asyncio.run(send_until(url, files, clients, self._stop.is_set, answers=self.answers))

    def __enter__(self) -> "BackgroundLoad":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=300)
        self.stopped = time.monotonic()


def wait_until(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> float | None:
    """Seconds until ``condition()`` held (polled), or None if it never did within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(every_s)
    return None


def seconds(value: float | None) -> str:
    """A ``wait_until`` result for a report line."""
    return "never (timed out)" if value is None else f"{value:.1f} s"


def running_replica_names(app: str, deployment: str) -> set[str]:
    """The actor names of the deployment's replicas that Serve's controller reports RUNNING."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"][app]["deployments"][deployment]
    return {replica["actor_name"] for replica in details["replicas"] if replica["state"] == "RUNNING"}


def running_replicas(app: str, deployment: str) -> int:
    return len(running_replica_names(app, deployment))
