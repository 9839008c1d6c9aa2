"""Admission control by work, and the API key / CORS middleware (a small FastAPI app: glue code)."""

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient

from deployments.protocols.access import ACCESS, AccessMiddleware, chosen_subprotocol
from deployments.speech.admission import Admission
from deployments.speech.errors import TooBusy
from deployments.speech.settings import AdmissionSettings


def test_requests_and_audio_seconds_are_bounded_and_given_back():
    admission = Admission(AdmissionSettings(max_requests=2, max_audio_s=100, long_file_s=30, long_files_share=0.5))
    with admission.request() as first:
        first.admit_audio(40)  # a long file: 40 of the 50 s long files may take
        with admission.request() as second:
            with pytest.raises(TooBusy) as info:
                second.admit_audio(31)  # another long one: over the long files' share
            assert info.value.status == 429 and info.value.headers["Retry-After"]
            second.admit_audio(20)  # a short one still gets in
            with pytest.raises(TooBusy, match="2 requests in flight"):
                with admission.request():
                    pass
        assert admission.requests == 1 and admission.audio_s == 40
    assert admission.requests == 0 and admission.audio_s == 0 and admission.long_audio_s == 0
    assert admission.shed == 2
    # one file bigger than the whole budget still runs when nothing else is in flight
    with admission.request() as alone:
        alone.admit_audio(500)


def test_after_many_requests_a_file_bigger_than_the_budget_still_runs_alone():
    """Sums of float seconds leave residues (0.1 + 0.2 - 0.1 - 0.2 != 0): an empty replica must read as empty."""
    admission = Admission(AdmissionSettings(max_requests=4, max_audio_s=60, long_file_s=30))
    for seconds in [0.1, 0.2, 2.3, 1.7, 0.3] * 20:
        with admission.request() as first, admission.request() as second:
            first.admit_audio(seconds)
            second.admit_audio(seconds * 3)
    assert admission.audio_s == 0
    with admission.request() as alone:
        alone.admit_audio(268)


def test_a_kept_ticket_is_released_once_by_its_owner():
    admission = Admission(AdmissionSettings(max_requests=1))
    with admission.request() as ticket:
        ticket.keep().admit_audio(5)
    assert admission.requests == 1 and admission.audio_s == 5  # still streaming
    ticket.release()
    ticket.release()
    assert admission.requests == 0 and admission.audio_s == 0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused_retry_after(admission: Admission) -> int:
    with pytest.raises(TooBusy) as info:
        with admission.request():
            pass
    return int(info.value.headers["Retry-After"])


def test_retry_after_is_the_admitted_audios_drain_time_within_bounds():
    """A refused client is told to come back when the audio ahead of it is done (at the rate the replica finished
    audio while busy, over at most the last 10 s), not every 2 s: a storm of refusals is what starved the health
    probes."""
    clock, jitter = Clock(), [0.0]
    admission = Admission(AdmissionSettings(max_requests=3, retry_after_s=2, max_retry_after_s=30), clock=clock,
                          jitter=lambda: jitter[0])
    with admission.request() as keeper:  # busy from t=1000 to the end
        keeper.admit_audio(4)
        with admission.request() as a, admission.request() as b:
            a.admit_audio(10), b.admit_audio(10)
            assert refused_retry_after(admission) == 4  # nothing finished yet: twice the shortest ...
            jitter[0] = 1.0
            assert refused_retry_after(admission) == 2  # ... jittered (refused together, not back together)
            jitter[0] = 0.0
            clock.now += 2
        clock.now += 3  # 20 s of audio finished in the 5 s the replica has been busy: 4 audio s/s
        with admission.request() as a, admission.request() as b:
            a.admit_audio(20), b.admit_audio(16)
            assert refused_retry_after(admission) == 10  # 40 s of audio admitted / 4 per s (not / 2 over 10 s)
            jitter[0] = 1.0
            assert refused_retry_after(admission) == 5  # jittered down by up to half
            jitter[0] = 0.0
            clock.now += 11  # the finished audio is older than the window: nothing to go by
            assert refused_retry_after(admission) == 4
        assert sorted(seconds for _, seconds in admission._finished) == [16, 20]  # the old entries are forgotten
        with admission.request() as a, admission.request() as b:
            a.admit_audio(200), b.admit_audio(200)
            assert refused_retry_after(admission) == 30  # 404 / 3.6 per s: at most max_retry_after_s


