"""multichannel=true through the served graph with the trained digits model: each channel transcribed on its own
(its text and word times equal the same channel sent alone as mono), merged on one timeline, in every format."""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pytest

from tests.helpers import SAMPLE_RATE, encode, long_recording, normalise, random_phrases

pytestmark = pytest.mark.integration
FRAME_S = 0.08


@pytest.fixture(scope="module")
def app(digits_app):
    return digits_app


def channels_of(*recordings: np.ndarray) -> np.ndarray:
    """Recordings as one (samples, channels) array, each padded with quiet to the longest."""
    longest = max(len(r) for r in recordings)
    noise = np.random.default_rng(1).standard_normal(longest).astype(np.float32) * 1e-3
    return np.stack([np.concatenate([r, noise[:longest - len(r)]]) for r in recordings], axis=1)


def post(app, audio: np.ndarray, path: str = "/v1/audio/transcriptions", **fields) -> httpx.Response:
    return httpx.post(app.url + path, files={"file": ("a.wav", encode(audio))}, data=fields, timeout=300)


def words_of(body: dict, channel: int | None = None) -> list[tuple[str, float, float]]:
    return [(w["word"], w["start"], w["end"]) for w in body["words"] if channel is None or w["channel"] == channel]


@pytest.fixture(scope="module")
def stereo():
    rng = random.Random(21)
    return channels_of(*[long_recording(random_phrases(rng, 5), rng, phrase_gap_s=(0.8, 2.0)).audio
                         for _ in range(2)])


def test_each_channel_equals_that_channel_alone_and_they_share_one_timeline(app, stereo):
    verbose = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    both = post(app, stereo, multichannel="true", **verbose).json()
    for channel in range(2):
        alone = post(app, stereo[:, channel], **verbose).json()
        assert both["channels"][channel] == {"channel": channel, "text": alone["text"]} and alone["text"]
        # the same words; times within one 80 ms frame (a segment batched with another channel's sees its padding
        # in NeMo's subsampling convolutions: the last frames' numbers move slightly, as in any batch)
        assert [w for w, _, _ in words_of(both, channel)] == [w for w, _, _ in words_of(alone)]
        assert all(abs(a[1] - b[1]) <= FRAME_S + 1e-6 and abs(a[2] - b[2]) <= FRAME_S + 1e-6
                   for a, b in zip(words_of(both, channel), words_of(alone))), f"channel {channel}'s times"
    starts = [w["start"] for w in both["words"]]
    assert starts == sorted(starts) and {w["channel"] for w in both["words"]} == {0, 1}
    assert [s["id"] for s in both["segments"]] == list(range(len(both["segments"])))
    assert all(s["channel"] in (0, 1) for s in both["segments"])
    # the text is every channel's, in the time order of their speech segments
    in_time = " ".join(s["text"] for s in both["segments"])
    assert normalise(both["text"]) == normalise(in_time)
    # without the flag, nothing changes: the downmix, no channel anywhere
    plain = post(app, stereo, **verbose).json()
    assert "channels" not in plain and all("channel" not in w for w in plain["words"])


def test_every_format_names_the_channels(app, stereo):
    body = post(app, stereo, multichannel="true").json()
    assert set(body) == {"text", "channels"} and len(body["channels"]) == 2
    assert post(app, stereo, multichannel="true", response_format="text").text.strip() == body["text"]
    srt = post(app, stereo, multichannel="true", response_format="srt").text
    vtt = post(app, stereo, multichannel="true", response_format="vtt").text
    assert "[channel 0] " in srt and "[channel 1] " in srt
    assert vtt.startswith("WEBVTT") and "<v channel 0>" in vtt and "<v channel 1>" in vtt
    sse = post(app, stereo, multichannel="true", stream="true").text
    events = [json.loads(line[len("data: "):]) for line in sse.splitlines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "transcript.text.delta"]
    assert {e["channel"] for e in deltas} == {0, 1} and events[-1] == {"type": "transcript.text.done",
                                                                       "text": body["text"]}
    legacy = post(app, stereo, path="/transcribe", multichannel="true", include_timestamps="true").json()
    assert legacy["channels"] == body["channels"] and {w["channel"] for w in legacy["timestamps"]["words"]} == {0, 1}
    handled = app.handle().transcribe.remote(stereo, sample_rate=SAMPLE_RATE, multichannel=True).result()
    assert [c.model_dump() for c in handled.channels] == body["channels"]


def test_six_channels_one_silent_and_the_limit(app):
    rng = random.Random(6)
    recordings = [long_recording(random_phrases(rng, 2), rng, phrase_gap_s=(0.8, 1.2)).audio for _ in range(5)]
    silent = np.zeros(SAMPLE_RATE * 4, np.float32)
    six = channels_of(*recordings[:3], silent, *recordings[3:])
    transcriber = app.deployment("Transcriber")
    items = lambda: transcriber.stats.remote().result()["items"]  # noqa: E731 - segments the model heard
    before = items()
    alone = [post(app, six[:, c]).json()["text"] for c in range(6) if c != 3]
    between = items()
    body = post(app, six, multichannel="true").json()
    assert [c["text"] for c in body["channels"]] == alone[:3] + [""] + alone[3:]
    # the silent channel cost only its VAD: the model heard as many segments as the five others alone
    assert items() - between == between - before
    nine = channels_of(*recordings, *recordings[:4])
    refused = post(app, nine, multichannel="true")
    assert refused.status_code == 400 and "at most 8" in refused.json()["error"]["message"]
    assert refused.json()["error"]["code"] == "too_many_channels"
