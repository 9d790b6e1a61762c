"""Wall-clock medians: the one timing rule of the bench scripts (optional warm-up, then the median)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from efficient._hf import cache_kwargs, output_cache


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls of ``fn`` (after ``warmup`` untimed calls) and its last result."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 0) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    return timed(fn, repeats, warmup)[0]


@torch.no_grad()
def decode_tokens_per_s(model: nn.Module, prompt_len: int = 16, new_tokens: int = 32, vocab: int | None = None,
                        repeats: int = 3) -> float:
    """Greedy batch-1 decode speed of a transformers LM with its KV cache (median of ``repeats`` runs; prefill
    excluded)."""
    vocab = vocab or model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, prompt_len), generator=g)
    rates = []
    for _ in range(repeats):
        out = model(input_ids=ids, use_cache=True)
        past, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, use_cache=True, **cache_kwargs(model, past))
            past, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
        rates.append(new_tokens / (time.perf_counter() - t0))
    return statistics.median(rates)
