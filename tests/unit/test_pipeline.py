"""The request pipeline without Ray (fake backends: glue code): which deployments are called, the request timeout,
and the SSE stream's events, including an error after the first delta."""

import asyncio
import json

import numpy as np
import pytest

from deployments.speech.errors import Overloaded
from deployments.speech.pipeline import LoadedAudio, TranscriptionPipeline
from deployments.speech.protocol import SseError, TranscriptTextDelta, TranscriptTextDone, sse_frame
from deployments.speech.schemas import SegmentTokens, SpeechSegment
from deployments.speech.catalog import ModelCatalog
from deployments.speech.settings import AppSettings
from tests.helpers import TaskCall

MODEL = ModelCatalog(AppSettings().served_models).choose(None, None)

SECOND = 16000


class FakeBackends:
    """Three segments; the model says where each was; ``fail_at`` makes that segment's call fail."""

    def __init__(self, fail_at: int | None = None, model_delay_s: float = 0.0):
        self.fail_at = fail_at
        self.model_delay_s = model_delay_s
        self.transcribed: list[tuple[int, int]] = []
        self.aligned = 0

    async def put(self, audio):
        return ("ref", len(audio))

    async def segments(self, audio_ref):
        yield [SpeechSegment(start=0, end=SECOND)]
        yield [SpeechSegment(start=2 * SECOND, end=3 * SECOND), SpeechSegment(start=4 * SECOND, end=5 * SECOND)]

    def transcribe(self, audio_ref, start, end, model, keyterms=None):
        async def work():
            await asyncio.sleep(self.model_delay_s)
            if self.fail_at is not None and len(self.transcribed) == self.fail_at:
                raise Overloaded("The service is at capacity; retry shortly.", retry_after_s=2)
            self.transcribed.append((start, end))
            return SegmentTokens(text=f"s{start // SECOND}")
        return TaskCall(work())

    async def collect(self, call):
        return await call.task

    async def align(self, pieces, duration):
        self.aligned += 1
        return [], []


def run(coro):
    return asyncio.run(coro)


def audio(seconds: float = 6) -> LoadedAudio:
    return LoadedAudio(np.zeros(int(seconds * SECOND), np.float32), seconds)


def test_segments_in_order_and_the_aligner_only_for_timestamps():
    backends = FakeBackends()
    pipeline = TranscriptionPipeline(backends, AppSettings())
    result = run(pipeline.transcribe(audio(), timestamps=False, vad=True, model=MODEL))
    assert result.text == "s0 s2 s4" and backends.aligned == 0
    run(pipeline.transcribe(audio(), timestamps=True, vad=True, model=MODEL))
    assert backends.aligned == 1


def test_without_vad_the_whole_file_is_one_call():
    backends = FakeBackends()
    run(TranscriptionPipeline(backends, AppSettings()).transcribe(audio(6), timestamps=False, vad=False, model=MODEL))
    assert backends.transcribed == [(0, 6 * SECOND)]


def test_a_request_over_its_time_gets_503():
    pipeline = TranscriptionPipeline(FakeBackends(model_delay_s=5), AppSettings(request_timeout_s=0.2))
    with pytest.raises(Overloaded) as info:
        run(pipeline.transcribe(audio(), timestamps=False, vad=True, model=MODEL))
    assert info.value.code == "timeout" and info.value.status == 503


async def sse_events(pipeline):
    return [event async for event in pipeline.text_events(audio(), vad=True, model=MODEL)]


def test_sse_deltas_then_done():
    events = run(sse_events(TranscriptionPipeline(FakeBackends(), AppSettings())))
    assert events == [TranscriptTextDelta(delta="s0"), TranscriptTextDelta(delta=" s2"),
                      TranscriptTextDelta(delta=" s4"), TranscriptTextDone(text="s0 s2 s4")]


def test_an_error_mid_stream_reaches_the_sse_client_as_an_error_event():
    events = run(sse_events(TranscriptionPipeline(FakeBackends(fail_at=1), AppSettings())))
    assert events[0] == TranscriptTextDelta(delta="s0")
    assert isinstance(events[-1], SseError) and len(events) == 2
    wire = json.loads(sse_frame(events[-1])[len("data: "):])
    # the event's type stays "error" (the error body's own type must not overwrite it)
    assert wire == {"type": "error", "error": {"message": "The service is at capacity; retry shortly.",
                                               "type": "server_overloaded", "code": "overloaded"}}


def test_a_term_set_the_model_accepted_is_not_checked_again_and_a_refused_one_is():
    """An app sends the same keyterms with every request: only the first waits for the Transcriber's check."""
    from deployments.speech.catalog import Choice
    from deployments.speech.errors import KeytermError
    from deployments.speech.keyterms import Keyterms

    class CheckingBackends(FakeBackends):
        def __init__(self):
            super().__init__()
            self.checked: list[tuple[str, Keyterms]] = []

        async def check_keyterms(self, model, keyterms):
            self.checked.append((model, keyterms))
            if "zebra" in keyterms.terms:
                raise KeytermError("The model cannot spell 1 keyterm(s): 'zebra'.")

    backends = CheckingBackends()
    pipeline = TranscriptionPipeline(backends, AppSettings())
    ours, theirs, bad = (Keyterms(terms, 0.5) for terms in (("nine oh",), ("four",), ("zebra",)))
    for keyterms in (ours, ours, theirs, ours, None):
        choice = Choice(MODEL.model, MODEL.language, keyterms)
        assert run(pipeline.checked(choice)) is choice
    assert [k for _, k in backends.checked] == [ours, theirs]
    for _ in range(2):  # refused each time: a refusal is never remembered as accepted
        with pytest.raises(KeytermError):
            run(pipeline.checked(Choice(MODEL.model, MODEL.language, bad)))
    assert [k for _, k in backends.checked] == [ours, theirs, bad, bad]
