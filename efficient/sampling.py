"""The one logits filter of every decoding path: temperature, then top-k, then top-p.

Used by ``efficient.spec`` (the speculative target and its drafts) and by ``mimo_audio.sampling`` (the speech
LM's samplers), so a sampler means the same distribution on either path. "Off" is ``None`` for each knob
(``top_k=0`` and ``top_p>=1`` are read as off too).

Tie rules are the official ``MiMoSampler``'s: top-k keeps every logit >= the k-th largest; top-p sorts
ascending and drops tokens whose cumulative probability is <= 1 - p (the most likely token always survives).
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, temperature: float | None = None, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """``logits [..., V]`` -> float32 scores, divided by ``temperature``, filtered tokens at -inf."""
    scores = logits.float()
    if temperature is not None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 to filter, got {temperature}")
        scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores
