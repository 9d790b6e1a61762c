"""Validation of code tensors [n_q, frames] against a tokenizer's codebooks (shared by batch and streaming)."""

from __future__ import annotations

import torch

from tokenizer.config import TokenizerConfig


def check_codes(codes: torch.Tensor, cfg: TokenizerConfig) -> torch.Tensor:
    """Validate codes [n_q, T]: integer, 1 <= n_q <= num_quantizers, each row inside its codebook."""
    if not isinstance(codes, torch.Tensor):
        codes = torch.as_tensor(codes)
    if codes.dim() != 2:
        raise ValueError(f"codes must be a 2-D tensor [n_q, frames], got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    n_q = codes.shape[0]
    if not 1 <= n_q <= cfg.num_quantizers:
        raise ValueError(f"codes have {n_q} codebooks; this tokenizer has 1..{cfg.num_quantizers}")
    codes = codes.long()
    if codes.numel():
        for i in range(n_q):
            lo, hi = int(codes[i].min()), int(codes[i].max())
            if lo < 0 or hi >= cfg.codebook_size[i]:
                raise ValueError(f"codebook {i} holds ids in [{lo}, {hi}] but its size is {cfg.codebook_size[i]}")
    return codes
