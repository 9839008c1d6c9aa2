"""Parakeet-TDT loading and batched inference, called directly (never ``model.transcribe()``).

One ``ParakeetRecognizer`` owns one model. It configures decoding once at load, never changes the model afterwards,
and turns a list of float32 16 kHz waveforms into per-item token ids, pieces, start frames and durations: everything
the Aligner needs to place words in time without a model of its own.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .keyterms import Keyterms
from .parakeet_defaults import DEFAULT_MODEL, SAMPLE_RATE, is_local_model  # noqa: F401 (re-exported)
from .schemas import SegmentTokens

log = logging.getLogger(__name__)

# The encoder needs a few feature frames to produce one output frame; shorter inputs are padded with trailing
# silence (which shifts no timestamp).
MIN_MODEL_SAMPLES = SAMPLE_RATE // 10


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is one line a user can act on."""


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def load_nemo_model(source: str, device: str):
    """Load an ASR model from a local ``.nemo`` file or a Hugging Face id, or fail with one clear line."""
    import torch
    from nemo.collections.asr.models import ASRModel

    map_location = torch.device(device)
    is_path = is_local_model(source)
    try:
        if is_path:
            if not Path(source).expanduser().is_file():
                raise FileNotFoundError(f"no such file: {source}")
            return ASRModel.restore_from(str(Path(source).expanduser()), map_location=map_location)
        return ASRModel.from_pretrained(source, map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the same actionable line
        tried = f"local .nemo file {source!r}" if is_path else f"Hugging Face model {source!r} (cache, then hub)"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"Could not load the Parakeet model: tried {tried}: {type(exc).__name__}: {reason[:300]}. "
            "Download it where there is network (e.g. `huggingface-cli download nvidia/parakeet-tdt-0.6b-v2`) "
            "or set PARAKEET_MODEL=/path/to/parakeet-tdt-0.6b-v2.nemo"
        ) from None


