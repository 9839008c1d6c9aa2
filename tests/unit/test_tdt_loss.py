"""The maker's vectorised TDT loss equals the sum over every alignment, enumerated by brute force."""

import math

import pytest
import torch

from tests.fixtures.maker.tdt_loss import MASKED_ARC, tdt_loss

DURATIONS = [0, 1, 2]


def brute_force_log_likelihood(token_lp, duration_lp, labels, frames, blank, allowed=None):
    """Enumerate every path (sequence of (symbol, duration) arcs) from (0, 0) that ends with blank at t = frames."""
    total = []
    n_labels = len(labels)

    def walk(t, u, score):
        if t == frames:
            return
        for n, d in enumerate(DURATIONS):
            # blank
            if d > 0 and t + d <= frames:
                s = score + token_lp[t, u, blank] + duration_lp[t, u, n]
                if t + d == frames and u == n_labels:
                    total.append(s)
                else:
                    walk(t + d, u, s)
            # label
            if u < n_labels and t + d < frames:
                penalty = 0.0 if allowed is None or allowed[t][u][n] else MASKED_ARC
                walk(t + d, u + 1, score + token_lp[t, u, labels[u]] + duration_lp[t, u, n] + penalty)

    walk(0, 0, 0.0)
    return math.log(sum(math.exp(s) for s in total))


@pytest.mark.parametrize("frames,labels", [(3, [1]), (4, [1, 2]), (5, [2, 0, 1]), (2, []), (4, [1, 1, 1, 1])])
def test_matches_brute_force(frames, labels):
    torch.manual_seed(frames * 10 + len(labels))
    vocab, blank = 3, 3
    logits = torch.randn(1, frames, len(labels) + 1, vocab + 1 + len(DURATIONS), dtype=torch.float64)
    token_lp = torch.log_softmax(logits[..., :-len(DURATIONS)], -1)[0]
    duration_lp = torch.log_softmax(logits[..., -len(DURATIONS):], -1)[0]
    expected = brute_force_log_likelihood(token_lp.numpy(), duration_lp.numpy(), labels, frames, blank)
    label_tensor = torch.tensor([labels or [0]], dtype=torch.long)
    loss = tdt_loss(logits, label_tensor, torch.tensor([frames]), torch.tensor([len(labels)]), blank, DURATIONS)
    assert loss.item() == pytest.approx(-expected, rel=1e-5)


def test_batched_with_padding_equals_each_alone():
    torch.manual_seed(0)
    vocab, blank = 4, 4
    logits = torch.randn(2, 6, 4, vocab + 1 + len(DURATIONS), requires_grad=True)
    labels = torch.tensor([[1, 2, 3], [0, 2, 0]])
    frames, lengths = torch.tensor([6, 4]), torch.tensor([3, 2])
    batched = tdt_loss(logits, labels, frames, lengths, blank, DURATIONS)
    alone = tdt_loss(logits[1:, :4, :3], labels[1:, :2], frames[1:], lengths[1:], blank, DURATIONS)
    assert batched[1].item() == pytest.approx(alone[0].item(), rel=1e-5)
    batched.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_label_arc_mask_restricts_alignments():
    torch.manual_seed(3)
    frames, labels, vocab, blank = 5, [2, 0], 3, 3
    logits = torch.randn(1, frames, 3, vocab + 1 + len(DURATIONS), dtype=torch.float64)
    token_lp = torch.log_softmax(logits[..., :-len(DURATIONS)], -1)[0].numpy()
    duration_lp = torch.log_softmax(logits[..., -len(DURATIONS):], -1)[0].numpy()
    mask = torch.zeros(1, frames, 2, len(DURATIONS), dtype=torch.bool)
    mask[0, 1:3, 0] = True  # label 0 only at frames 1-2
    mask[0, 2:4, 1, 1:] = True  # label 1 only at frames 2-3 with duration >= 1
    expected = brute_force_log_likelihood(token_lp, duration_lp, labels, frames, blank, mask[0].tolist())
    loss = tdt_loss(logits, torch.tensor([labels]), torch.tensor([frames]), torch.tensor([2]), blank, DURATIONS,
                    label_arc_mask=mask)
    assert loss.item() == pytest.approx(-expected, rel=1e-5)
    unconstrained = tdt_loss(logits, torch.tensor([labels]), torch.tensor([frames]), torch.tensor([2]), blank,
                             DURATIONS)
    assert loss.item() > unconstrained.item() + 1.0
