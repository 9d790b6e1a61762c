"""Drop-in attention modules for transformers decoder layers (the ``self_attn`` slot).

One class, :class:`EfficientAttention`, whose ``kind`` is a layout letter (see :mod:`.layout`). It keeps the
original ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (and ``q_norm``/``k_norm`` when the model has them) and
adds what the kind needs:

- ``W``: a per-head ``sink`` logit.
- ``S``/``R``: ``sink_swa`` and ``sink_sparse`` (one per branch and head) and two sigmoid gates
  ``gate_swa``/``gate_sparse`` (``hidden -> heads`` linear maps):
  ``o = sigmoid(gate_sparse(x)) * o_sparse + sigmoid(gate_swa(x)) * o_swa``.
  Its own ``k_proj``/``v_proj`` feed only the window branch; the sparse branch reads the full layer's KV.
- ``F``: nothing new (``sink`` only with ``AttentionConfig.full_sink``).

The forward signature is the one transformers' Llama/Qwen2/Mistral attention has; the cache must be a
:class:`~efficient.attention.cache.HybridAttentionCache` (``apply_attention`` installs a hook that supplies
one when the caller passes none).
"""

from __future__ import annotations

import torch
from torch import nn

from .cache import FullKVLayer, HybridAttentionCache, RingKVLayer
from .kernels import attend, attend_blocks, attend_decode, attend_window, gather_blocks, select_blocks
from .layout import AttentionConfig, kv_sources, selection_sources


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``[B, H, T, D]`` with transformers' ``cos``/``sin`` (``[B, T, D]``), rotate-half convention."""
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.addcmul(x * cos.unsqueeze(1), _rotate_half(x), sin.unsqueeze(1))


