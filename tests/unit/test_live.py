"""Live streams: VAD on the Segmenter with each stream's state carried in its calls, utterances joined on pauses,
and the event loop (with an in-process Segmenter and a fake model: glue code)."""

import asyncio
import pickle
import random
import time

import numpy as np
import pytest

from deployments.speech.live import Finalize, PartialText, UtteranceJoiner, live_events
from deployments.speech.live_vad import LiveVad, LiveVadState, LiveVadStep
from deployments.speech.protocol import FinalEvent
from deployments.speech.schemas import SegmentTokens, SpeechSegment
from deployments.speech.settings import StreamSettings, TurnRules, VadSettings
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


S = SAMPLE_RATE
PAD = VAD.speech_pad_ms * S // 1000


def step_with(segments=(), position=0, tentative=None, speaking_from=None, open_from=0) -> LiveVadStep:
    """A VAD step: ``segments`` and ``tentative`` as raw speech (start, end), padded here as the timeline would."""
    padded = [SpeechSegment(start=max(0, a - PAD), end=b + PAD) for a, b in segments]
    waiting = SpeechSegment(start=max(0, tentative[0] - PAD), end=tentative[1] + PAD) if tentative else None
    return LiveVadStep(state=None, segments=padded, speech=list(segments), open_from=open_from, position=position,
                       tentative=waiting, tentative_speech=tentative, speaking_from=speaking_from,
                       received=position)


def kinds(out):
    return [(u.id, u.start, u.end, u.kind) for u in out]


