"""The GPU path, where CUDA is present (marker ``gpu``): bf16, CUDA graphs in the greedy decoder, keyterms with
NeMo's biasing on the GPU. Elsewhere they are deselected (tests/conftest.py; the session header says so)."""

from __future__ import annotations

import pytest

from deployments.speech.keyterms import Keyterms
from deployments.speech.parakeet import ParakeetRecognizer
from tests.helpers import noisy_heldout

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def recognizer(digits_model):
    return ParakeetRecognizer.load(str(digits_model), device="cuda", name="digits")


def test_bf16_on_cuda_transcribes_like_the_cpu(recognizer, digits_model):
    import torch

    audios = [a for a, _ in noisy_heldout(10.0)[:8]]
    assert recognizer.dtype == torch.bfloat16
    cpu = ParakeetRecognizer.load(str(digits_model), device="cpu")
    gpu_texts, cpu_texts = [t.text for t in recognizer.transcribe(audios)], [t.text for t in cpu.transcribe(audios)]
    assert sum(g == c for g, c in zip(gpu_texts, cpu_texts)) >= 7  # bf16 may flip a near-tie


def test_keyterms_on_cuda_raise_recall_and_keep_the_plain_items_as_they_were(recognizer):
    noisy = noisy_heldout(0.0)
    audios, texts = [a for a, _ in noisy], [t for _, t in noisy]
    plain = [t.text for t in recognizer.transcribe(audios)]
    boosted = [t.text for t in recognizer.transcribe(audios, [Keyterms((t,), 0.5) for t in texts])]
    assert sum(b == t for b, t in zip(boosted, texts)) >= sum(p == t for p, t in zip(plain, texts)) + 10
    mixed = recognizer.transcribe(audios[:8], [Keyterms(("nine nine",), 3.0) if i % 2 else None for i in range(8)])
    assert [m.text for m in mixed[0::2]] == [t.text for t in recognizer.transcribe(audios[:8])][0::2]


def test_cuda_graphs_stay_on_for_plain_batches(recognizer):
    computer = recognizer.model.decoding.decoding.decoding_computer
    recognizer.transcribe([a for a, _ in noisy_heldout(10.0)[:4]])
    assert computer.cuda_graphs_mode is not None