class EfficientAttention(nn.Module):
    """Full / sliding-window+sink / HySparse attention for one decoder layer."""

    def __init__(
        self,
        kind: str,
        layer_idx: int,
        config: AttentionConfig,
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        v_head_dim: int | None = None,
        bias: bool = False,
        scaling: float | None = None,
        projections: dict[str, nn.Module] | None = None,
    ):
        super().__init__()
        if kind not in "FSRW" or len(kind) != 1:
            raise ValueError(f"unknown attention kind {kind!r}")
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
        self.kind, self.layer_idx, self.attn_config = kind, layer_idx, config
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = head_dim
        self.v_head_dim = head_dim if v_head_dim is None else v_head_dim
        self.scaling = head_dim**-0.5 if scaling is None else scaling
        self.kv_source = kv_sources(config.layout)[layer_idx]
        self.selection_source = selection_sources(config.layout)[layer_idx]
        # an F layer scores blocks only when sparse layers read its selection
        self.emits_selection = kind == "R" or (
            kind == "F" and layer_idx + 1 < len(config.layout) and config.layout[layer_idx + 1] in "SR"
        )
        p = projections or {}
        self.q_proj = p.get("q_proj") or nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = p.get("k_proj") or nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = p.get("v_proj") or nn.Linear(hidden_size, num_kv_heads * self.v_head_dim, bias=bias)
        self.o_proj = p.get("o_proj") or nn.Linear(num_heads * self.v_head_dim, hidden_size, bias=False)
        self.q_norm = p.get("q_norm")
        self.k_norm = p.get("k_norm")
        if kind == "W" or (kind == "F" and config.full_sink):
            self.sink = nn.Parameter(torch.zeros(num_heads))
        if kind in "SR":
            self.sink_swa = nn.Parameter(torch.zeros(num_heads))
            self.sink_sparse = nn.Parameter(torch.zeros(num_heads))
            self.gate_swa = nn.Linear(hidden_size, num_heads)
            self.gate_sparse = nn.Linear(hidden_size, num_heads)
            for gate in (self.gate_swa, self.gate_sparse):
                nn.init.normal_(gate.weight, std=0.02)
                nn.init.zeros_(gate.bias)
            if config.sparse_adapter:
                # the borrowed keys and values are another layer's: a query of their space and a map of their
                # values into this layer's (start: the layer's own query, identity)
                self.q_sparse = nn.Linear(hidden_size, num_heads * head_dim, bias=True)
                self.v_sparse = nn.Parameter(torch.eye(self.v_head_dim).repeat(num_heads, 1, 1))
                # per head: 1 = branches weighted by their joint-softmax shares, 0 = plain gated sum
                self.register_buffer("sparse_merge", torch.ones(num_heads))
                with torch.no_grad():
                    self.q_sparse.weight.copy_(self.q_proj.weight)
                    self.q_sparse.bias.copy_(self.q_proj.bias if self.q_proj.bias is not None else 0.0)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, layer={self.layer_idx}, heads={self.num_heads}/{self.num_kv_heads}"

    def new_parameter_names(self) -> list[str]:
        """Parameters that the conversion adds (what healing trains, with the S/R window projections)."""
        names = [n for n, _ in self.named_parameters() if n.split(".")[0] in ("sink", "sink_swa", "sink_sparse")]
        names += [n for n, _ in self.named_parameters() if n.split(".")[0] in ("gate_swa", "gate_sparse")]
        names += [n for n, _ in self.named_parameters() if n.split(".")[0] in ("q_sparse", "v_sparse")]
        return names

    @property
    def has_sparse_adapter(self) -> bool:
        return hasattr(self, "q_sparse")

    def _sparse_query(self, x: torch.Tensor, position_embeddings, q: torch.Tensor) -> torch.Tensor:
        """The query that reads the borrowed keys: the layer's own ``q`` or, with an adapter, ``q_sparse(x)``."""
        if not self.has_sparse_adapter:
            return q
        b, t, _ = x.shape
        qs = self.q_sparse(x).view(b, t, self.num_heads, self.head_dim)
        if self.q_norm is not None:
            qs = self.q_norm(qs)
        qs = qs.transpose(1, 2)
        if position_embeddings is not None:
            qs = apply_rope(qs, *position_embeddings)
        return qs

    def _map_values(self, out: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, Dv]`` read from borrowed values -> this layer's value space (identity without adapter)."""
        if not self.has_sparse_adapter:
            return out
        return torch.einsum("bhtd,hde->bhte", out, self.v_sparse)

    def _project(self, x: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.v_head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def _window(self, q, k, v, pos, ring: RingKVLayer, sink: torch.Tensor, return_lse: bool = False):
        out = attend_window(q, ring.contents(), k, v, pos, window=self.attn_config.window, scale=self.scaling,
                            sink=sink, return_lse=return_lse)
        ring.write(k, v, pos)
        return out

    def _combine(self, x, sparse, lse_sparse, local, lse_local) -> torch.Tensor:
        """Gated sum of the branches; with an adapter each branch is first weighted by its share of the joint
        softmax (``sigmoid(lse_sparse - lse_local)``), which is exactly attention over both key sets at once."""
        b = x.shape[0]
        g_sparse = torch.sigmoid(self.gate_sparse(x)).transpose(1, 2).unsqueeze(-1)  # [B, H, T, 1]
        g_swa = torch.sigmoid(self.gate_swa(x)).transpose(1, 2).unsqueeze(-1)
        if self.has_sparse_adapter:
            share = torch.sigmoid(lse_sparse.view(b, self.num_heads, -1) - lse_local.view(b, self.num_heads, -1))
            merge = self.sparse_merge.view(1, -1, 1).to(share.dtype)
            share = share.nan_to_num(0.0).unsqueeze(-1)
            merge = merge.unsqueeze(-1)
            g_sparse = g_sparse * (merge * share + 1 - merge)
            g_swa = g_swa * (merge * (1 - share) + 1 - merge)
        return g_sparse * self._map_values(sparse) + g_swa * local

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: HybridAttentionCache | None = None,
        cache_position: torch.LongTensor | None = None,
        cache: HybridAttentionCache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        # transformers 4.x hands the cache over as ``past_key_values``, 5.x as ``cache`` (and no cache_position:
        # positions then continue the layer's own length, which is what they are for an appending cache)
        cache = past_key_values if cache is None else cache
        if not isinstance(cache, HybridAttentionCache):
            raise TypeError(
                "efficient attention needs a HybridAttentionCache (got "
                f"{type(cache).__name__}); call the converted model itself, or pass "
                "past_key_values=HybridAttentionCache.for_model(model)"
            )
        cfg = self.attn_config
        b, t, _ = hidden_states.shape
        q, k, v = self._project(hidden_states, position_embeddings)
        layer = cache.layers[self.layer_idx]
        if t == 1 and not torch.is_grad_enabled():
            pos = layer.get_seq_length() if cache_position is None else int(cache_position[0])
            qs = self._sparse_query(hidden_states, position_embeddings, q) if self.kind in "SR" else q
            out = self._decode(hidden_states, q, k, v, pos, layer, cache, qs)
            return self.o_proj(out.view(b, 1, self.num_heads * self.v_head_dim)), None
        pos = cache_position
        if pos is None:
            pos = torch.arange(layer.get_seq_length(), layer.get_seq_length() + t, device=q.device)

        if self.kind == "F":
            assert isinstance(layer, FullKVLayer)
            keys, values = layer.update(k, v, {"cache_position": pos})
            k_pos = torch.arange(keys.shape[2], device=q.device)
            res = attend(
                q, keys, values, pos, k_pos, scale=self.scaling, sink=getattr(self, "sink", None),
                block_size=cfg.block_size if self.emits_selection else None,
            )
            if self.emits_selection:
                skip = cfg.window if cfg.sparse_skip_window else None
                cache.set_selection(self.layer_idx, select_blocks(res.block_max, cfg.top_k, pos, cfg.block_size, skip))
            out = res.out
        elif self.kind == "W":
            out = self._window(q, k, v, pos, layer, self.sink)
        else:
            out = self._sparse(hidden_states, q, k, v, pos, layer, cache,
                               self._sparse_query(hidden_states, position_embeddings, q))
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.v_head_dim)
        return self.o_proj(out), None

    def _sparse(self, x, q, k, v, pos, ring: RingKVLayer, cache: HybridAttentionCache, qs=None) -> torch.Tensor:
        cfg = self.attn_config
        qs = q if qs is None else qs
        src = cache.layers[self.kv_source]
        if src.seen != int(pos[-1]) + 1:
            raise RuntimeError(
                f"layer {self.layer_idx} borrows KV from layer {self.kv_source}, which holds {src.seen} positions, "
                f"not the {int(pos[-1]) + 1} this forward needs"
            )
        k_full, v_full, n_valid = src.keys, src.values, src.seen
        skip = cfg.window if cfg.sparse_skip_window else None
        if self.kind == "R":
            k_pos = torch.arange(n_valid, device=q.device)
            scores = attend(qs, k_full[:, :, :n_valid], None, pos, k_pos, scale=self.scaling, block_size=cfg.block_size)
            cache.set_selection(self.layer_idx, select_blocks(scores.block_max, cfg.top_k, pos, cfg.block_size, skip))
        blocks = cache.selection.get(self.selection_source)
        if blocks is None or blocks.shape[2] != q.shape[2]:
            raise RuntimeError(f"layer {self.layer_idx}: no block selection from layer {self.selection_source} "
                               "for this forward (the full layer must run first in the same forward)")
        sparse = attend_blocks(
            qs, k_full, v_full, pos, n_valid, blocks, block_size=cfg.block_size, scale=self.scaling,
            sink=self.sink_sparse, exclude_window=skip,
        )
        if self.has_sparse_adapter:
            local, lse_local = self._window(q, k, v, pos, ring, self.sink_swa, return_lse=True)
        else:
            local, lse_local = self._window(q, k, v, pos, ring, self.sink_swa), None
        return self._combine(x, sparse.out, sparse.lse, local, lse_local)

    def _decode(self, x, q, k, v, pos: int, layer, cache: HybridAttentionCache, qs=None) -> torch.Tensor:
        """One token without autograd: no position masks, in-place ring writes, one gather per selection."""
        cfg = self.attn_config
        if self.kind == "F":
            layer.update(k, v, {"cache_position": torch.tensor([pos])})
            n = layer.seen
            sink = getattr(self, "sink", None)
            if not self.emits_selection:
                return attend_decode(q, layer.keys[:, :, :n], layer.values[:, :, :n], scale=self.scaling, sink=sink).out
            n_blk = -(-n // cfg.block_size) * cfg.block_size  # whole blocks; the tail is masked
            res = attend_decode(q, layer.keys[:, :, :n_blk], layer.values[:, :, :n_blk], scale=self.scaling,
                                sink=sink, n_valid=n, block_size=cfg.block_size)
            skip = cfg.window if cfg.sparse_skip_window else None
            q_pos = torch.tensor([pos], device=q.device)
            cache.set_selection(self.layer_idx, select_blocks(res.block_max, cfg.top_k, q_pos, cfg.block_size, skip))
            return res.out
        if self.kind == "W":
            bias = cache.write_window(self.layer_idx, k, v, pos)
            return attend_decode(q, layer.keys, layer.values, scale=self.scaling, sink=self.sink, bias=bias).out
        qs = q if qs is None else qs
        src = cache.layers[self.kv_source]
        if src.seen != pos + 1:
            raise RuntimeError(
                f"layer {self.layer_idx} borrows KV from layer {self.kv_source}, which holds {src.seen} positions, "
                f"not the {pos + 1} this forward needs"
            )
        skip = cfg.window if cfg.sparse_skip_window else None
        if self.kind == "R":
            n_blk = -(-src.seen // cfg.block_size) * cfg.block_size
            scores = attend_decode(qs, src.keys[:, :, :n_blk], None, scale=self.scaling, n_valid=src.seen,
                                   block_size=cfg.block_size).block_max
            q_pos = torch.tensor([pos], device=q.device)
            cache.set_selection(self.layer_idx, select_blocks(scores, cfg.top_k, q_pos, cfg.block_size, skip))
        gathered = cache.gathered.get(self.selection_source)
        if gathered is None:
            blocks = cache.selection.get(self.selection_source)
            if blocks is None or blocks.shape[2] != 1:
                raise RuntimeError(f"layer {self.layer_idx}: no block selection from layer {self.selection_source} "
                                   "for this forward (the full layer must run first in the same forward)")
            gathered = gather_blocks(src.keys, src.values, blocks, pos, src.seen, block_size=cfg.block_size,
                                     exclude_window=skip)
            cache.gathered[self.selection_source] = gathered
        sparse = attend_decode(qs, gathered.keys, gathered.values, scale=self.scaling, sink=self.sink_sparse,
                               bias=gathered.bias)
        bias = cache.write_window(self.layer_idx, k, v, pos)
        local = attend_decode(q, layer.keys, layer.values, scale=self.scaling, sink=self.sink_swa, bias=bias)
        if self.has_sparse_adapter:
            return self._combine(x, sparse.out, sparse.lse, local.out, local.lse)
        g_sparse = torch.sigmoid(self.gate_sparse(x)).view(-1, self.num_heads, 1, 1)
        g_swa = torch.sigmoid(self.gate_swa(x)).view(-1, self.num_heads, 1, 1)
        return local.out.mul_(g_swa).addcmul_(g_sparse, sparse.out)
