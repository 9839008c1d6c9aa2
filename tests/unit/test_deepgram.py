"""Deepgram's listen API subset: the query a plugin sends, and the messages it reads (Ray-free)."""

import pytest
from starlette.datastructures import QueryParams

from deployments.speech import deepgram
from deployments.speech.errors import InvalidRequest
from deployments.speech.schemas import ChannelText, TranscriptionResult, Word

# what LiveKit's deepgram.STT sends by default (and a few of Pipecat's)
LIVEKIT = ("model=nova-3&punctuate=true&smart_format=false&no_delay=true&interim_results=true&encoding=linear16"
           "&vad_events=true&sample_rate=16000&channels=1&endpointing=25&filler_words=true&profanity_filter=false"
           "&numerals=false&mip_opt_out=false&language=en-US&keyterm=Parakeet&keyterm=Ray+Serve")


def test_a_plugins_default_query_is_read_and_the_rest_ignored():
    options = deepgram.ListenOptions.from_query(QueryParams(LIVEKIT), live=True)
    assert (options.sample_rate, options.channels, options.interim_results, options.vad_events) == (16000, 1, True,
                                                                                                    True)
    assert (options.endpointing_ms, options.model, options.language) == (25, "nova-3", "en")
    assert options.keyterms == ["Parakeet", "Ray Serve"]
    assert deepgram.ListenOptions.from_query(QueryParams("endpointing=false"), live=True).endpointing_ms == \
        deepgram.UNLIMITED_PAUSE_MS
    assert deepgram.ListenOptions.from_query(QueryParams(""), live=True).endpointing_ms is None
    assert deepgram.ListenOptions.from_query(QueryParams("language=multi"), live=True).language is None


@pytest.mark.parametrize("query,needle", [
    ("encoding=opus", "encoding=opus"), ("sample_rate=abc", "sample_rate"), ("sample_rate=100", "sample_rate"),
    ("interim_results=maybe", "interim_results"), ("endpointing=-5", "endpointing"), ("channels=0", "channels")])
def test_bad_parameters_are_named(query, needle):
    with pytest.raises(InvalidRequest, match=needle):
        deepgram.ListenOptions.from_query(QueryParams(query), live=True)


def test_results_carry_every_field_the_plugins_read():
    identity = deepgram.Identity("parakeet-tdt-0.6b-v2")
    words = [Word(word="Four,", start=0.5, end=0.8, probability=0.9), Word(word="two.", start=0.9, end=1.2,
                                                                           probability=0.7)]
    message = deepgram.results(identity, "Four, two.", 0.4, 1.3, True, True, False, words,
                               deepgram.confidence(words))
    assert message["type"] == "Results" and message["is_final"] and message["speech_final"]
    assert message["metadata"]["request_id"] == identity.request_id and message["from_finalize"] is False
    alternative = message["channel"]["alternatives"][0]
    assert alternative["transcript"] == "Four, two." and alternative["confidence"] == 0.8
    assert alternative["words"][0] == {"word": "four", "start": 0.5, "end": 0.8, "confidence": 0.9,
                                       "punctuated_word": "Four,"}
    assert (message["start"], message["duration"]) == (0.4, 0.9)


def test_prerecorded_has_a_channel_per_channel():
    identity = deepgram.Identity("m")
    result = TranscriptionResult(duration=2.0, text="one two", channels=[ChannelText(channel=0, text="one"),
                                                                          ChannelText(channel=1, text="two")],
                                 words=[Word(word="one", start=0.1, end=0.4, channel=0),
                                        Word(word="two", start=0.5, end=0.9, channel=1)])
    body = deepgram.prerecorded(identity, result, b"abc")
    assert [c["alternatives"][0]["transcript"] for c in body["results"]["channels"]] == ["one", "two"]
    assert body["metadata"]["channels"] == 2 and body["metadata"]["request_id"] == identity.request_id
    mono = deepgram.prerecorded(identity, result.model_copy(update={"channels": None}), b"abc")
    assert [c["alternatives"][0]["transcript"] for c in mono["results"]["channels"]] == ["one two"]
