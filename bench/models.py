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
        "sample_rate": 16000,
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
            "sample_rate": 16000,
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
        "validation_ds": {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 1, "defer_setup": True},
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


def build_random_nemo(name: str, out_path: Path, seed: int = 0) -> Path:
    """Build a random-weight model of architecture ``name`` and save it as a ``.nemo`` file at ``out_path``."""
    spec = ArchitectureSpec.named(name)
    out_path = Path(out_path)
    tokenizer_dir = train_tokenizer(out_path.parent / f"{out_path.stem}_tokenizer", spec.vocab_size,
                                    default_tokenizer_text(spec.vocab_size))
    model = build_model(spec, tokenizer_dir, seed=seed)
    model.save_to(str(out_path))
    return out_path
