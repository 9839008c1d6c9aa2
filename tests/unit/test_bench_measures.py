"""The live-turns bench's own measures: where an utterance's speech truly ends (time to final counts from there)
and whether it pauses inside (the split rows count fluent utterances apart)."""

import numpy as np

from bench.turns import INNER_PAUSE_MS, longest_inner_quiet_ms, true_end

RATE = 16000


def _tone(seconds: float, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _quiet(seconds: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    return (noise * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def test_speech_ends_at_the_last_word_even_over_background_noise_louder_than_five_percent_of_the_peak():
    rng = np.random.default_rng(0)
    for noise in (0.001, 0.05):  # a clean recording, and one whose noise floor is ~10 % of the tone's RMS
        audio = np.concatenate([_quiet(0.3, noise, rng), _tone(1.0), _quiet(0.6, noise, rng)])
        assert abs(true_end(audio) - 1.3 * RATE) <= 160, noise  # within one 10 ms frame, not at the end (1.9 s)


def test_an_utterance_pausing_mid_phrase_is_told_from_a_fluent_one():
    rng = np.random.default_rng(1)
    for noise in (0.001, 0.05):
        fluent = np.concatenate([_quiet(0.2, noise, rng), _tone(0.5), _quiet(0.08, noise, rng), _tone(0.5),
                                 _quiet(0.3, noise, rng)])
        pausing = np.concatenate([_quiet(0.2, noise, rng), _tone(0.5), _quiet(0.4, noise, rng), _tone(0.5),
                                  _quiet(0.3, noise, rng)])
        assert longest_inner_quiet_ms(fluent) < INNER_PAUSE_MS <= longest_inner_quiet_ms(pausing), noise
        assert abs(longest_inner_quiet_ms(pausing) - 400) <= 20
