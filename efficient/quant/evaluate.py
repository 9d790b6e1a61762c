"""Quality and speed probes used by the benchmark and the docs: perplexity and decode tokens/s."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from .._hf import cache_kwargs, output_cache


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer, text: str, seq_len: int = 512, max_tokens: int = 8192) -> float:
    """Perplexity over non-overlapping windows of ``seq_len`` tokens (first ``max_tokens`` tokens)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0][:max_tokens]
    nll, count = 0.0, 0
    for i in range(0, ids.numel() - 1, seq_len):
        chunk = ids[i : i + seq_len + 1]
        if chunk.numel() < 2:
            break
        logits = model(input_ids=chunk[:-1].unsqueeze(0)).logits[0].float()
        nll += torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum").item()
        count += chunk.numel() - 1
    return math.exp(nll / count)


@torch.no_grad()
def decode_tokens_per_s(model: nn.Module, prompt_len: int = 16, new_tokens: int = 32, vocab: int | None = None,
                        repeats: int = 3) -> float:
    """Greedy batch-1 decode speed with the KV cache (median of ``repeats`` runs; prefill excluded)."""
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
    return sorted(rates)[len(rates) // 2]
