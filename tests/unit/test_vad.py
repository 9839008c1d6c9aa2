"""Segmentation: the ONNX sequence path gives silero's own segments; merging and the length cap hold."""

import random

import numpy as np
import pytest

from deployments.speech.settings import VadSettings
from deployments.speech.vad import SpeechDetector
from tests.helpers import SAMPLE_RATE, long_recording, random_phrases


@pytest.fixture(scope="module")
def recording():
    rng = random.Random(1)
    return long_recording(random_phrases(rng, 8), rng, phrase_gap_s=(0.8, 3.0))


def test_same_segments_as_silero_reference_loop(recording):
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    settings = VadSettings(merge_up_to_s=0)
    ours = SpeechDetector(settings).segments(recording.audio)
    reference = get_speech_timestamps(torch.from_numpy(recording.audio), load_silero_vad(onnx=True),
                                      min_silence_duration_ms=30, speech_pad_ms=120, max_speech_duration_s=30,
                                      min_speech_duration_ms=settings.min_speech_duration_ms)
    assert [(s.start, s.end) for s in ours] == [(r["start"], r["end"]) for r in reference]


def test_every_word_is_inside_a_segment(recording):
    segments = SpeechDetector(VadSettings()).segments(recording.audio)
    for _, start, end in recording.words:
        assert any(s.start / SAMPLE_RATE <= start and end <= s.end / SAMPLE_RATE for s in segments)
    assert all(s.end - s.start <= 12 * SAMPLE_RATE for s in segments)


def test_silence_has_no_segments():
    assert SpeechDetector(VadSettings()).segments(np.zeros(SAMPLE_RATE * 3, np.float32)) == []


def test_long_speech_is_cut_below_max_segment():
    rng = random.Random(2)
    talk = long_recording(random_phrases(rng, 12), rng, phrase_gap_s=(0.15, 0.3))
    segments = SpeechDetector(VadSettings(max_segment_s=4, merge_up_to_s=0, min_silence_duration_ms=2000)
                              ).segments(talk.audio)
    assert len(segments) > 2 and all(s.end - s.start <= 4 * SAMPLE_RATE for s in segments)


def test_parallel_chunks_keep_the_sequential_segments_within_a_few_windows():
    rng = random.Random(12)
    talk = long_recording(random_phrases(rng, 30), rng, phrase_gap_s=(0.3, 3.0))
    assert talk.duration > 100
    sequential = SpeechDetector(VadSettings(threads=1)).segments(talk.audio)
    parallel_detector = SpeechDetector(VadSettings(threads=2, parallel_chunk_s=20))
    probs = parallel_detector.probabilities(talk.audio)
    assert len(probs) == len(SpeechDetector(VadSettings()).probabilities(talk.audio))
    parallel = parallel_detector.segments(talk.audio)
    assert len(parallel) == len(sequential)
    for a, b in zip(parallel, sequential):
        assert abs(a.start - b.start) <= 3 * 512 and abs(a.end - b.end) <= 3 * 512


def test_onnx_threads_give_the_same_probabilities_and_segments(recording):
    one, two = SpeechDetector(VadSettings(onnx_threads=1)), SpeechDetector(VadSettings(onnx_threads=2))
    assert two.session.get_session_options().intra_op_num_threads == 2
    np.testing.assert_array_equal(one.probabilities(recording.audio), two.probabilities(recording.audio))
    assert one.segments(recording.audio) == two.segments(recording.audio)


def test_block_by_block_probabilities_equal_silero_sequence_model(recording):
    from silero_vad import SileroVADSequence

    from deployments.speech.vad import silero_model_path

    reference = SileroVADSequence(str(silero_model_path()), max_frames=4096).audio_forward(recording.audio)
    ours = SpeechDetector(VadSettings(frames_per_call=100)).probabilities(recording.audio)
    np.testing.assert_array_equal(ours, reference)