def test_a_bursts_rate_is_measured_from_when_the_replica_became_busy():
    """The idle time before a burst is not slowness: 30 s of audio done in the 3 s since the burst began is 10 audio
    s/s, not 3 over a 10 s window (which told clients to wait up to 28 s for work done in 3). What finished before
    an idle spell is forgotten with it."""
    clock = Clock()
    admission = Admission(AdmissionSettings(max_requests=2, retry_after_s=2, max_retry_after_s=30), clock=clock,
                          jitter=lambda: 0.0)
    with admission.request() as earlier:
        earlier.admit_audio(50)
    clock.now += 20  # idle
    with admission.request() as keeper:
        keeper.admit_audio(60)
        with admission.request() as first:
            first.admit_audio(30)
            clock.now += 3
        with admission.request() as second:
            second.admit_audio(40)
            assert refused_retry_after(admission) == 10  # 100 s admitted / (30 s done in 3 s)
    clock.now += 0.2
    with admission.request() as a, admission.request() as b:
        a.admit_audio(10), b.admit_audio(10)
        assert refused_retry_after(admission) == 4  # a new burst: nothing finished since it began


def test_the_retry_after_bounds_must_be_ordered():
    with pytest.raises(ValueError, match="max_retry_after_s"):
        AdmissionSettings(retry_after_s=10, max_retry_after_s=5)


@pytest.fixture
def client():
    app = FastAPI()
    app.add_middleware(AccessMiddleware)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return {"data": []}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept(subprotocol=chosen_subprotocol(websocket.scope))
        await websocket.send_json({"type": "hello"})
        await websocket.close()

    yield TestClient(app)
    ACCESS.api_key, ACCESS.cors_origins = None, []


def test_without_a_key_configured_everything_is_open(client):
    assert client.get("/v1/models").status_code == 200


def test_the_api_key_guards_every_route_but_healthz(client):
    ACCESS.api_key = "s3cret"
    refused = client.get("/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    with client.websocket_connect("/ws") as ws:  # refused with a reason, then closed
        assert ws.receive_json()["code"] == "invalid_api_key"
    with client.websocket_connect("/ws", headers={"X-API-Key": "s3cret"}) as ws:
        assert ws.receive_json() == {"type": "hello"}


def test_cors_is_off_unless_configured(client):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/models", headers=preflight).headers
    ACCESS.cors_origins, ACCESS.api_key = ["https://app.example"], "s3cret"
    fresh = TestClient(client.app)  # the CORS layer is built on first use with this replica's origins
    answer = fresh.options("/v1/models", headers=preflight)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"


def test_a_browser_websocket_may_present_the_key_as_a_subprotocol_and_gets_one_back(client):
    ACCESS.api_key = "s3cret"
    with client.websocket_connect("/ws", subprotocols=["parakeet", "openai-insecure-api-key.s3cret"]) as ws:
        assert ws.receive_json() == {"type": "hello"} and ws.accepted_subprotocol == "parakeet"
    with client.websocket_connect("/ws", subprotocols=["openai-insecure-api-key.wrong"]) as ws:
        assert ws.receive_json()["code"] == "invalid_api_key"
    with client.websocket_connect("/ws", subprotocols=["openai-insecure-api-key.s3cret"]) as ws:
        assert ws.accepted_subprotocol == "openai-insecure-api-key.s3cret"
