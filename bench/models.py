"""Build Parakeet-architecture models from a small size spec (no weights downloaded).

Used by the tests (a random-weight tiny model), the test-model maker (a model the project trains) and the
benchmarks (the full 0.6B architecture with random weights, which costs what the real model costs). Every model
built here is an ``EncDecRNNTBPEModel`` with a FastConformer encoder (``dw_striding`` x8 subsampling, rel_pos
attention), a mel preprocessor with Parakeet's 25 ms / 10 ms framing and a TDT decoder with durations 0..4, so the
serving code treats it exactly like the real checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

import yaml
from pydantic import BaseModel, ConfigDict

from deployments.speech.parakeet_defaults import SAMPLE_RATE

TDT_DURATIONS = [0, 1, 2, 3, 4]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"


class ArchitectureSpec(BaseModel):
    """The sizes that distinguish a tiny test model from parakeet-tdt-0.6b-v2 (configs/models/*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int
    features: int = 128
    n_layers: int = 24
    d_model: int = 1024
    n_heads: int = 8
    subsampling_conv_channels: int = 256
    conv_kernel_size: int = 9
    pred_hidden: int = 640
    pred_rnn_layers: int = 2
    joint_hidden: int = 640
    dropout: float = 0.1

    @classmethod
    def named(cls, name: str) -> "ArchitectureSpec":
        """Load ``configs/models/<name>.yaml`` (``tiny``, ``digits`` or ``full``) or a path to such a file."""
        path = Path(name)
        if not path.suffix:
            path = CONFIG_DIR / f"{name}.yaml"
        return cls.model_validate(yaml.safe_load(path.read_text()))


def random_words(count: int, seed: int = 0) -> list[str]:
    """Pronounceable pseudo-words: enough variety to train a BPE vocabulary of any size we need."""
    rng = random.Random(seed)
    onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "st", "tr", "pl", "ch", "sh", "th", "br", "gr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
    return ["".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(1, 4))) for _ in range(count)]


def train_tokenizer(out_dir: Path, vocab_size: int, sentences: Iterable[str]) -> Path:
    """Train a SentencePiece BPE tokenizer in the layout NeMo expects (tokenizer.model + vocab.txt)."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    text = list(sentences)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        # NeMo splits segments on punctuation that is in the vocabulary, so make sure it is.
        user_defined_symbols=[".", ",", "?", "!"],
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    processor = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    with open(out_dir / "vocab.txt", "w") as vocab:
        for piece_id in range(processor.get_piece_size()):
            piece = processor.id_to_piece(piece_id)
            vocab.write((piece[1:] if piece.startswith("\u2581") else f"##{piece}") + "\n")
    return out_dir


def default_tokenizer_text(vocab_size: int) -> list[str]:
    """Training text for a random-weight model's tokenizer: punctuated pseudo-sentences."""
    words = random_words(max(2000, vocab_size * 30))
    sentences = []
    for start in range(0, len(words), 8):
        chunk = words[start:start + 8]
        chunk[0] = chunk[0].capitalize()
        sentences.append(" ".join(chunk) + random.Random(start).choice([".", ",", "?", "!"]))
    return sentences


def model_config(spec: ArchitectureSpec, tokenizer_dir: Path) -> dict:
    """The NeMo model config (as a plain dict) for ``spec``, shaped like parakeet-tdt-0.6b-v2's own."""
    return {
        "sample_rate": SAMPLE_RATE,
        "model_defaults": {
            "enc_hidden": spec.d_model,
            "pred_hidden": spec.pred_hidden,
            "joint_hidden": spec.joint_hidden,
            "tdt_durations": TDT_DURATIONS,
            "num_tdt_durations": len(TDT_DURATIONS),
        },
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": SAMPLE_RATE,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": spec.features,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 1.0e-05,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "spec_augment": {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2,
            "time_masks": 2,
            "freq_width": max(4, spec.features // 8),
            "time_width": 0.05,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": spec.features,
            "feat_out": -1,
            "n_layers": spec.n_layers,
            "d_model": spec.d_model,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": spec.subsampling_conv_channels,
            "causal_downsampling": False,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": spec.n_heads,
            "att_context_size": [-1, -1],
            "att_context_style": "regular",
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": spec.conv_kernel_size,
            "conv_norm_type": "batch_norm",
            "conv_context_size": None,
            "dropout": spec.dropout,
            "dropout_pre_encoder": spec.dropout,
            "dropout_emb": 0.0,
            "dropout_att": spec.dropout,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {"pred_hidden": spec.pred_hidden, "pred_rnn_layers": spec.pred_rnn_layers,
                        "t_max": None, "dropout": spec.dropout},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "fused_batch_size": 4,
            "jointnet": {"joint_hidden": spec.joint_hidden, "activation": "relu", "dropout": spec.dropout},
            "num_extra_outputs": len(TDT_DURATIONS),
        },
        "decoding": {
            "strategy": "greedy_batch",
            "model_type": "tdt",
            "durations": TDT_DURATIONS,
            "greedy": {"max_symbols": 10},
        },
        "loss": {
            "loss_name": "tdt",
            "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0, "durations": TDT_DURATIONS,
                           "sigma": 0.02, "omega": 0.1},
        },
        # File-path transcription in NeMo reads this stub; nothing is loaded from it.
        "validation_ds": {"manifest_filepath": None, "sample_rate": SAMPLE_RATE, "batch_size": 1, "defer_setup": True},
        "optim": {"name": "adamw", "lr": 1e-3},
    }


def build_model(spec: ArchitectureSpec, tokenizer_dir: Path, seed: int = 0):
    """A fresh ``EncDecRNNTBPEModel`` with random weights (deterministic for a given seed)."""
    import torch
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    model = EncDecRNNTBPEModel(cfg=OmegaConf.create(model_config(spec, tokenizer_dir)))
    return model.eval()


def build_random_nemo(name: str, out_path: Path, seed: int = 0, speech_rate: bool = False) -> Path:
    """Build a random-weight model of architecture ``name`` and save it as a ``.nemo`` file at ``out_path``;
    ``speech_rate``: its joint biased to decode like the trained model (``bias_to_speech_rate``, on synthetic
    speech)."""
    spec = ArchitectureSpec.named(name)
    out_path = Path(out_path)
    tokenizer_dir = train_tokenizer(out_path.parent / f"{out_path.stem}_tokenizer", spec.vocab_size,
                                    default_tokenizer_text(spec.vocab_size))
    model = build_model(spec, tokenizer_dir, seed=seed)
    if speech_rate:
        from bench.audio import synthetic_speech
        from deployments.speech.parakeet import ParakeetRecognizer

        bias_to_speech_rate(ParakeetRecognizer(model, "cpu", use_bf16=False, confidence=False),
                            synthetic_speech(30, seed=1))
    model.save_to(str(out_path))
    return out_path


# ---------------------------------------------------------------------------------------------- a realistic decoder

# parakeet-tdt-0.6b-v2 on English speech: ~150 words a minute at ~1.4 pieces of its 1024-piece vocabulary per word,
# so ~3.5 tokens a second, each lasting a few 80 ms frames (its blanks skip silence up to 4 frames at a time).
SPEECH_TOKENS_PER_S = 3.5
# How often each TDT duration (0..4 frames) is the one predicted: mostly short steps, some skips
SPEECH_DURATIONS = [0.05, 0.35, 0.3, 0.15, 0.15]
LOGIT_SPREAD = 3.0  # standard deviation over frames of the blank and duration logits after biasing (nats)


class Emission(BaseModel):
    """What greedy TDT decoding emitted on some audio."""

    tokens_per_s: float
    durations: list[float]  # share of emitted tokens with each duration


def _decode_counts(model, encoded, lengths, seconds: float) -> Emission:
    hypotheses = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=lengths,
                                                                return_hypotheses=True)
    tokens = sum(len(h.y_sequence) for h in hypotheses)
    counts = [0] * len(TDT_DURATIONS)
    for h in hypotheses:
        for d in (h.token_duration.tolist() if hasattr(h.token_duration, "tolist") else h.token_duration or []):
            counts[TDT_DURATIONS.index(int(d))] += 1
    return Emission(tokens_per_s=tokens / seconds, durations=[c / max(1, sum(counts)) for c in counts])


def measure_emission(recognizer, audio) -> Emission:
    """Tokens a second and the duration mix the recognizer's greedy decoding emits on ``audio`` (16 kHz)."""
    import torch

    with torch.inference_mode():
        encoded, lengths = _encode(recognizer, audio)
        return _decode_counts(recognizer.model, encoded, lengths, len(audio) / SAMPLE_RATE)


def _joint_logits_from_start(model, encoded):
    """The joint's outputs for every frame of ``encoded`` (one item) with the predictor at its start state."""
    import torch

    prediction, _ = model.decoder.predict(None, state=None, add_sos=False, batch_size=1)
    hidden = model.joint.project_encoder(encoded.transpose(1, 2)) + model.joint.project_prednet(prediction)
    return model.joint.joint_net(hidden)[0].float() if hidden.dim() == 3 else torch.empty(0)


def _encode(recognizer, audio):
    import torch

    model = recognizer.model
    signal = torch.from_numpy(audio[None, :]).to(recognizer.device)
    length = torch.tensor([len(audio)], device=recognizer.device)
    features, feature_lengths = model.preprocessor(input_signal=signal, length=length)
    return model.encoder(audio_signal=features.to(recognizer.dtype), length=feature_lengths)


def bias_to_speech_rate(recognizer, audio, tokens_per_s: float = SPEECH_TOKENS_PER_S,
                        durations: list[float] = SPEECH_DURATIONS, rounds: int = 8) -> Emission:
    """Bias a random-weight model's joint so greedy decoding on speech emits ``tokens_per_s`` with about the
    ``durations`` mix, as the trained model does (a random joint emits a token on nearly every frame, inflating
    the decoder's cost). Only weights of the joint change (its predictor projection, and the blank and duration
    rows of its output layer): the encoder and the predictor network compute what they did. Calibrated on
    ``audio``; returns the emission reached there."""
    import math

    import torch

    model = recognizer.model
    output = model.joint.joint_net[-1]
    vocab = model.tokenizer.vocab_size
    blank, first_duration = vocab, vocab + 1  # outputs: the vocabulary, blank, then one logit per duration
    with torch.inference_mode():
        encoded, lengths = _encode(recognizer, audio)
        seconds = len(audio) / SAMPLE_RATE
        # A random predictor moves the joint's outputs after each token by as much as the audio does, so a rate
        # calibrated on one clip holds on no other (bursts, or silence). Its projection into the joint is zeroed:
        # the predictor still runs (the same compute), emission then depends on the audio alone.
        model.joint.pred.weight.zero_()
        model.joint.pred.bias.zero_()
        # A random joint's logits barely move from frame to frame, so any blank bias gives all tokens or none.
        # Spread the blank and duration logits first: scale their rows to a fixed spread over these frames.
        logits = _joint_logits_from_start(model, encoded)  # (frames, outputs)
        for row in [blank, *range(first_duration, first_duration + len(TDT_DURATIONS))]:
            scale = LOGIT_SPREAD / max(logits[:, row].std().item(), 1e-6)
            mean, bias = logits[:, row].mean().item(), output.bias[row].item()
            output.weight[row] *= scale
            output.bias[row] = mean - scale * (mean - bias)  # the row's mean over the frames stays where it was
        base = output.bias[blank].item()

        def bisect_blank() -> Emission:
            """The blank bias that gives ``tokens_per_s`` (more blank, fewer tokens: monotone)."""
            low, high = -20.0, 60.0
            for _ in range(22):
                middle = (low + high) / 2
                output.bias[blank] = base + middle
                if _decode_counts(model, encoded, lengths, seconds).tokens_per_s > tokens_per_s:
                    low = middle
                else:
                    high = middle
            output.bias[blank] = base + high
            return _decode_counts(model, encoded, lengths, seconds)

        for _ in range(rounds):
            reached = bisect_blank()
            # move each duration's logit toward its target share (proportional fitting on the log scale, damped:
            # a duration-0 token keeps the decoder on its frame, so the shares and the rate move together)
            for index, (target, seen) in enumerate(zip(durations, reached.durations)):
                output.bias[first_duration + index] += 0.5 * math.log(target / max(seen, 1e-2))
        return bisect_blank()
