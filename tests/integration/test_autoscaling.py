"""Autoscaling seen acting: under sustained load the Transcriber and the Segmenter each scale 1 -> 2 replicas, and
back to 1 once idle; every answer given while replicas come and go is the file's own transcript.

The shipped autoscaling_config (serve_config.yaml) with short delays (the "test preset" below): the same knobs,
minutes shortened to seconds so the test fits CI."""

from __future__ import annotations

import random

import httpx
import pytest

from tests.helpers import encode, long_recording, random_phrases
from tests.load import BackgroundLoad, running_replicas, seconds, wait_until, with_transcripts

pytestmark = pytest.mark.integration
APP = "autoscaling"
FAST = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "upscale_delay_s": 1, "downscale_delay_s": 3,
        "metrics_interval_s": 0.5, "look_back_period_s": 2}
PRESET = {"Transcriber": {"autoscaling_config": {**FAST, "target_ongoing_requests": 2}},
          # a file's VAD is quick next to its transcription: a fraction of a request in flight is already load
          "Segmenter": {"autoscaling_config": {**FAST, "target_ongoing_requests": 0.2}}}
CLIENTS = 8


@pytest.fixture(scope="module")
def app(module_app, digits_model):
    return module_app(PRESET, model=str(digits_model))


@pytest.fixture(scope="module")
def files(app) -> list[tuple[bytes, str]]:
    """Recordings of several phrases and the transcript each gets alone, before any scaling."""
    rng = random.Random(40)
    return with_transcripts(app.url, [encode(long_recording(random_phrases(rng, 6), rng).audio)
                                      for _ in range(8)])


def test_transcriber_and_segmenter_scale_up_under_load_and_down_when_idle(app, files):
    def both_at(count: int) -> bool:
        return running_replicas(APP, "Transcriber") == count and running_replicas(APP, "Segmenter") == count

    # from one replica each (the reference requests may have scaled the Segmenter already: it comes back)
    assert wait_until(lambda: both_at(1), timeout_s=120) is not None

    with BackgroundLoad(app.url, files, CLIENTS) as load:
        scaled_up_s = wait_until(lambda: both_at(2), timeout_s=180)
        # more requests at two replicas, answered by both
        at_two = len(load.answers)
        wait_until(lambda: len(load.answers) >= at_two + 2 * CLIENTS, timeout_s=120)
    scaled_down_s = wait_until(lambda: both_at(1), timeout_s=180)
    outcome = load.outcome
    print(f"autoscaling: 1 -> 2 replicas (Transcriber and Segmenter) {seconds(scaled_up_s)} after the load began, "
          f"2 -> 1 {seconds(scaled_down_s)} after it ended; {len(outcome.answers)} requests, "
          f"{len(outcome.failed)} failed")
    assert scaled_up_s is not None, "both deployments reach 2 replicas under load"
    assert scaled_down_s is not None, "and come back to 1 when idle"
    assert outcome.answers and not outcome.failed and not outcome.wrong
    # the scaled-down service still answers as before
    wav, expected = files[0]
    assert httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                      timeout=120).json()["text"] == expected
