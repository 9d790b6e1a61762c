"""Batched on-policy sampling with the KV cache, for any transformers causal LM (converted or not).

Rows share one length (the backend's sparse caches take no padding), so prompts are cut to a common
length. One prefill, then one forward per new token with the cache the model returned.
"""

from __future__ import annotations

import torch
from torch import nn

from .._hf import cache_kwargs, output_cache


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest prefix reaching top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    prompts: torch.Tensor,
    new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``prompts [B, P]`` -> ``[B, P + new_tokens]``: the model's own continuations (greedy if temperature 0).

    ``generator`` makes sampling reproducible (it lives on the CPU; draws are moved to the model's device).
    """
    if prompts.dim() != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must be [batch, length >= 1], got {tuple(prompts.shape)}")
    if new_tokens < 1:
        return prompts
    device = next(model.parameters()).device
    ids = prompts.to(device)
    out = model(input_ids=ids, use_cache=True)
    cache = output_cache(out)
    tokens = [ids]
    logits = out.logits[:, -1]
    for i in range(new_tokens):
        nxt = _pick(logits.cpu() if generator is not None else logits, temperature, top_p, generator).to(device)
        tokens.append(nxt[:, None])
        if i + 1 == new_tokens:
            break
        out = model(input_ids=nxt[:, None], use_cache=True, **cache_kwargs(model, cache))
        cache = output_cache(out)
        logits = out.logits[:, -1]
    return torch.cat(tokens, dim=1)
