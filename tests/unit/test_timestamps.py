"""Token pieces + TDT timings -> words and segments: offsets, punctuation, order, no overlaps, bounds."""

from deployments.speech.schemas import SegmentTokens
from deployments.speech.timestamps import align, segment_words

W = "\u2581"


def tokens(pieces, starts, durations):
    return SegmentTokens(text="", pieces=pieces, start_frames=starts, durations=durations, frame_s=0.08)


def test_words_from_pieces():
    spans = segment_words(tokens([W + "he", "llo", W + "wor", "ld", "."], [2, 3, 6, 7, 12], [1, 2, 1, 1, 1]))
    assert [(s.text, round(s.start, 2), round(s.end, 2)) for s in spans] == [
        ("hello", 0.16, 0.4), ("world.", 0.48, 0.64)]  # the late "." joins the text, not the timing


def test_offsets_sentences_and_vad_boundaries():
    first = tokens([W + "One", ".", W + "Two"], [0, 2, 5], [2, 1, 2])
    second = tokens([W + "three", "?"], [1, 3], [3, 1])
    words, segments = align([(first, 1.0, 2.0), (second, 5.0, 6.0)], duration=6.5)
    assert [(w.word, w.start, w.end) for w in words] == [
        ("One.", 1.0, 1.16), ("Two", 1.4, 1.56), ("three?", 5.08, 5.32)]
    assert [(s.id, s.text, s.start, s.end) for s in segments] == [
        (0, "One.", 1.0, 1.16), (1, "Two", 1.4, 1.56), (2, "three?", 5.08, 5.32)]


def test_monotone_and_clipped():
    # a model can emit overlapping or out-of-range times; the result never overlaps and stays in bounds
    overlapping = tokens([W + "a", W + "b", W + "c"], [5, 3, 40], [4, 1, 10])
    words, _ = align([(overlapping, 0.0, 2.0)], duration=1.5)
    previous = 0.0
    for w in words:
        assert previous <= w.start <= w.end <= 1.5
        previous = w.end


def test_empty_segment():
    assert align([(tokens([], [], []), 0.0, 1.0)], 1.0) == ([], [])


def test_bare_word_marker_starts_the_next_word():
    spans = segment_words(tokens([W, "s", "i", "x", W, "t", "wo"], [3, 4, 5, 6, 10, 10, 11], [1, 1, 1, 2, 0, 1, 2]))
    assert [(s.text, round(s.start, 2), round(s.end, 2)) for s in spans] == [("six", 0.24, 0.64),
                                                                          ("two", 0.8, 1.04)]
