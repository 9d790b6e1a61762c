"""Pre-LN transformer layer shared by the encoder, decoder and vocoder, with windowed attention.

Attention follows flash-attn's ``window_size=(left, right)`` semantics: query at position i sees keys at
positions j with ``i - left <= j <= i + right`` (-1 = unbounded); ``causal`` forces ``right = 0``.
The layer is split into ``qkv`` and ``post_attention`` so streaming code can keep its own key/value state
and run exactly the same arithmetic as the offline path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN_BLOCK = 256  # query block size for windowed attention: memory O(block * (block + window))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def make_norm(ln_type: str, dim: int) -> nn.Module:
    return nn.LayerNorm(dim) if ln_type == "LayerNorm" else RMSNorm(dim)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [T, head_dim] (rotate-half layout), computed in fp32 then cast to ``dtype``."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, Dh]; cos/sin [T, Dh]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Boolean [Tq, Tk] mask, True where the key is visible."""
    rel = k_pos[None, :] - q_pos[:, None]
    mask = torch.ones_like(rel, dtype=torch.bool)
    if left >= 0:
        mask &= rel >= -left
    if right >= 0:
        mask &= rel <= right
    return mask


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    left: int,
    right: int,
    q_start: int = 0,
    k_start: int = 0,
) -> torch.Tensor:
    """SDPA over [H, T, Dh] tensors with a (left, right) window.

    ``q_start`` / ``k_start`` are the absolute positions of the first query / key, so a chunk of queries
    can attend to a cache of keys. Bounded windows are computed block by block, never as a T x T matrix.
    """
    tq, tk = q.shape[1], k.shape[1]
    if left < 0 and right < 0:
        return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
    if left < 0 and right == 0 and q_start == k_start and tq == tk:
        return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
    out = []
    for s in range(0, tq, ATTN_BLOCK):
        e = min(tq, s + ATTN_BLOCK)
        lo = 0 if left < 0 else max(0, q_start + s - left - k_start)
        hi = tk if right < 0 else min(tk, q_start + e - 1 + right - k_start + 1)
        q_pos = torch.arange(q_start + s, q_start + e, device=q.device)
        k_pos = torch.arange(k_start + lo, k_start + hi, device=q.device)
        mask = window_mask(q_pos, k_pos, left, right)
        if bool(mask.all()):
            o = F.scaled_dot_product_attention(q[None, :, s:e], k[None, :, lo:hi], v[None, :, lo:hi])
        else:
            o = F.scaled_dot_product_attention(
                q[None, :, s:e], k[None, :, lo:hi], v[None, :, lo:hi], attn_mask=mask[None, None]
            )
        out.append(o[0])
    return torch.cat(out, dim=1) if len(out) > 1 else out[0]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)


class TransformerLayer(nn.Module):
    """x + out_proj(Attn(LN(x))); x + fc2(GELU(fc1(LN(x)))) on packed rows [T, D]."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, ln_type: str = "LayerNorm") -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.self_attn_layer_norm = make_norm(ln_type, dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = make_norm(ln_type, dim)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rows [T, D] -> q, k, v [H, T, Dh] with RoPE applied to q and k."""
        a = self.self_attn
        h = self.self_attn_layer_norm(x)
        t = x.shape[0]
        q = apply_rope(a.q_proj(h).view(t, a.num_heads, a.head_dim), cos, sin)
        k = apply_rope(a.k_proj(h).view(t, a.num_heads, a.head_dim), cos, sin)
        v = a.v_proj(h).view(t, a.num_heads, a.head_dim)
        return q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)

    def post_attention(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual + output projection of ``attn`` [H, T, Dh], then the FFN block."""
        t = x.shape[0]
        x = x + self.self_attn.out_proj(attn.transpose(0, 1).reshape(t, -1))
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        if x.dtype in (torch.float16, torch.bfloat16):
            # Same effect as the official inf/nan guard (clamp to finfo.max - 1000), without a sync.
            big = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-big, big)
        return x

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bounds: list[tuple[int, int]],
        left: int,
        right: int,
    ) -> torch.Tensor:
        """Packed rows of several independent sequences; ``bounds`` = [(start, end)] of each."""
        q, k, v = self.qkv(x, cos, sin)
        if len(bounds) == 1:
            attn = local_attention(q, k, v, left, right)
        else:
            attn = torch.cat([local_attention(q[:, s:e], k[:, s:e], v[:, s:e], left, right) for s, e in bounds], 1)
        return self.post_attention(x, attn)


def effective_window(window: list[int], causal: bool) -> tuple[int, int]:
    left, right = int(window[0]), int(window[1])
    return left, (0 if causal else right)
