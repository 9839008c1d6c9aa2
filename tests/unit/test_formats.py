from deployments.speech import formats
from deployments.speech.schemas import ChannelText, Segment, TranscriptionResult, Word

RESULT = TranscriptionResult(duration=3725.5, text="Hi there. Bye.",
                             segments=[Segment(id=0, start=0.0, end=1.25, text="Hi there."),
                                       Segment(id=1, start=3723.5, end=3725.004, text="Bye.")],
                             words=[Word(word="Hi", start=0.0, end=0.5)])


def test_srt():
    assert formats.srt(RESULT.segments) == (
        "1\n00:00:00,000 --> 00:00:01,250\nHi there.\n\n2\n01:02:03,500 --> 01:02:05,004\nBye.\n")


def test_vtt():
    assert formats.vtt(RESULT.segments).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHi there.\n")


def test_render_granularities():
    assert formats.render(RESULT, "json", set()) == {"text": "Hi there. Bye."}
    assert formats.render(RESULT, "text", set()) == "Hi there. Bye.\n"
    default = formats.render(RESULT, "verbose_json", set())
    assert "segments" in default and "words" not in default
    words = formats.render(RESULT, "verbose_json", {"word"})
    assert "words" in words and "segments" not in words
    both = formats.render(RESULT, "verbose_json", {"word", "segment"})
    assert both["words"][0] == {"word": "Hi", "start": 0.0, "end": 0.5} and both["task"] == "transcribe"


def test_legacy():
    assert formats.legacy(RESULT, False) == {"text": "Hi there. Bye.", "timestamps": None}
    timed = formats.legacy(RESULT, True)["timestamps"]
    assert timed["words"] == [{"text": "Hi", "start": 0.0, "end": 0.5}]
    assert timed["segments"][1] == {"text": "Bye.", "start": 3723.5, "end": 3725.004}


def test_confidence_and_logprobs_appear_only_when_known():
    from deployments.speech.schemas import TokenLogprob

    scored = RESULT.model_copy(update={"words": [Word(word="Hi", start=0.0, end=0.5, probability=0.93)],
                                       "logprobs": [TokenLogprob(token=" Hi", logprob=-0.07, bytes=[32, 72, 105])]})
    assert formats.render(scored, "verbose_json", {"word"})["words"][0]["probability"] == 0.93
    assert formats.legacy(scored, True)["timestamps"]["words"][0]["confidence"] == 0.93
    assert formats.render(scored, "json", set())["logprobs"] == [{"token": " Hi", "logprob": -0.07,
                                                                   "bytes": [32, 72, 105]}]
    assert "logprobs" not in formats.render(RESULT, "json", set())


def test_multichannel_shapes_in_every_format():
    result = TranscriptionResult(
        duration=3.0, text="one two three", channels=[ChannelText(channel=0, text="one three"),
                                                      ChannelText(channel=1, text="two")],
        segments=[Segment(id=0, start=0.1, end=0.5, text="one", channel=0),
                  Segment(id=1, start=0.6, end=0.9, text="two", channel=1),
                  Segment(id=2, start=1.0, end=1.4, text="three", channel=0)],
        words=[Word(word="one", start=0.1, end=0.5, channel=0), Word(word="two", start=0.6, end=0.9, channel=1),
               Word(word="three", start=1.0, end=1.4, channel=0)])
    assert formats.render(result, "json", set()) == {"text": "one two three", "channels": [
        {"channel": 0, "text": "one three"}, {"channel": 1, "text": "two"}]}
    verbose = formats.render(result, "verbose_json", {"word", "segment"})
    assert [w["channel"] for w in verbose["words"]] == [0, 1, 0] and verbose["segments"][1]["channel"] == 1
    assert "[channel 1] two" in formats.render(result, "srt", set())
    assert "<v channel 0>three</v>" in formats.render(result, "vtt", set())
    legacy = formats.legacy(result, include_timestamps=True)
    assert legacy["channels"][1] == {"channel": 1, "text": "two"} and legacy["timestamps"]["words"][1]["channel"] == 1
    # without channels nothing changes: no channel keys anywhere
    mono = result.model_copy(update={"channels": None, "words": [], "segments": [Segment(id=0, start=0, end=1,
                                                                                         text="one")]})
    assert formats.render(mono, "json", set()) == {"text": "one two three"}
    assert "channel" not in formats.render(mono, "srt", set()) + formats.render(mono, "vtt", set())