class ParakeetRecognizer:
    """Batched greedy TDT inference over a loaded ``EncDecRNNTBPEModel``.

    Not thread-safe by design: the Transcriber runs every call on one worker thread, so model work is serialised
    and never touches the event loop.
    """

    def __init__(self, model, device: str, use_bf16: bool = True, local_attention_above_s: float = 600.0,
                 local_attention_context: tuple[int, int] = (128, 128), max_padding_ratio: float = 1.5,
                 max_batch_audio_s: float = 1200.0, confidence: bool = True, name: str = "model",
                 keyterm_trees: int = 256):
        import torch

        from .biasing import KeytermBiasing

        self.device = device
        self.model = model.to(device).eval()
        self.local_attention_above_s = local_attention_above_s
        self.local_attention_context = list(local_attention_context)
        self.max_padding_ratio = max_padding_ratio
        self.max_batch_samples = int(max_batch_audio_s * SAMPLE_RATE)
        self._local_encoder = None
        self._lock = threading.Lock()
        self.confidence = confidence
        self.dtype = torch.bfloat16 if (device.startswith("cuda") and use_bf16) else torch.float32
        # Mel features stay in float32 (log of small energies); the heavy networks run in bf16 on GPU.
        for module in (self.model.encoder, self.model.decoder, self.model.joint):
            module.to(self.dtype)
        self._configure_decoding()
        # per-item keyterms: a second decoding over the same networks, used only by batches that have keyterms
        self.keyterms = KeytermBiasing(self.model, name, keyterm_trees, use_triton=device.startswith("cuda"))
        cfg = self.model.cfg
        self.frame_s = float(cfg.preprocessor.window_stride) * int(self._subsampling_factor())

    @classmethod
    def load(cls, source: str, device: str = "auto", **options) -> "ParakeetRecognizer":
        device = resolve_device(device)
        return cls(load_nemo_model(source, device), device, **options)

    def _subsampling_factor(self) -> int:
        encoder_cfg = self.model.cfg.encoder
        return int(encoder_cfg.get("subsampling_factor", 8))

    def _configure_decoding(self) -> None:
        """Greedy batched TDT (label looping, CUDA graphs where available), per-token durations, no alignments.

        Done once, before any request: ``change_decoding_strategy`` replaces the decoding object.
        """
        from omegaconf import open_dict

        decoding_cfg = copy.deepcopy(self.model.cfg.decoding)
        with open_dict(decoding_cfg):
            decoding_cfg.strategy = "greedy_batch"
            decoding_cfg.preserve_alignments = False
            decoding_cfg.compute_timestamps = False
            decoding_cfg.tdt_include_token_duration = True
            decoding_cfg.greedy.loop_labels = True
            decoding_cfg.greedy.use_cuda_graph_decoder = self.device.startswith("cuda")
            # Each emitted token's confidence, computed by the decoder in the same pass from the joint's token
            # log-softmax: "max_prob" with alpha 1 is (p * v - 1) / (v - 1), p the greedy token's probability
            # (the largest) over the v = vocabulary + blank outputs, so ``_token_logprob`` recovers log p exactly.
            decoding_cfg.confidence_cfg = {"preserve_token_confidence": self.confidence, "exclude_blank": True,
                                           "method_cfg": {"name": "max_prob", "alpha": 1.0}}
        self.model.change_decoding_strategy(decoding_cfg, verbose=False)
        self._confidence_classes = int(self.model.decoding.decoding.num_tokens)

    def _encoder_for(self, longest_samples: int):
        """Full attention normally; a local-attention copy of the encoder for very long inputs (memory ~ T^2)."""
        if self.local_attention_above_s <= 0 or longest_samples <= self.local_attention_above_s * SAMPLE_RATE:
            return self.model.encoder
        with self._lock:
            if self._local_encoder is None:
                local = copy.deepcopy(self.model.encoder)
                local.change_attention_model("rel_pos_local_attn", self.local_attention_context)
                local.change_subsampling_conv_chunking_factor(1)
                # the conversion builds new attention layers on the CPU in float32
                self._local_encoder = local.to(device=self.device, dtype=self.dtype).eval()
        return self._local_encoder

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group item indices so no sub-batch pads more than ``max_padding_ratio`` x its real audio, nor holds
        more than ``max_batch_audio_s`` of padded audio (long files that arrive together run one after the other:
        the model's memory grows with the batch's total length).

        Items are sorted by length first, so a short segment never waits on (or pads up to) a 15-minute file.
        """
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups: list[list[int]] = []
        for index in order:
            if groups:
                group = groups[-1]
                longest = lengths[index]
                real = sum(lengths[i] for i in group) + lengths[index]
                padded = longest * (len(group) + 1)
                if padded <= self.max_padding_ratio * real and padded <= self.max_batch_samples:
                    group.append(index)
                    continue
            groups.append([index])
        return groups

    def padding_samples(self, lengths: Sequence[int], plan: list[list[int]] | None = None) -> int:
        """Zeros the model will run on for these items (each sub-batch of ``plan``, by default
        ``plan_batches(lengths)``, is padded to its longest item): the batch's padding waste."""
        return sum(max(lengths[i] for i in group) * len(group) - sum(lengths[i] for i in group)
                   for group in (plan if plan is not None else self.plan_batches(lengths)))

    def transcribe(self, waveforms: Sequence[np.ndarray], keyterms: Sequence[Keyterms | None] | None = None,
                   plan: list[list[int]] | None = None) -> list[SegmentTokens]:
        """Recognise each float32 16 kHz waveform (each with its own keyterms, or none), in the sub-batches of
        ``plan`` (by default ``plan_batches`` of their lengths: a caller that already planned passes its plan, so a
        model call is planned once); the result list is in input order."""
        keyterms = list(keyterms) if keyterms is not None else [None] * len(waveforms)
        results: list[SegmentTokens | None] = [None] * len(waveforms)
        for group in plan if plan is not None else self.plan_batches([len(w) for w in waveforms]):
            found = self._transcribe_group([waveforms[i] for i in group], [keyterms[i] for i in group])
            for index, tokens in zip(group, found):
                results[index] = tokens
        return results  # type: ignore[return-value]

    def _transcribe_group(self, waveforms: Sequence[np.ndarray], keyterms: Sequence[Keyterms | None]
                          ) -> list[SegmentTokens]:
        import torch

        biased_rows = [i for i, k in enumerate(keyterms) if k is not None]
        plain_rows = [i for i, k in enumerate(keyterms) if k is None]

        lengths = [max(len(w), MIN_MODEL_SAMPLES) for w in waveforms]
        batch = np.zeros((len(waveforms), max(lengths)), dtype=np.float32)
        for row, wave in enumerate(waveforms):
            batch[row, :len(wave)] = wave
        with torch.inference_mode():
            signal = torch.from_numpy(batch).to(self.device)
            signal_lengths = torch.tensor(lengths, dtype=torch.long, device=self.device)
            features, feature_lengths = self.model.preprocessor(input_signal=signal, length=signal_lengths)
            encoder = self._encoder_for(max(lengths))
            encoded, encoded_lengths = encoder(audio_signal=features.to(self.dtype), length=feature_lengths)
            hypotheses: list = [None] * len(waveforms)
            # One encoder pass for the group; the decoder runs once for the items without keyterms (the model's own
            # decoding: exactly today's output, whatever their batch-mates asked for) and once for those with
            # keyterms (each with its own tree).
            for rows, boosted in ((plain_rows, False), (biased_rows, True)):
                if not rows:
                    continue
                index = torch.tensor(rows, device=encoded.device) if len(rows) < len(waveforms) else None
                found = (self.keyterms.decoding if boosted else self.model.decoding).rnnt_decoder_predictions_tensor(
                    encoder_output=encoded if index is None else encoded.index_select(0, index),
                    encoded_lengths=encoded_lengths if index is None else encoded_lengths.index_select(0, index),
                    return_hypotheses=True,
                    partial_hypotheses=self.keyterms.start_hypotheses([keyterms[i] for i in rows]) if boosted
                    else None)
                for row, hypothesis in zip(rows, found):
                    hypotheses[row] = hypothesis
        return [self._to_tokens(hyp, int(n)) for hyp, n in zip(hypotheses, encoded_lengths.tolist())]

    def _to_tokens(self, hypothesis, encoded_frames: int) -> SegmentTokens:
        ids = _as_int_list(hypothesis.y_sequence)
        starts = _as_int_list(hypothesis.timestamp)[:len(ids)]
        durations = _as_int_list(getattr(hypothesis, "token_duration", None))[:len(ids)]
        if len(durations) < len(ids):  # a plain RNNT model: every token lasts one frame
            durations = durations + [1] * (len(ids) - len(durations))
        confidences = _as_float_list(getattr(hypothesis, "token_confidence", None))[:len(ids)]
        logprobs = [self._token_logprob(float(c)) for c in confidences] if len(confidences) == len(ids) else []
        pieces = self.model.tokenizer.ids_to_tokens(ids) if ids else []
        text = hypothesis.text if isinstance(hypothesis.text, str) else self.model.tokenizer.ids_to_text(ids)
        return SegmentTokens(text=text.strip(), token_ids=ids, pieces=list(pieces), start_frames=starts,
                             durations=durations, frame_s=self.frame_s, frames=encoded_frames, logprobs=logprobs)

    def _token_logprob(self, confidence: float) -> float:
        """NeMo's max_prob confidence back to the token's log-probability (<= 0)."""
        v = self._confidence_classes
        probability = (confidence * (v - 1) + 1) / v
        return min(0.0, math.log(max(probability, 1e-30)))


def _as_float_list(values) -> list[float]:
    if values is None:
        return []
    return [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _as_int_list(values) -> list[int]:
    if values is None:
        return []
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [int(v) for v in values]
