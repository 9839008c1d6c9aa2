"""The benchmark's random models decode like a trained one once biased: a random joint emits a token on nearly
every 80 ms frame (inflating the decoder's cost); biased, it emits a few tokens a second on speech it was not
calibrated on, with durations spread over 0-4 frames, and nothing outside the joint changed (the encoder and the
predictor network compute what they did)."""

from __future__ import annotations

import pytest

from bench.audio import synthetic_speech
from bench.models import (SPEECH_TOKENS_PER_S, ArchitectureSpec, bias_to_speech_rate, build_model,
                          default_tokenizer_text, measure_emission, train_tokenizer)


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    from deployments.speech.parakeet import ParakeetRecognizer

    spec = ArchitectureSpec.named("tiny")
    folder = tmp_path_factory.mktemp("tiny-rate")
    model = build_model(spec, train_tokenizer(folder, spec.vocab_size, default_tokenizer_text(spec.vocab_size)))
    return ParakeetRecognizer(model, "cpu", use_bf16=False, confidence=False)


def test_biased_joint_emits_at_speech_rate_on_unseen_speech(recognizer):
    import torch

    held_out = synthetic_speech(40, seed=11)
    before = measure_emission(recognizer, held_out)
    frames_per_s = 1 / recognizer.frame_s
    assert before.tokens_per_s > 0.8 * frames_per_s, "a random joint emits on nearly every frame"
    untouched = {name: p.detach().clone() for name, p in recognizer.model.named_parameters()
                 if not name.startswith("joint.")}
    calibrated = bias_to_speech_rate(recognizer, synthetic_speech(30, seed=1))
    after = measure_emission(recognizer, held_out)
    print(f"tokens/s: random {before.tokens_per_s:.1f}, biased {after.tokens_per_s:.2f} on unseen speech "
          f"(calibration audio {calibrated.tokens_per_s:.2f}); durations {[round(d, 2) for d in after.durations]}")
    assert calibrated.tokens_per_s == pytest.approx(SPEECH_TOKENS_PER_S, rel=0.1)
    assert 0.5 * SPEECH_TOKENS_PER_S <= after.tokens_per_s <= 2 * SPEECH_TOKENS_PER_S
    assert sum(share > 0.1 for share in after.durations) >= 3, "durations spread, not one value"
    for name, parameter in recognizer.model.named_parameters():
        if name in untouched:
            assert torch.equal(parameter, untouched[name]), f"{name} changed: only the joint may"
