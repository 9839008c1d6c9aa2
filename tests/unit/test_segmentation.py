"""The incremental timeline gives exactly silero's segments (then merged), however the probabilities are cut up,
and hands each segment out as soon as it is final."""

import random

import numpy as np
import pytest
from silero_vad import get_speech_timestamps_from_probs

from deployments.speech.schemas import SpeechSegment
from deployments.speech.segmentation import WINDOW_SAMPLES, SpeechTimeline
from deployments.speech.settings import VadSettings
from deployments.speech.vad import SpeechDetector
from tests.helpers import SAMPLE_RATE, long_recording, random_phrases


def merge_segments(segments: list[SpeechSegment], up_to_samples: int, max_gap_samples: int) -> list[SpeechSegment]:
    """The merging rule in one pass over a finished list, the reference for the timeline's incremental merge:
    join neighbours while the joined span stays within ``up_to_samples`` and the pause is short enough."""
    merged: list[SpeechSegment] = []
    for segment in segments:
        if merged:
            last = merged[-1]
            if segment.start - last.end <= max_gap_samples and segment.end - last.start <= up_to_samples:
                merged[-1] = SpeechSegment(start=last.start, end=max(last.end, segment.end))
                continue
        merged.append(segment)
    return merged


def test_merge_segments():
    segs = [SpeechSegment(start=a, end=b) for a, b in [(0, 10), (15, 30), (100, 120), (125, 200)]]
    merged = merge_segments(segs, up_to_samples=50, max_gap_samples=20)
    assert [(s.start, s.end) for s in merged] == [(0, 30), (100, 120), (125, 200)]
    assert merge_segments(segs, up_to_samples=0, max_gap_samples=20) == segs


def reference(probs: list[float], length: int, settings: VadSettings) -> list[tuple[int, int]]:
    raw = get_speech_timestamps_from_probs(
        probs, sampling_rate=SAMPLE_RATE, threshold=settings.threshold, neg_threshold=settings.neg_threshold,
        min_speech_duration_ms=settings.min_speech_duration_ms,
        min_silence_duration_ms=settings.min_silence_duration_ms, speech_pad_ms=settings.speech_pad_ms,
        max_speech_duration_s=settings.max_segment_s, audio_length_samples=length)
    merged = merge_segments([SpeechSegment(start=r["start"], end=r["end"]) for r in raw],
                            int(settings.merge_up_to_s * SAMPLE_RATE), int(settings.merge_max_gap_s * SAMPLE_RATE))
    return [(s.start, s.end) for s in merged]


def incremental(probs: list[float], length: int, settings: VadSettings, rng: random.Random) -> list[tuple[int, int]]:
    """The timeline fed in random pieces; checks on the way that ``open_from()`` never promised too much."""
    timeline = SpeechTimeline(settings)
    out, position, bounds = [], 0, []  # bounds: (segments out so far, open_from then)
    while position < len(probs):
        step = rng.choice([1, 2, 7, 64, 300])
        out += timeline.push(probs[position:position + step])
        bounds.append((len(out), timeline.open_from()))
        position += step
    out += timeline.finish(length)
    for handed_out, open_from in bounds:
        assert all(s.start >= open_from for s in out[handed_out:]), "a later segment started before open_from()"
    return [(s.start, s.end) for s in out]


def synthetic_probabilities(rng: random.Random, windows: int) -> list[float]:
    """Runs of speech-like and silence-like values with jitter around the thresholds."""
    probs: list[float] = []
    speaking = rng.random() < 0.5
    while len(probs) < windows:
        run = rng.choice([1, 2, 3, 5, 10, 30, 80, 300, 1200])
        centre = rng.uniform(0.55, 1.0) if speaking else rng.uniform(0.0, 0.45)
        probs += [min(1.0, max(0.0, centre + rng.gauss(0, 0.12))) for _ in range(run)]
        speaking = not speaking
    return probs[:windows]


SETTINGS = [
    VadSettings(),
    VadSettings(merge_up_to_s=0),
    VadSettings(max_segment_s=4, merge_up_to_s=3, merge_max_gap_s=0.5),  # many cuts at the longest pause
    VadSettings(max_segment_s=2, merge_up_to_s=0, min_silence_duration_ms=500, speech_pad_ms=30),
    VadSettings(threshold=0.6, neg_threshold=0.3, min_speech_duration_ms=250, speech_pad_ms=300),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=range(len(SETTINGS)))
def test_random_probabilities_give_silero_segments(settings):
    rng = random.Random(7)
    for _ in range(40):
        windows = rng.randint(0, 3000)
        probs = synthetic_probabilities(rng, windows)
        length = max(0, windows * WINDOW_SAMPLES - rng.randint(0, WINDOW_SAMPLES - 1))
        assert incremental(probs, length, settings, rng) == reference(probs, length, settings)


def test_real_speech_gives_silero_segments_and_hands_them_out_early():
    rng = random.Random(3)
    talk = long_recording(random_phrases(rng, 30), rng, phrase_gap_s=(0.2, 3.0))
    settings = VadSettings()
    probs = SpeechDetector(settings).probabilities(talk.audio).tolist()
    assert incremental(probs, len(talk.audio), settings, rng) == reference(probs, len(talk.audio), settings)
    # fed the first half, the timeline has already given out most segments that end in that half
    timeline = SpeechTimeline(settings)
    half = len(probs) // 2
    early = timeline.push(probs[:half])
    everything = reference(probs, len(talk.audio), settings)
    in_first_half = [s for s in everything if s[1] < half * WINDOW_SAMPLES - 3 * SAMPLE_RATE]
    assert len(in_first_half) >= 3 and [(s.start, s.end) for s in early][:len(in_first_half)] == in_first_half


def test_a_segment_is_handed_out_in_the_pause_not_when_the_next_speech_starts():
    settings = VadSettings(merge_up_to_s=0)
    pad_windows = settings.speech_pad_ms * SAMPLE_RATE // 1000 // WINDOW_SAMPLES + 1
    timeline = SpeechTimeline(settings)
    assert timeline.push([0.0] * 10 + [0.9] * 30) == [] and timeline.speech_open()
    assert timeline.push([0.0] * pad_windows) == [], "the padding may still depend on speech that follows"
    found = timeline.push([0.0] * (pad_windows + 2))
    assert len(found) == 1 and not timeline.speech_open()
    assert timeline.open_from() >= found[0].end


def test_push_after_finish_is_an_error():
    timeline = SpeechTimeline(VadSettings())
    timeline.finish(0)
    with pytest.raises(RuntimeError):
        timeline.push([0.9])


def test_speech_running_to_the_end_is_closed_at_the_audio_length():
    timeline = SpeechTimeline(VadSettings(merge_up_to_s=0))
    assert timeline.push(np.full(40, 0.9)) == []
    assert [(s.start, s.end) for s in timeline.finish(40 * WINDOW_SAMPLES - 100)] == [(0, 40 * WINDOW_SAMPLES - 100)]
