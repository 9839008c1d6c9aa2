"""Live streams: VAD on the Segmenter with each stream's state carried in its calls, utterances joined on pauses,
and the event loop (with an in-process Segmenter and a fake model: glue code)."""

import asyncio
import pickle
import random

import numpy as np
import pytest

from deployments.speech.live import UtteranceJoiner, live_events
from deployments.speech.live_vad import LiveVad, LiveVadState, LiveVadStep
from deployments.speech.protocol import FinalEvent, PartialEvent
from deployments.speech.schemas import SegmentTokens, SpeechSegment
from deployments.speech.settings import StreamSettings, VadSettings
from deployments.speech.vad import SpeechDetector
from tests.helpers import SAMPLE_RATE, long_recording, random_phrases

VAD = VadSettings()


@pytest.fixture(scope="module")
def recordings():
    rng = random.Random(12)
    return [long_recording(random_phrases(rng, 6), rng, phrase_gap_s=(0.2, 2.5)).audio for _ in range(8)]


def offline_segments(audio: np.ndarray) -> list[tuple[int, int]]:
    detector = SpeechDetector(VAD.model_copy(update={"merge_up_to_s": 0.0}))
    return [(s.start, s.end) for s in detector.segments(audio)]


def test_streams_stepped_together_get_exactly_the_offline_segments(recordings):
    """Eight streams in random-size pieces, their steps batched in random groups, each state pickled between steps
    (as it crosses to whichever Segmenter replica takes the next step): every stream gets exactly the segments
    of one offline pass over its own audio."""
    rng = random.Random(3)
    live = LiveVad(VAD)
    states = [pickle.dumps(LiveVadState.new(VAD)) for _ in recordings]
    positions = [0] * len(recordings)
    found: list[list[tuple[int, int]]] = [[] for _ in recordings]
    batched_calls = 0
    while any(p < len(a) for p, a in zip(positions, recordings)):
        group = [i for i, (p, a) in enumerate(zip(positions, recordings)) if p < len(a) and rng.random() < 0.7]
        calls = []
        for i in group:
            size = rng.choice([512] * 6 + [100, 1024, 1500, 8000, 40000])  # mostly one window, as clients send
            piece = recordings[i][positions[i]:positions[i] + size]
            positions[i] += len(piece)
            calls.append((pickle.loads(states[i]), piece, positions[i] >= len(recordings[i])))
        batched_calls += len(live._batched_rows([(len(c[0].tail) + len(c[1])) // 512 for c in calls])) > 0
        for i, step in zip(group, live.step(calls)):
            found[i] += [(s.start, s.end) for s in step.segments]
            states[i] = pickle.dumps(step.state)
    assert batched_calls > 10, "the batched model was used"
    for audio, segments in zip(recordings, found):
        assert segments == offline_segments(audio)


def test_a_segment_before_a_pause_comes_out_during_the_pause(recordings):
    """Fed window by window, a segment followed by a real pause is handed out one pad after its (padded) end,
    not when the next speech starts or ends (a word followed by a short gap waits: its padding depends on the
    next word)."""
    audio = recordings[0]
    offline = offline_segments(audio)
    live = LiveVad(VAD)
    state, emitted_at = LiveVadState.new(VAD), {}
    for position in range(0, len(audio), 512):
        step = live.step([(state, audio[position:position + 512], False)])[0]
        state = step.state
        emitted_at.update({(s.start, s.end): position + 512 for s in step.segments})
    pad = VAD.speech_pad_ms * SAMPLE_RATE // 1000
    before_pauses = [seg for seg, following in zip(offline, offline[1:]) if following[0] - seg[1] > SAMPLE_RATE // 2]
    assert len(before_pauses) >= 3
    for start, end in before_pauses:
        assert emitted_at[(start, end)] - end <= pad + 2 * 512


def step_with(segments, open_from, position, speech_open=False) -> LiveVadStep:
    return LiveVadStep(state=None, segments=[SpeechSegment(start=a, end=b) for a, b in segments],
                       open_from=open_from, speech_open=speech_open, position=position)


def test_joiner_joins_short_pauses_and_ends_an_utterance_on_a_long_one():
    joiner = UtteranceJoiner(StreamSettings(end_of_utterance_ms=500, partial_interval_ms=1000), VAD, partials=True)
    second = SAMPLE_RATE
    # a segment ends at 1 s; the next may start at 1.2 s: the utterance stays open (it has started)
    out = joiner.update(step_with([(0, second)], open_from=int(1.2 * second), position=int(1.3 * second)))
    assert [(u.id, u.start, u.kind) for u in out] == [(0, 0, "start")]
    # a segment 0.3 s later joins it; then nothing can start before 2.6 s: it is over (pause >= 0.5 s)
    out = joiner.update(step_with([(int(1.3 * second), 2 * second)], open_from=int(2.6 * second),
                                  position=int(2.7 * second)))
    assert [(u.id, u.start, u.end, u.kind) for u in out] == [(0, 0, 2 * second, "final")]
    # a long pause between two segments in one step: two utterances, each started then finished
    out = joiner.update(step_with([(3 * second, 4 * second), (5 * second, 6 * second)], open_from=None,
                                  position=7 * second))
    assert [(u.id, u.start, u.end, u.kind) for u in out] == [
        (1, 3 * second, 3 * second, "start"), (1, 3 * second, 4 * second, "final"),
        (2, 5 * second, 5 * second, "start"), (2, 5 * second, 6 * second, "final")]
    # speech that has begun but is not a segment yet starts a turn at the earliest place it can start
    out = joiner.update(step_with([], open_from=8 * second, position=int(8.5 * second), speech_open=True))
    assert [(u.id, u.start, u.kind) for u in out if u.kind == "start"] == [(3, 8 * second, "start")]


def test_joiner_cuts_at_the_longest_utterance_and_asks_for_partials():
    vad = VadSettings(max_segment_s=3, merge_up_to_s=0)
    joiner = UtteranceJoiner(StreamSettings(end_of_utterance_ms=800, partial_interval_ms=1000), vad, partials=True)
    second = SAMPLE_RATE
    out = joiner.update(step_with([(0, 2 * second), (int(2.1 * second), int(3.5 * second))],
                                  open_from=int(3.6 * second), position=int(3.8 * second), speech_open=True))
    assert [(u.start, u.end, u.kind) for u in out] == [  # 3.5 s would be too long
        (0, 0, "start"), (0, 2 * second, "final"), (int(2.1 * second), int(2.1 * second), "start")]
    # the partial clock restarts at a final: a partial of the open utterance is due a second later
    out = joiner.update(step_with([], open_from=int(3.6 * second), position=int(4.8 * second), speech_open=True))
    assert [(u.id, u.start, u.end, u.kind) for u in out] == [(1, int(2.1 * second), int(4.8 * second), "partial")]
    no_partials = UtteranceJoiner(StreamSettings(), VAD, partials=False)
    out = no_partials.update(step_with([], open_from=0, position=5 * second, speech_open=True))
    assert [u.kind for u in out] == ["start"]


def test_live_events_end_to_end_with_an_in_process_segmenter(recordings):
    """The event loop over real VAD steps: finals in order, one per utterance, each covering offline segments."""
    live = LiveVad(VAD)
    audio = recordings[1]
    transcribed: list[int] = []

    async def vad_step(state, samples, last):
        await asyncio.sleep(0)
        return live.step([(state, samples, last)])[0]

    async def transcribe(samples: np.ndarray) -> SegmentTokens:
        transcribed.append(len(samples))
        return SegmentTokens(text=f"{len(samples)} samples")

    async def chunks():
        for start in range(0, len(audio), 1024):
            yield audio[start:start + 1024]

    async def run():
        return [e async for e in live_events(chunks(), vad_step, transcribe, None, StreamSettings(), VAD)]

    events = asyncio.run(run())
    finals = [e for e in events if isinstance(e, FinalEvent)]
    assert [e.id for e in finals] == list(range(len(finals))) and finals
    # all the audio arrives at once, yet a partial is due every second of audio (VAD steps are capped to that)
    assert any(isinstance(e, PartialEvent) for e in events)
    offline = offline_segments(audio)
    covered = [(s, e) for s, e in offline if any(f.start * SAMPLE_RATE - 1 <= s and e <= f.end * SAMPLE_RATE + 1
                                                 for f in finals)]
    assert covered == offline, "every offline segment lies inside one final"
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:]))
