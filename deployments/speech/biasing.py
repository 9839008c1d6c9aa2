"""Keyterms in the model: NeMo's boosting trees, per item inside one batch (NeMo 3.0's per-stream biasing).

The label-looping TDT/RNNT decoder can hold many boosting trees at once (``GPUBiasingMultiModel``) and pick one per
batch item (``multi_biasing_ids``; -1: none). This module owns one model's trees: each term set's tree is built
once from the model's tokenizer and kept (least recently used dropped past ``trees_per_model``).

Items without keyterms never touch it: the recognizer decodes them with the model's ordinary decoding (apart from
their boosted batch-mates, after the shared encoder pass), so their output and speed are what they were. Items with
keyterms are decoded by a second decoding object over the same decoder and joint networks, with per-item biasing
on (a test holds that a batch-mate's text is identical with and without a boosted neighbour).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import logging
from typing import Sequence

from .errors import KeytermError
from .keyterms import Keyterms

log = logging.getLogger(__name__)


class KeytermBiasing:
    """One model's boosting trees. Not thread-safe: called on the Transcriber's one model thread, like the model."""

    def __init__(self, model, model_id: str, trees_per_model: int = 256, use_triton: bool = False):
        self.model = model
        self.model_id = model_id
        self.capacity = trees_per_model
        self.use_triton = use_triton  # CUDA only (NeMo's Triton kernel; needed for CUDA graphs with biasing)
        self._decoding = None
        self._unsupported: str | None = None
        self._ids: collections.OrderedDict[Keyterms, int] = collections.OrderedDict()
        self.trees_built = 0  # for tests and operators: a term set's tree is built once

    # ------------------------------------------------------------------------------------------ checks

    def spelled(self, keyterms: Keyterms) -> Keyterms:
        """``keyterms`` as this model can spell them: a term its tokenizer cannot write (a character outside its
        vocabulary) is tried in lower case (for uncased models), else it is a 400 naming it."""
        self._require_support()
        tokenizer = self.model.tokenizer
        unknown = getattr(tokenizer, "unk_id", None)
        terms, unspellable = [], []
        for term in keyterms.terms:
            for candidate in dict.fromkeys((term, term.lower())):
                ids = tokenizer.text_to_ids(candidate)
                if ids and (unknown is None or unknown not in ids):
                    terms.append(candidate)
                    break
            else:
                unspellable.append(term)
        if unspellable:
            shown = ", ".join(repr(t) for t in unspellable[:5]) + (" ..." if len(unspellable) > 5 else "")
            raise KeytermError(f"The model {self.model_id!r} cannot spell {len(unspellable)} keyterm(s): {shown} "
                               "(characters outside its vocabulary).")
        return Keyterms(tuple(dict.fromkeys(terms)), keyterms.boost)

    def _require_support(self) -> None:
        if self._decoding is None and self._unsupported is None:
            self._build_decoding()
        if self._unsupported is not None:
            raise KeytermError(f"The model {self.model_id!r} does not support keyterms: {self._unsupported}.")

    def _build_decoding(self) -> None:
        """The model's own decoding settings plus per-item biasing, over the same decoder and joint networks."""
        from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding
        from omegaconf import open_dict

        model = self.model
        try:
            config = copy.deepcopy(model.decoding.cfg)
            with open_dict(config):
                config.greedy.enable_per_stream_biasing = True
            decoding = RNNTBPEDecoding(decoding_cfg=config, decoder=model.decoder, joint=model.joint,
                                       tokenizer=model.tokenizer)
            computer = decoding.decoding.decoding_computer
            if computer is None or computer.biasing_multi_model is None:
                raise NotImplementedError("its decoder has no per-item biasing")
            # (no tree is in it yet: the same multi-model, with its CPU path's rows remembered)
            computer.biasing_multi_model = _remembering_multi_model_class()(
                vocab_size=computer.biasing_multi_model.vocab_size, use_triton=self.use_triton,
                reallocation_callback_fn=computer.reset_cuda_graphs_state)
            # (a model whose own decoding config adds fusion models, an n-gram LM or a fixed boosting tree, keeps
            # NeMo's advance over all of them)
            if not computer.fusion_models:
                computer.advance_fusion_models = functools.partial(_advance_trees_only, computer)
        except (AttributeError, NotImplementedError, ValueError) as exc:
            self._unsupported = str(exc) or "its decoder has no per-item biasing (NeMo's label-looping TDT/RNNT)"
            log.warning("Keyterms unavailable for %s: %s", self.model_id, self._unsupported)
            return
        self._decoding = decoding

    # ------------------------------------------------------------------------------------------ decoding

    @property
    def decoding(self):
        self._require_support()
        return self._decoding

    def prepare(self, keyterms: Keyterms) -> None:
        """Check ``keyterms`` against this model (a 400 naming what it cannot spell) and build their tree now."""
        self._tree_id(keyterms, {keyterms})

    def start_hypotheses(self, keyterms: Sequence[Keyterms | None]) -> list:
        """The partial hypotheses that carry each item's tree (``None`` for items without keyterms)."""
        from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig

        in_use = {k for k in keyterms if k is not None}
        return [None if k is None else
                _biased_start_class()(y_sequence=[], score=0.0,
                                      biasing_cfg=BiasingRequestItemConfig(multi_model_id=self._tree_id(k, in_use),
                                                                           auto_manage_multi_model=False))
                for k in keyterms]

    def _tree_id(self, keyterms: Keyterms, in_use: set[Keyterms]) -> int:
        found = self._ids.get(keyterms)
        if found is not None:
            self._ids.move_to_end(keyterms)
            return found
        from nemo.collections.asr.parts.context_biasing import BoostingTreeModelConfig, GPUBoostingTreeModel

        multi = self.decoding.decoding.decoding_computer.biasing_multi_model
        while len(self._ids) >= self.capacity:  # the least recently used set not in this batch
            victim = next((k for k in self._ids if k not in in_use), None)
            if victim is None:
                break
            multi.remove_model(self._ids.pop(victim))
        spelled = self.spelled(keyterms)
        tree = GPUBoostingTreeModel.from_config(
            BoostingTreeModelConfig(key_phrases_list=list(spelled.terms), use_triton=self.use_triton),
            tokenizer=self.model.tokenizer)
        tree_id = multi.add_model(tree, alpha=keyterms.boost)
        self._ids[keyterms] = tree_id
        self.trees_built += 1
        return tree_id