def test_the_pause_counts_from_the_end_of_speech_and_a_first_pass_comes_when_speech_stops():
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=300), VAD, partials=False)
    # speech from 0.5 s is going on: the turn starts (its padded start)
    assert kinds(joiner.update(step_with(speaking_from=S // 2, position=S))) == [(0, S // 2 - PAD, S // 2 - PAD,
                                                                                  "start")]
    # it stopped at 2.0 s; at 2.1 s its padding (to 2.12 s) has not all arrived: nothing yet
    assert joiner.update(step_with(tentative=(S // 2, 2 * S), position=int(2.1 * S))) == []
    # at 2.2 s it has: a first pass of exactly the span the final will have
    span = (S // 2 - PAD, 2 * S + PAD)
    assert kinds(joiner.update(step_with(tentative=(S // 2, 2 * S), position=int(2.2 * S)))) == [
        (0, *span, "first_pass")]
    assert joiner.update(step_with(tentative=(S // 2, 2 * S), position=int(2.25 * S))) == [], "issued once"
    # 300 ms after the end of speech (not of its padding) the turn is over
    assert kinds(joiner.update(step_with(tentative=(S // 2, 2 * S), position=int(2.3 * S)))) == [(0, *span, "final")]
    # when VAD later hands the same speech out as a final segment, it is not a turn again
    assert joiner.update(step_with(segments=[(S // 2, 2 * S)], position=int(2.4 * S))) == []


def test_a_turn_ends_its_tail_after_the_speech_so_its_first_pass_does_not_wait_for_the_padding():
    """With ``stream.final_tail_ms`` shorter than the pad, a turn's audio ends that far after its speech: the first
    pass goes out as soon as that much has arrived (not the whole pad), and the final covers the same span."""
    tail = 64 * S // 1000
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=300), VAD, partials=False, tail_ms=64)
    joiner.update(step_with(speaking_from=S // 2, position=S))
    assert joiner.update(step_with(tentative=(S // 2, 2 * S), position=2 * S + tail - 1)) == []
    span = (S // 2 - PAD, 2 * S + tail)
    assert kinds(joiner.update(step_with(tentative=(S // 2, 2 * S), position=2 * S + tail))) == [
        (0, *span, "first_pass")]  # the old rule waited for 2 s + PAD
    assert kinds(joiner.update(step_with(tentative=(S // 2, 2 * S), position=int(2.3 * S)))) == [(0, *span, "final")]
    # a finalize of a stopped turn ends it at the same place
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=2000), VAD, partials=False, tail_ms=64)
    joiner.update(step_with(speaking_from=S // 2, position=S))
    assert kinds(joiner.finalize(step_with(tentative=(S // 2, 2 * S), position=int(2.2 * S)))) == [
        (0, *span, "final")]
    # a tail longer than the pad is the pad
    assert UtteranceJoiner(TurnRules(), VAD, partials=False, tail_ms=10 * VAD.speech_pad_ms).tail == PAD


def test_the_pause_counts_from_vads_lag_before_its_end_of_speech_and_the_final_keeps_its_audio():
    """``stream.vad_end_lag_ms``: Silero says speech ended late, so the pause counts from that much before its end;
    the final still runs to VAD's end plus the tail (no word is cut), and a pause between two pieces of speech is
    measured the same way."""
    tail, lag = 64 * S // 1000, 64 * S // 1000
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=300), VAD, partials=False, tail_ms=64, end_lag_ms=64)
    joiner.update(step_with(speaking_from=S // 2, position=S))
    joiner.update(step_with(tentative=(S // 2, 2 * S), position=2 * S + tail))
    due = 2 * S - lag + 300 * S // 1000
    assert joiner.pause_due == due
    assert "final" not in [u.kind for u in joiner.update(step_with(tentative=(S // 2, 2 * S), position=due - 1))]
    assert kinds(joiner.update(step_with(tentative=(S // 2, 2 * S), position=due))) == [
        (0, S // 2 - PAD, 2 * S + tail, "final")]
    # speech resuming 250 ms after VAD's end: a 314 ms pause by the lagged count, over the 300 ms rule: two turns
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=300), VAD, partials=False, tail_ms=64, end_lag_ms=64)
    joiner.update(step_with(speaking_from=S // 2, position=S))
    out = joiner.update(step_with(segments=[(S // 2, 2 * S)], speaking_from=2 * S + S // 4, position=int(2.3 * S)))
    assert [u.kind for u in out] == ["final", "start"]
    # without the lag the same 250 ms is inside the turn
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=300), VAD, partials=False, tail_ms=64)
    joiner.update(step_with(speaking_from=S // 2, position=S))
    out = joiner.update(step_with(segments=[(S // 2, 2 * S)], speaking_from=2 * S + S // 4, position=int(2.3 * S)))
    assert "final" not in [u.kind for u in out]


def test_a_turn_in_its_pause_says_where_the_pause_ends_it():
    """``pause_due``: the sample VAD must have read for the pause rule to end the open turn (the stream steps as soon
    as its audio reaches it); none while someone speaks or once the turn is final; it follows a new pause rule."""
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=300), VAD, partials=False, tail_ms=64)
    joiner.update(step_with(speaking_from=S // 2, position=S))
    assert joiner.pause_due is None
    joiner.update(step_with(tentative=(S // 2, 2 * S), position=int(2.1 * S)))
    due = 2 * S + 300 * S // 1000
    assert joiner.pause_due == due
    joiner.configure(TurnRules(end_of_utterance_ms=500))
    assert joiner.pause_due == 2 * S + S // 2
    joiner.configure(TurnRules(end_of_utterance_ms=300))
    assert "final" not in [u.kind for u in joiner.update(step_with(tentative=(S // 2, 2 * S), position=due - 1))]
    assert [u.kind for u in joiner.update(step_with(tentative=(S // 2, 2 * S), position=due))] == ["final"]
    assert joiner.pause_due is None
    # speech that resumes within the pause: no pause is running
    joiner.update(step_with(speaking_from=3 * S, position=int(3.2 * S)))
    joiner.update(step_with(tentative=(3 * S, 4 * S), position=int(4.1 * S)))
    assert joiner.pause_due == 4 * S + 300 * S // 1000
    joiner.update(step_with(tentative=(3 * S, 4 * S), speaking_from=int(4.2 * S), position=int(4.25 * S)))
    assert joiner.pause_due is None


def test_a_turn_whose_pause_is_complete_is_final_before_the_next_tick(recordings):
    """The step clock ticks once a second here. The turn's speech and the start of its pause go through VAD at one
    tick; right after the next tick the rest of the pause arrives at once: its final comes at once, not a tick
    (~0.95 s) later."""
    from deployments.speech.step_batcher import next_tick

    audio = recordings[0]
    detector = SpeechDetector(VAD.model_copy(update={"merge_up_to_s": 0.0}))
    first = detector.segments(audio)[0]
    speech_end = first.end - PAD
    settings = StreamSettings(min_step_ms=1000, end_of_utterance_ms=300)
    live = LiveVad(VAD)
    sent: dict[str, float] = {}

    async def vad_step(state, samples, last):
        await asyncio.sleep(0)
        return live.step([(state, samples, last)])[0]

    async def transcribe(samples, priority, keyterms=None):
        return SegmentTokens(text="words")

    async def chunks():
        yield audio[:speech_end + 150 * S // 1000]  # the speech and half the pause: VAD hears the speech end
        await asyncio.sleep(next_tick(time.monotonic(), 1.0) + 0.05 - time.monotonic())  # (after that tick)
        sent["rest"] = time.monotonic()
        yield np.zeros(300 * S // 1000, np.float32)
        await asyncio.sleep(3)

    async def run() -> float:
        async for event in live_events(chunks(), vad_step, transcribe, None, settings, VAD):
            if isinstance(event, FinalEvent):
                return time.monotonic() - sent["rest"]
        raise AssertionError("no final")

    waited = asyncio.run(run())
    assert waited < 0.5, f"the final waited {waited:.2f} s: for the next tick"


def test_speech_that_resumes_within_the_pause_drops_the_first_pass_and_joins_the_turn():
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=500), VAD, partials=False)
    joiner.update(step_with(speaking_from=0, position=S // 2))
    out = joiner.update(step_with(tentative=(0, S), position=int(1.2 * S)))
    assert [u.kind for u in out] == ["first_pass"] and joiner.drafted == (0, S + PAD)
    # speech again at 1.3 s (a 300 ms pause < 500 ms): the first pass no longer covers the turn
    assert joiner.update(step_with(tentative=(0, S), speaking_from=int(1.3 * S), position=int(1.4 * S))) == []
    assert joiner.drafted is None
    # the first speech is handed out, the second stops at 2 s and then the pause ends the turn: one final for both
    out = joiner.update(step_with(segments=[(0, S)], tentative=(int(1.3 * S), 2 * S), position=int(2.2 * S)))
    assert kinds(out) == [(0, 0, 2 * S + PAD, "first_pass")]
    assert kinds(joiner.update(step_with(tentative=(int(1.3 * S), 2 * S), position=int(2.5 * S)))) == [
        (0, 0, 2 * S + PAD, "final")]


def test_a_long_pause_between_two_final_segments_makes_two_turns():
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=500), VAD, partials=False)
    out = joiner.update(step_with(segments=[(S, 2 * S), (3 * S, 4 * S)], position=5 * S, open_from=5 * S))
    assert kinds(out) == [(0, S - PAD, S - PAD, "start"), (0, S - PAD, 2 * S + PAD, "final"),
                          (1, 3 * S - PAD, 3 * S - PAD, "start"), (1, 3 * S - PAD, 4 * S + PAD, "final")]
    # the stream's end makes whatever is open final
    out = joiner.update(step_with(segments=[(6 * S, 7 * S)], position=7 * S, open_from=None))
    assert kinds(out) == [(2, 6 * S - PAD, 6 * S - PAD, "start"), (2, 6 * S - PAD, 7 * S + PAD, "final")]


def test_finalize_mid_speech_ends_the_turn_now_and_the_rest_is_a_new_turn():
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=500), VAD, partials=False)
    joiner.update(step_with(speaking_from=S, position=2 * S))
    out = joiner.finalize(step_with(speaking_from=S, position=2 * S))
    assert [(u.id, u.start, u.end, u.kind, u.from_finalize) for u in out] == [(0, S - PAD, 2 * S, "final", True)]
    # the same speech goes on and ends at 3 s: only what came after the finalize is the next turn
    assert kinds(joiner.update(step_with(speaking_from=S, position=int(2.5 * S)))) == [(1, 2 * S, 2 * S, "start")]
    out = joiner.update(step_with(tentative=(S, 3 * S), position=int(3.6 * S)))
    assert kinds(out) == [(1, 2 * S, 3 * S + PAD, "final")]
    # nothing open: the client is told so
    out = joiner.finalize(step_with(position=4 * S))
    assert [(u.kind, u.from_finalize) for u in out] == [("nothing", True)]


def test_finalize_in_the_pause_gives_the_first_pass_span_and_configure_changes_the_pause():
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=2000), VAD, partials=False)
    joiner.update(step_with(speaking_from=0, position=S // 2))
    first = joiner.update(step_with(tentative=(0, S), position=int(1.15 * S)))
    out = joiner.finalize(step_with(tentative=(0, S), position=int(1.2 * S)))
    assert [u.span for u in out if u.final] == [u.span for u in first], "the first pass is the final"
    joiner.configure(TurnRules(end_of_utterance_ms=300))
    joiner.update(step_with(speaking_from=2 * S, position=int(2.5 * S)))
    assert [u.kind for u in joiner.update(step_with(tentative=(2 * S, 3 * S), position=int(3.3 * S)))] == ["final"]


def test_the_padding_left_after_a_finalize_is_not_a_turn_of_its_own():
    """A finalize soon after speech stops cuts the turn where the audio ends, before all its padding has arrived;
    when VAD later hands out the segment, the padding past the cut holds no speech: no second (empty) final."""
    joiner = UtteranceJoiner(TurnRules(end_of_utterance_ms=500), VAD, partials=False)
    joiner.update(step_with(speaking_from=0, position=S // 2))
    cut = S + PAD // 2  # speech ended at 1 s; half its padding has arrived
    out = joiner.finalize(step_with(tentative=(0, S), position=cut))
    assert [(u.start, u.end, u.kind) for u in out if u.final] == [(0, cut, "final")]
    assert joiner.update(step_with(tentative=(0, S), position=S + PAD)) == []
    assert joiner.update(step_with(segments=[(0, S)], position=int(1.6 * S))) == []
    # speech after the cut is still a turn
    out = joiner.update(step_with(segments=[(int(1.1 * S), 2 * S)], position=3 * S))
    assert [u.kind for u in out] == ["start", "final"] and out[0].start == cut


def test_partials_come_every_interval_while_someone_speaks():
    joiner = UtteranceJoiner(TurnRules(partial_interval_ms=1000), VAD, partials=True)
    assert [u.kind for u in joiner.update(step_with(speaking_from=0, position=S // 2))] == ["start"]
    assert [u.kind for u in joiner.update(step_with(speaking_from=0, position=S))] == ["partial"]
    assert joiner.update(step_with(speaking_from=0, position=int(1.5 * S))) == []
    assert kinds(joiner.update(step_with(speaking_from=0, position=2 * S))) == [(0, 0, 2 * S, "partial")]
    assert UtteranceJoiner(TurnRules(), VAD, partials=False).update(step_with(speaking_from=0, position=5 * S))[
        -1].kind == "start"


def test_a_partial_window_stays_bounded_and_its_text_keeps_the_committed_words():
    rule = StreamSettings()
    text = PartialText(start=0, context_s=rule.partial_context_s, settle_s=rule.partial_settle_s)

    def tokens(words, begin):  # one piece per word, each 0.4 s long from its time (relative to the window)
        frames = [int((at - begin / S) / 0.08) for _, at in words]
        return SegmentTokens(text=" ".join(w for w, _ in words), pieces=["\u2581" + w for w, _ in words],
                             start_frames=frames, durations=[5] * len(words), frame_s=0.08)

    spoken = [(f"w{i}", 0.1 + 0.5 * i) for i in range(60)]  # a word every 0.5 s for 30 s
    for second in range(1, 31):
        position = second * S
        begin = text.window(position)
        assert position - begin <= text.longest
        heard = [(w, at) for w, at in spoken if at >= begin / S and at + 0.4 <= second]
        shown = text.text(begin, position, tokens(heard, begin))
        assert shown.split() == [w for w, at in spoken if at + 0.4 <= second]
    reach = rule.partial_context_s + rule.partial_settle_s + 1 + 0.5  # the contexts, an interval and a word
    assert position - text.window(position) <= reach * S, "windows reach back ~left + right context + interval"


def test_a_streams_partial_windows_follow_the_stream_settings(recordings):
    """Through live_events, one long turn (the fake model commits no word): no partial transcribes more than the
    settings' contexts and the wait for a committable word, and larger contexts reach further back."""
    audio = np.concatenate(recordings[:2])

    def partial_sizes(**window) -> list[int]:
        stream = StreamSettings(end_of_utterance_ms=10000, partial_interval_ms=500, **window)
        _, calls = run_live(audio, chunk=640, pace=True, stream=stream)
        return [samples for priority, samples in calls if priority == "partial"]

    short = partial_sizes(partial_context_s=0.2, partial_settle_s=0.1)
    assert len(short) >= 5 and max(short) <= (0.3 + PartialText.WAITING_S) * S
    assert max(partial_sizes(partial_context_s=3, partial_settle_s=2)) > max(short) + S


def run_live(audio, chunk=1024, stream=StreamSettings(), controls=None, pace=False, keyterms=None,
             with_keyterms=False):
    """live_events over real VAD steps (an in-process Segmenter) and a fake model whose text names the span it got
    (so spans can be compared); ``controls``: {chunk index: control sent after that chunk}."""
    live = LiveVad(VAD)
    calls: list[tuple[str, int]] = []
    boosted: list = []  # each call's keyterms

    async def vad_step(state, samples, last):
        await asyncio.sleep(0)
        return live.step([(state, samples, last)])[0]

    async def transcribe(samples: np.ndarray, priority: str, keyterms=None) -> SegmentTokens:
        calls.append((priority, len(samples)))
        boosted.append(keyterms)
        await asyncio.sleep(0.001)
        return SegmentTokens(text=f"{len(samples)} samples {float(np.abs(samples).sum()):.3f}")

    async def chunks():
        for index, start in enumerate(range(0, len(audio), chunk)):
            yield audio[start:start + chunk]
            if pace:  # let the stream catch up, as a real-time client does
                await asyncio.sleep(0.002)
            if controls and index in controls:
                yield controls[index]

    async def run():
        return [e async for e in live_events(chunks(), vad_step, transcribe, None, stream, VAD, keyterms=keyterms)]

    events = asyncio.run(run())
    return (events, calls, boosted) if with_keyterms else (events, calls)


def test_live_events_end_to_end_with_an_in_process_segmenter(recordings):
    """The event loop over real VAD steps: finals in order, one per turn, each covering offline segments (up to
    the end of their padding that the turn's shorter tail leaves out)."""
    audio = recordings[1]
    events, calls = run_live(audio)
    finals = [e for e in events if isinstance(e, FinalEvent)]
    assert [e.id for e in finals] == list(range(len(finals))) and finals
    offline = offline_segments(audio)
    untailed = PAD - StreamSettings().final_tail_ms * S // 1000
    covered = [(s, e) for s, e in offline if any(f.start * SAMPLE_RATE - 1 <= s and e - untailed <= f.end * SAMPLE_RATE + 1
                                                 for f in finals)]
    assert covered == offline, "every offline segment lies inside one final"
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:]))
    # all the audio arrives at once: no first pass is worth making (the turn's end is known before it could help)
    assert sum(priority == "final" for priority, _ in calls) == len(finals)
    assert not any(priority == "draft" for priority, _ in calls)


def test_the_first_pass_changes_when_a_final_is_ready_not_what_it_is(recordings):
    """Paced like a real-time client (each frame's VAD step before the next frame), with and without the first
    pass: the same finals (span and text), and with it most finals come from their first pass."""
    for audio in recordings[:3]:
        with_first, calls = run_live(audio, chunk=640, pace=True)
        without, plain_calls = run_live(audio, chunk=640, pace=True,
                                        stream=StreamSettings(first_pass=False))
        finals = [(e.start, e.end, e.text) for e in with_first if isinstance(e, FinalEvent)]
        assert finals == [(e.start, e.end, e.text) for e in without if isinstance(e, FinalEvent)]
        assert sum(p == "final" for p, _ in plain_calls) == len(finals) and "draft" not in dict(plain_calls)
        drafted = sum(p == "draft" for p, _ in calls)
        assert drafted >= 1, "first passes were made"
        assert sum(p == "final" for p, _ in calls) < len(finals), "some finals came from their first pass"


def test_finalize_through_the_event_loop(recordings):
    """A finalize in the middle of the audio ends the open turn there; one at the very start finds nothing."""
    audio = recordings[2]
    events, _ = run_live(audio, chunk=1024, controls={0: Finalize(), 60: Finalize()})
    kinds_seen = [type(e).__name__ for e in events]
    assert kinds_seen[0] == "NothingToFinalize"
    finals = [e for e in events if isinstance(e, FinalEvent)]
    forced = [e for e in finals if e.from_finalize]
    assert len(forced) + kinds_seen.count("NothingToFinalize") == 2, "each finalize gets one answer"
    assert all(abs(e.end - 61 * 1024 / SAMPLE_RATE) < 0.2 for e in forced)
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:])), "no audio in two finals"


def test_keyterms_apply_to_every_transcription_until_a_configure_changes_them(recordings):
    """The stream's keyterms go with each model call; a Reconfigure with new ones (or none) applies to the calls
    issued after it, and one that changes only the rules keeps them."""
    from deployments.speech.keyterms import Keyterms
    from deployments.speech.live import Reconfigure

    first, second = Keyterms(("nine",), 0.5), Keyterms(("four two",), 1.0)
    audio = recordings[1]
    chunks = len(audio) // 1024
    controls = {chunks // 3: Reconfigure(rules=StreamSettings().turn_rules),
                chunks // 2: Reconfigure(keyterms=second), 3 * chunks // 4: Reconfigure(keyterms=None)}
    events, calls, boosted = run_live(audio, controls=controls, pace=True, keyterms=first, with_keyterms=True)
    assert [e for e in events if isinstance(e, FinalEvent)]
    seen = [k for k in boosted]
    assert seen[0] == first and second in seen and seen[-1] is None
    # in order: first, then second, then none (a change never goes back)
    order = [k for i, k in enumerate(seen) if i == 0 or seen[i - 1] != k]
    assert order == [first, second, None]
