"""Linear-chain CRF computations on the parameters of a ``torchcrf.CRF`` (pytorch-crf), batched.

pytorch-crf walks the sequence in a Python loop: about 60 small kernels per word for a training
step, which on a GPU costs far more than the encoder itself. Here the partition function is a
tree reduction of per-position transition matrices in the log semiring (log2(T) levels of one
broadcast add and one logsumexp), and the gold path score is a handful of gathers, so a training
step launches a few hundred kernels fewer. ``tests/test_model.py`` checks values and gradients
against pytorch-crf. Decoding keeps a loop (it runs once per evaluation batch).

Shapes: ``emissions`` (B, T, L) float, ``tags`` (B, T) int64, ``mask`` (B, T) bool with the first
position on and the on-positions a prefix; ``start``/``end`` (L,), ``trans`` (L, L) (previous x
next).
"""
from __future__ import annotations

import torch

NEG = -1e4  # "impossible" in log space; finite, so that gradients stay finite (no inf - inf)


def gold_score(emissions, tags, mask, start, trans, end) -> torch.Tensor:
    """Score of the given tag paths: (B,)."""
    weights = mask.to(emissions.dtype)
    score = start[tags[:, 0]] + (emissions.gather(2, tags.unsqueeze(2)).squeeze(2) * weights).sum(1)
    score = score + (trans[tags[:, :-1], tags[:, 1:]] * weights[:, 1:]).sum(1)
    last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)
    return score + end[last]


def log_partition(emissions, mask, start, trans, end) -> torch.Tensor:
    """log Z, the log-sum-exp of the scores of all paths of each sequence: (B,)."""
    batch, length, tags = emissions.shape
    alpha = start + emissions[:, 0]                                   # (B, L)
    if length > 1:
        identity = torch.full((tags, tags), NEG, dtype=emissions.dtype, device=emissions.device)
        identity.fill_diagonal_(0.0)
        steps = trans + emissions[:, 1:].unsqueeze(2)                 # (B, T-1, L, L)
        steps = torch.where(mask[:, 1:, None, None], steps, identity)
        padded = 1 << (length - 2).bit_length()                       # next power of two
        if padded > length - 1:
            steps = torch.cat([steps, identity.expand(batch, padded - length + 1, tags, tags)], 1)
        while steps.shape[1] > 1:   # pairs of matrices: (X ⊗ Y)[i,k] = lse_j X[i,j] + Y[j,k]
            steps = torch.logsumexp(steps[:, 0::2].unsqueeze(-1) + steps[:, 1::2].unsqueeze(-3),
                                    dim=-2)
        alpha = torch.logsumexp(alpha.unsqueeze(2) + steps[:, 0], dim=1)
    return torch.logsumexp(alpha + end, dim=1)


def log_likelihood(emissions, tags, mask, start, trans, end) -> torch.Tensor:
    """log p(tags | emissions) per sequence: (B,). Equals ``torchcrf.CRF(...)(..., "none")``."""
    return (gold_score(emissions, tags, mask, start, trans, end)
            - log_partition(emissions, mask, start, trans, end))


def allowed_transitions(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BIO constraints: ``start`` (L,) and ``trans`` (L, L) bool; ``I-X`` only after ``B-X`` or
    ``I-X``."""
    def ok(prev: str | None, tag: str) -> bool:
        return not tag.startswith("I-") or (
            prev is not None and prev != "O" and prev[2:] == tag[2:])
    start = torch.tensor([ok(None, t) for t in labels])
    trans = torch.tensor([[ok(p, t) for t in labels] for p in labels])
    return start, trans


def viterbi(emissions, mask, start, trans, end) -> torch.Tensor:
    """Best tag path per sequence, batched on the device: (B, T) int64; positions past each
    sequence's length are undefined."""
    batch, length, _ = emissions.shape
    score = start + emissions[:, 0]
    history = []
    for t in range(1, length):
        best, index = (score.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1)).max(dim=1)
        score = torch.where(mask[:, t].unsqueeze(1), best, score)
        history.append(index)
    last = (score + end).argmax(dim=1)
    ends = mask.sum(dim=1) - 1
    out = torch.zeros(batch, length, dtype=torch.long, device=emissions.device)
    current = last
    for t in range(length - 1, -1, -1):
        current = torch.where(ends == t, last, current)
        out[:, t] = current
        if t > 0:
            previous = history[t - 1].gather(1, current.unsqueeze(1)).squeeze(1)
            current = torch.where(ends >= t, previous, current)
    return out