def _advance_trees_only(computer, fusion_states_list: list, multi_biasing_ids, float_dtype) -> tuple[list, list]:
    """NeMo's ``advance_fusion_models`` for a decoding whose only fusion model is the per-item trees: the same call
    and the same result, without the list of parameter records NeMo builds for its fusion models at every decoding
    step (with the rows' copies below, ~2.4 ms of a 10 s segment's ~50 ms decoding on a CPU: in-process, measured)."""
    scores, next_states = computer.biasing_multi_model.advance(states=fusion_states_list[0],
                                                               model_ids=multi_biasing_ids)
    return [scores.to(dtype=float_dtype)], [next_states]


ROW_MEMORY_BYTES = 64 << 20  # the remembered rows of one model's trees (~5,000 states of a 1,024-token vocabulary)


@functools.cache
def _remembering_multi_model_class():
    """NeMo's ``GPUBiasingMultiModel``, remembering what its PyTorch path computes (built at first use).

    Each decoding step asks the trees for every item's next scores and states over the whole vocabulary. On CUDA
    that is NeMo's Triton kernel; elsewhere NeMo walks each state's back-off chain with a loop of small tensor
    operations (a dozen per chain link), which on a CPU cost ~0.7 ms a step for a 100-term tree, about as much as
    the rest of the decoding. A state's row depends only on its tree and the state, so each (tree, state) row is
    computed once by NeMo's own code, scaled by its tree's weight as NeMo's ``advance`` scales it, and then gathered:
    the same numbers, without the loop or the per-step scaling. Rows are forgotten when their tree is added or
    removed (NeMo reuses tree ids), and all at once past ``ROW_MEMORY_BYTES``; a tree small enough has all its rows
    computed when it is added."""
    import torch
    from nemo.collections.asr.parts.context_biasing.biasing_multi_model import GPUBiasingMultiModel

    class RememberingBiasingMultiModel(GPUBiasingMultiModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
            self.most_rows = max(1024, ROW_MEMORY_BYTES // (12 * max(1, self.vocab_size)))

        def advance(self, states: torch.Tensor, model_ids: torch.Tensor, eos_id: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
            if states.device.type != "cpu" or states.requires_grad or eos_id is not None:
                return super().advance(states, model_ids, eos_id)
            if len(states) == 1 and (row := self.rows.get((model_ids.item(), states.item()))) is not None:
                # A call of one segment (most calls on a busy CPU) gets views of its row: NeMo's loop only reads
                # what advance returns (adds the scores to its logits, gathers the next states), so a stack's copy
                # buys nothing there. A test holds the rows unchanged by decoding.
                return row[0][None], row[1][None]
            keys = list(zip(model_ids.tolist(), states.tolist()))
            missing = [key for key in dict.fromkeys(keys) if key not in self.rows]
            if missing and len(self.rows) + len(missing) > self.most_rows:
                self.rows.clear()
                missing = list(dict.fromkeys(keys))
            if missing:
                self._compute(missing)
            # (a batch's rows stacked, weighted as NeMo's advance weights them)
            return (torch.stack([self.rows[key][0] for key in keys]),
                    torch.stack([self.rows[key][1] for key in keys]))

        def add_model(self, model, alpha: float = 1.0) -> int:
            model_id = super().add_model(model, alpha=alpha)
            self._forget(model_id)
            self._remember_all(model_id)
            return model_id

        def _remember_all(self, model_id: int) -> None:
            """Every row of a new tree at once (one call of NeMo's loop over all its states), when they fit in a
            quarter of the memory: a decoding meets a large tree's states a few at a time, so left to the steps, a
            1,000-term tree's rows would come one small loop at a time over thousands of steps."""
            count = int(self.model2num_states[model_id])
            if self.all_arcs_weights.device.type != "cpu" or count * 4 > self.most_rows:
                return
            if len(self.rows) + count > self.most_rows:
                self.rows.clear()
            self._compute([(model_id, state) for state in range(count)])

        def _compute(self, keys: list[tuple[int, int]]) -> None:
            """The rows of these (tree, state) keys, by one call of NeMo's own loop, weighted as its ``advance``
            weights them."""
            model_ids = torch.tensor([model for model, _ in keys])
            scores, next_states = self._advance_pytorch(torch.tensor([state for _, state in keys]), model_ids)
            scores *= self.model2alpha[model_ids][:, None]
            self.rows.update(zip(keys, zip(scores, next_states)))

        def remove_model(self, model_id: int):
            super().remove_model(model_id)
            self._forget(model_id)

        def _forget(self, model_id: int) -> None:
            for key in [key for key in self.rows if key[0] == model_id]:
                del self.rows[key]

    return RememberingBiasingMultiModel


@functools.cache
def _biased_start_class():
    """(Built at first use: the Ray-free core imports this module without NeMo.)"""
    from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

    class BiasedStart(Hypothesis):
        """An empty hypothesis that only carries its item's tree into the decoder. NeMo merges the decoded
        continuation into it, but its merge drops per-token durations; an empty start simply becomes the
        continuation (keeping the tree it carried)."""

        def merge_(self, other):
            carried = self.biasing_cfg
            for field in dataclasses.fields(other):
                setattr(self, field.name, getattr(other, field.name))
            self.biasing_cfg = carried
            return self

    return BiasedStart
