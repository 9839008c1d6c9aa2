"""Direct batched inference on a random-weight tiny Parakeet-architecture model."""

import numpy as np
import pytest

from deployments.speech.parakeet import ModelLoadError, ParakeetRecognizer


@pytest.fixture(scope="module")
def recognizer(tiny_model):
    return ParakeetRecognizer.load(str(tiny_model), device="cpu", local_attention_above_s=3.0)


def test_batch_matches_items_alone(recognizer):
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 12000, 20000, 900)]
    together = recognizer.transcribe(waves)
    alone = [recognizer.transcribe([w])[0] for w in waves]
    for a, b in zip(together, alone):
        assert a.token_ids == b.token_ids and a.start_frames == b.start_frames and a.durations == b.durations
    first = together[0]
    assert first.frame_s == pytest.approx(0.08) and len(first.pieces) == len(first.token_ids)
    assert all(0 <= f < first.frames for f in first.start_frames)


def test_long_input_uses_local_attention_copy(recognizer):
    encoder = recognizer.model.encoder
    out = recognizer.transcribe([np.zeros(16000 * 4, np.float32)])
    assert out[0].frames == 50
    assert recognizer._local_encoder is not None and recognizer.model.encoder is encoder
    assert recognizer.model.cfg.encoder.self_attention_model == "rel_pos"  # the shared model is untouched


def test_plan_batches_limits_padding(recognizer):
    groups = recognizer.plan_batches([16000, 16000 * 600, 15000, 17000])
    assert [1] in groups and sorted(i for g in groups for i in g) == [0, 1, 2, 3]


def test_plan_batches_caps_the_audio_in_one_batch(recognizer, monkeypatch):
    minute = 16000 * 60
    assert recognizer.plan_batches([15 * minute, 15 * minute]) == [[0], [1]]  # 30 padded minutes > 20
    assert recognizer.plan_batches([9 * minute, 9 * minute]) == [[0, 1]]
    monkeypatch.setattr(recognizer, "max_batch_samples", 16000 * 10)
    assert recognizer.plan_batches([16000 * 4] * 3) == [[0, 1], [2]]


def test_a_planned_model_call_is_planned_once(recognizer, monkeypatch):
    """The Transcriber plans a model call once (for its padding metric) and hands that plan to ``transcribe``."""
    lengths = [16000, 24000, 17000]
    plan = recognizer.plan_batches(lengths)
    plans: list = []
    planner = recognizer.plan_batches
    monkeypatch.setattr(recognizer, "plan_batches", lambda sizes: plans.append(sizes) or planner(sizes))
    waveforms = [np.zeros(n, np.float32) for n in lengths]
    recognizer.padding_samples(lengths, plan)
    planned = recognizer.transcribe(waveforms, plan=plan)
    assert plans == [] and len(planned) == 3
    assert [t.text for t in recognizer.transcribe(waveforms)] == [t.text for t in planned] and len(plans) == 1


def test_padding_samples_count_the_zeros_of_each_planned_sub_batch(recognizer):
    # 15000 and 16000 and 17000 share one sub-batch (padded to 17000); the 10-minute file runs alone
    assert recognizer.padding_samples([16000, 16000 * 600, 15000, 17000]) == (17000 - 16000) + (17000 - 15000)
    assert recognizer.padding_samples([16000, 16000]) == 0


def test_load_failure_is_one_clear_line(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        ParakeetRecognizer.load(str(tmp_path / "missing.nemo"))
    message = str(info.value)
    assert "\n" not in message and "PARAKEET_MODEL" in message and "missing.nemo" in message
    with pytest.raises(ModelLoadError, match="Hugging Face"):
        ParakeetRecognizer.load("nvidia/this-model-is-not-cached")
