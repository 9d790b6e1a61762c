"""Perplexity of a transformers causal LM: one next-token NLL over windows, and the windowings the benches use."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def perplexity(model: nn.Module, windows: Iterable[torch.Tensor]) -> float:
    """exp(mean next-token NLL) over token windows [batch, length], each scored on its own (no cache)."""
    nll, count = 0.0, 0
    for w in windows:
        logits = model(input_ids=w, use_cache=False).logits[:, :-1].float()
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum").item()
        count += w[:, 1:].numel()
    if not count:
        raise ValueError("perplexity needs at least one window of two tokens")
    return math.exp(nll / count)


def chained_windows(ids: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """Windows [1, seq_len + 1] of a token row, each starting where the last one's targets ended (every token
    after the first is predicted exactly once)."""
    ids = ids.reshape(-1)
    return [ids[i : i + seq_len + 1][None] for i in range(0, ids.numel() - 1, seq_len) if ids.numel() - i >= 2]


def text_perplexity(model: nn.Module, tokenizer, text: str, seq_len: int = 512, max_tokens: int = 8192) -> float:
    """Perplexity on the first ``max_tokens`` tokens of ``text`` in chained windows of ``seq_len`` targets."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0][:max_tokens]
    return perplexity(model, chained_windows(ids, seq_len))
