"""Lossless acceptance rules for speculative decoding.

Greedy: accept draft i while it equals the target's argmax; at the first mismatch emit the argmax; if
all drafts pass, emit the bonus argmax. Identical to plain greedy decoding by construction.

Sampling (Leviathan et al. 2023; Chen et al. 2023): accept draft x ~ q with probability
min(1, p(x)/q(x)); on rejection sample from normalise(max(0, p - q)); if all pass, sample the bonus from
p. The committed tokens are distributed exactly as the target's p. Temperature / top-k / top-p are
applied to p (and q) before the test. A greedy drafter has a one-hot q: accept with probability p(x),
resample from p with x removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from efficient.sampling import filter_logits


@dataclass(frozen=True)
class SamplingParams:
    """Temperature (0: greedy), top-k and top-p of :func:`efficient.sampling.filter_logits` (None: off)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if (self.temperature < 0 or (self.top_p is not None and not 0 < self.top_p <= 1)
                or (self.top_k is not None and self.top_k < 0)):
            raise ValueError(f"bad sampling parameters {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Target (or draft) distribution after temperature, top-k and top-p, float32, last dim = vocab."""
    return torch.softmax(filter_logits(logits, params.temperature, params.top_k, params.top_p), dim=-1)


def sample(p: torch.Tensor, generator: torch.Generator | None = None) -> int:
    return int(torch.multinomial(p, 1, generator=generator))


def verify_greedy(target_logits: torch.Tensor, drafts: list[int]) -> tuple[int, int]:
    """(number of accepted drafts, next token). target_logits: [k+1, V]."""
    top = target_logits.argmax(-1).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == top[n]:
        n += 1
    return n, top[n]


def verify_sampling(
    target_probs: torch.Tensor,
    drafts: list[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """(number of accepted drafts, next token) by rejection sampling.

    target_probs [k+1, V]; draft_probs [k, V] (None: the drafts were argmax picks, q is one-hot).
    """
    for i, x in enumerate(drafts):
        p = target_probs[i]
        qx = 1.0 if draft_probs is None else float(draft_probs[i, x])
        px = float(p[x])
        u = float(torch.rand((), generator=generator))
        if qx > 0 and u * qx < px:  # u < p/q without dividing by a tiny q
            continue
        if draft_probs is None:
            residual = p.clone()
            residual[x] = 0.0
        else:
            residual = (p - draft_probs[i]).clamp_min(0.0)
        total = float(residual.sum())
        if total <= 0:  # p == q exactly: any sample from p is right
            residual, total = p, float(p.sum())
        return i, sample(residual / total, generator)
    return len(drafts), sample(target_probs[len(drafts)], generator)
