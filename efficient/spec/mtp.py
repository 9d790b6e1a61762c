"""Multi-token-prediction (MTP) heads, DeepSeek-V3 / MiMo style, used as a speculative draft model.

One head::

    h' = eh_proj([enorm(emb(token_{t+k})); hnorm(h_t)])   # 2d -> d
    h' = decoder block (sliding-window attention + dense SwiGLU FFN)
    logits = lm_head(final_norm(h'))                       # shared with the target model

Head k consumes head k-1's output hidden state (head 1 consumes the target's last hidden state, taken
before the target's final norm) and the embedding of the token one step further ahead. K heads are
chained; when more draft steps than heads are asked for, the last head is reused (the fallback vLLM used
for all steps, which we keep only as a fallback).

Each draft depth owns a :class:`HeadKVCache`, a sliding-window KV store with draft slack that supports
``crop(max_length)`` like every other cache in the backend, so rollback is uniform.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MTP_FILENAME = "mtp.safetensors"


@dataclass
class MTPConfig:
    """Shape of the MTP heads. ``from_target`` copies the widths of a transformers causal LM config."""

    hidden_size: int = 576
    intermediate_size: int = 1536
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int = 64
    num_heads: int = 3  # K distinct MTP heads
    sliding_window: int = 128
    draft_slack: int = 64  # extra positions kept beyond the window so rollback never loses state
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    attention_bias: bool = False
    concat_order: str = "emb_first"  # DeepSeek-V3 / MiMo-V2: [emb; hidden]; MiMo-7B: "hidden_first"
    own_final_norm: bool = False  # False: the target's final norm is shared
    vocab_size: int = 49152

    def __post_init__(self) -> None:
        if self.num_heads < 1:
            raise ValueError(f"MTPConfig.num_heads must be >= 1, got {self.num_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.sliding_window < 1 or self.draft_slack < 0:
            raise ValueError("sliding_window must be >= 1 and draft_slack >= 0")
        if self.concat_order not in ("emb_first", "hidden_first"):
            raise ValueError(f"concat_order must be 'emb_first' or 'hidden_first', got {self.concat_order!r}")

    @classmethod
    def from_target(cls, target_config: Any, num_heads: int = 3, **overrides: Any) -> MTPConfig:
        c = target_config
        heads = c.num_attention_heads
        kw = dict(
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            num_heads=num_heads,
            rms_norm_eps=getattr(c, "rms_norm_eps", 1e-6),
            rope_theta=float(getattr(c, "rope_theta", 10000.0)),
            attention_bias=bool(getattr(c, "attention_bias", False)),
            vocab_size=c.vocab_size,
        )
        kw.update(overrides)
        return cls(**kw)


# Named presets (the target's widths; the number of heads is the user's choice).
PRESETS: dict[str, MTPConfig] = {
    "smollm2-135m": MTPConfig(),
    "tiny": MTPConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, num_heads=2, sliding_window=16, draft_slack=8, vocab_size=128),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half layout, as transformers' Llama/Qwen2) on [b, h, n, d]."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    ang = positions.to(torch.float32)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@dataclass
class HeadKVCache:
    """KV (and output hidden) store of one draft depth: a sliding window plus draft slack.

    Positions are absolute. ``offset`` positions have been dropped from the front; ``crop`` may roll
    back to any length >= ``offset`` (guaranteed for the last ``draft_slack`` positions).
    """

    window: int
    slack: int
    offset: int = 0
    keys: torch.Tensor | None = None  # [1, kv_heads, n, head_dim]
    values: torch.Tensor | None = None
    outputs: torch.Tensor | None = None  # [1, n, hidden]: the head's output hidden state per position
    _len: int = field(default=0, repr=False)

    def get_seq_length(self) -> int:
        return self._len

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self._len + max_length
        if max_length >= self._len:
            return
        if max_length < self.offset:
            raise ValueError(
                f"cannot roll an MTP head cache back to {max_length}: positions before {self.offset} were "
                f"dropped (window {self.window} + slack {self.slack})"
            )
        keep = max_length - self.offset
        self.keys, self.values = self.keys[:, :, :keep], self.values[:, :, :keep]
        self.outputs = self.outputs[:, :keep]
        self._len = max_length

    def reset(self, start: int = 0) -> None:
        self.keys = self.values = self.outputs = None
        self.offset = self._len = start

    def append(self, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
        if self.keys is None:
            self.keys, self.values, self.outputs = k, v, out
        else:
            self.keys = torch.cat([self.keys, k], dim=2)
            self.values = torch.cat([self.values, v], dim=2)
            self.outputs = torch.cat([self.outputs, out], dim=1)
        self._len += k.shape[2]
        excess = self.keys.shape[2] - (self.window + self.slack)
        if excess > 0:  # keep a bounded ring of window + slack positions
            self.keys, self.values = self.keys[:, :, excess:], self.values[:, :, excess:]
            self.outputs = self.outputs[:, excess:]
            self.offset += excess

    def output_at(self, start: int, end: int) -> torch.Tensor:
        if start < self.offset or end > self._len:
            raise IndexError(f"positions [{start}, {end}) not held (have [{self.offset}, {self._len}))")
        return self.outputs[:, start - self.offset : end - self.offset]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.outputs) if t is not None)


class MTPHead(nn.Module):
    """One MTP block: fusion projection, one sliding-window decoder block, optional own final norm."""

    def __init__(self, cfg: MTPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.hidden_size, cfg.head_dim
        self.enorm = RMSNorm(d, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.input_layernorm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.num_attention_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, cfg.num_key_value_heads * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, cfg.num_key_value_heads * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, cfg.rms_norm_eps)
        self.gate_proj = nn.Linear(d, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, d, bias=False)
        self.final_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.own_final_norm else None

    def fuse(self, emb: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        e, h = self.enorm(emb), self.hnorm(hidden)
        parts = (e, h) if self.cfg.concat_order == "emb_first" else (h, e)
        return self.eh_proj(torch.cat(parts, dim=-1))

    def forward(
        self,
        emb: torch.Tensor,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cache: HeadKVCache | None = None,
    ) -> torch.Tensor:
        """emb, hidden: [b, n, d] for consecutive ``positions`` [n]. Appends to ``cache`` when given."""
        cfg = self.cfg
        b, n, _ = emb.shape
        x = self.fuse(emb, hidden)
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, n, cfg.num_attention_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, n, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, n, cfg.num_key_value_heads, cfg.head_dim).transpose(1, 2)
        q, k = _rope(q, positions, cfg.rope_theta), _rope(k, positions, cfg.rope_theta)
        if cache is not None and cache.keys is not None:
            if cache.get_seq_length() != int(positions[0]):
                raise ValueError(f"head cache holds {cache.get_seq_length()} positions, input starts at {positions[0]}")
            kpos = torch.arange(cache.offset, int(positions[-1]) + 1, device=emb.device)
            kk, vv = torch.cat([cache.keys, k], dim=2), torch.cat([cache.values, v], dim=2)
        else:
            kpos, kk, vv = positions, k, v
        # causal sliding window: query i sees keys j with i - window < j <= i
        diff = positions[:, None] - kpos[None, :]
        mask = (diff >= 0) & (diff < cfg.sliding_window)
        rep = cfg.num_attention_heads // cfg.num_key_value_heads
        kk_r, vv_r = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, kk_r, vv_r, attn_mask=mask, scale=1.0 / math.sqrt(cfg.head_dim))
        x = x + self.o_proj(att.transpose(1, 2).reshape(b, n, -1))
        h = self.post_attention_layernorm(x)
        x = x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        if cache is not None:
            cache.append(k.detach(), v.detach(), x.detach())
        return x


class MTPDrafter(nn.Module):
    """K chained MTP heads plus references to the target's embedding, final norm and LM head.

    The shared modules are held outside the parameter tree (they belong to the target and are never
    saved with the heads).
    """

    def __init__(self, cfg: MTPConfig, embed: nn.Module, final_norm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleList([MTPHead(cfg) for _ in range(cfg.num_heads)])
        self._shared = {"embed": embed, "final_norm": final_norm, "lm_head": lm_head}
        if embed.weight.shape[1] != cfg.hidden_size:
            raise ValueError(f"target hidden size {embed.weight.shape[1]} != MTP hidden size {cfg.hidden_size}")
        self.draft_vocab: torch.Tensor | None = None  # optional subset of token ids the drafter may propose

    # -- shared modules --------------------------------------------------------------------------------
    @property
    def embed(self) -> nn.Module:
        return self._shared["embed"]

    def head_for_depth(self, depth: int) -> MTPHead:
        """Head used at draft depth ``depth`` (0-based); depths beyond K reuse the last head."""
        return self.heads[min(depth, len(self.heads) - 1)]

    def logits(self, depth: int, out: torch.Tensor) -> torch.Tensor:
        """Draft logits over the full vocabulary, or over ``draft_vocab`` (others get -inf)."""
        head = self.head_for_depth(depth)
        norm = head.final_norm if head.final_norm is not None else self._shared["final_norm"]
        h = norm(out)
        lm = self._shared["lm_head"]
        if self.draft_vocab is None:
            return lm(h)
        sub = F.linear(h, lm.weight[self.draft_vocab], None if lm.bias is None else lm.bias[self.draft_vocab])
        full = h.new_full((*h.shape[:-1], lm.weight.shape[0]), float("-inf"))
        full[..., self.draft_vocab] = sub
        return full

    def new_caches(self, depths: int) -> list[HeadKVCache]:
        return [HeadKVCache(self.cfg.sliding_window, self.cfg.draft_slack) for _ in range(depths)]

    # -- initialisation and persistence -----------------------------------------------------------------
    @torch.no_grad()
    def init_from_target(self, decoder_layer: nn.Module, hidden_rms: float = 1.0) -> None:
        """Start every head from the target's last decoder block, fusion = pass the hidden state through.

        ``hidden_rms`` (the typical RMS of the target's residual stream) scales ``hnorm`` so that the
        copied block sees inputs of the magnitude it was trained on. A warm start for short CPU training.
        """
        sd = {k: v for k, v in decoder_layer.state_dict().items()}
        mapping = {
            "input_layernorm.weight": "input_layernorm.weight",
            "post_attention_layernorm.weight": "post_attention_layernorm.weight",
            "self_attn.q_proj.weight": "q_proj.weight",
            "self_attn.k_proj.weight": "k_proj.weight",
            "self_attn.v_proj.weight": "v_proj.weight",
            "self_attn.o_proj.weight": "o_proj.weight",
            "mlp.gate_proj.weight": "gate_proj.weight",
            "mlp.up_proj.weight": "up_proj.weight",
            "mlp.down_proj.weight": "down_proj.weight",
        }
        d = self.cfg.hidden_size
        for head in self.heads:
            own = head.state_dict()
            for src, dst in mapping.items():
                if src in sd and dst in own and sd[src].shape == own[dst].shape:
                    own[dst].copy_(sd[src])
            w = torch.zeros(d, 2 * d)
            hid = slice(d, 2 * d) if self.cfg.concat_order == "emb_first" else slice(0, d)
            emb = slice(0, d) if self.cfg.concat_order == "emb_first" else slice(d, 2 * d)
            w[:, hid] = torch.eye(d)
            w[:, emb] = torch.randn(d, d) * (0.1 / math.sqrt(d))
            own["eh_proj.weight"].copy_(w)
            own["hnorm.weight"].fill_(hidden_rms)
            head.load_state_dict(own)

    def save(self, directory: str | Path, filename: str = MTP_FILENAME) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / filename
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}
        meta = {"mtp_config": json.dumps(asdict(self.cfg)), "format": "mimo-audio-mtp-v1"}
        if self.draft_vocab is not None:
            tensors["draft_vocab"] = self.draft_vocab.cpu()
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path
