"""A KV cache that shrinks: full-length KV for full layers only, ring buffers for windows.

:class:`HybridAttentionCache` is a transformers :class:`~transformers.Cache` (``get_seq_length``, ``crop``,
``reset``, indexing), so ``model.generate`` and hand-written decode loops use it as they use ``DynamicCache``.

- ``F`` layers: :class:`FullKVLayer`, a preallocated buffer grown in whole key blocks (its length is always a
  multiple of the HySparse block size, so sparse layers gather contiguous blocks straight from it).
- ``W``, ``S`` and ``R`` layers: :class:`RingKVLayer`, ``window + rollback_slack`` slots, keys stored with
  their positions. ``S``/``R`` layers have no long KV: they read their full layer's buffer.
- The HySparse block selection of the current forward is handed from a full (or ``R``) layer to the sparse
  layers after it through :attr:`HybridAttentionCache.selection`.

Rollback (speculative decoding): ``crop(n)`` keeps the first ``n`` positions. Full layers can go back any
distance; a ring keeps ``rollback_slack`` positions beyond its window, so it can go back at most
``rollback_slack + 1`` tokens (``max_rollback``), and asks for more raise a ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .introspect import attention_config_of
from .layout import AttentionConfig


def _positions_from(cache_kwargs: dict | None, seen: int, t: int, device: torch.device) -> torch.Tensor:
    pos = cache_kwargs.get("cache_position") if isinstance(cache_kwargs, dict) else None
    if pos is None:
        return torch.arange(seen, seen + t, device=device)
    return pos


def _query_length(query: torch.Tensor | int) -> int:
    """transformers 4.x passes ``cache_position`` to ``get_mask_sizes``, 5.x the query length."""
    return int(query) if isinstance(query, int) else query.shape[0]


class FullKVLayer(CacheLayerMixin):
    """Full-length KV, grown in multiples of ``block_size`` (1.5x at a time, or to ``max_cache_len`` at once)."""

    is_sliding = False

    def __init__(self, block_size: int = 64, max_cache_len: int | None = None):
        super().__init__()
        self.block_size = block_size
        self.max_cache_len = max_cache_len
        self.seen = 0

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _reserve(self, needed: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if needed <= self.capacity:
            return
        cap = max(needed, int(self.capacity * 1.5), self.max_cache_len or 0)
        cap = math.ceil(cap / self.block_size) * self.block_size
        keys = k.new_zeros(k.shape[0], k.shape[1], cap, k.shape[3])
        values = v.new_zeros(v.shape[0], v.shape[1], cap, v.shape[3])
        if self.seen:
            keys[:, :, : self.seen] = self.keys[:, :, : self.seen]
            values[:, :, : self.seen] = self.values[:, :, : self.seen]
        self.keys, self.values = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, cache_kwargs: dict[str, Any] | None = None,
        *args, **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append; returns the valid ``[B, Hkv, seen, D]`` views."""
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        t = key_states.shape[2]
        pos = _positions_from(cache_kwargs, self.seen, t, key_states.device)
        if int(pos[0]) != self.seen:
            raise ValueError(f"full KV layer holds {self.seen} positions but got keys for position {int(pos[0])}")
        if torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad):
            # training: stay out-of-place so autograd sees every step
            pad = (-(self.seen + t)) % self.block_size
            keys = torch.cat([self.keys[:, :, : self.seen], key_states], 2) if self.seen else key_states
            values = torch.cat([self.values[:, :, : self.seen], value_states], 2) if self.seen else value_states
            self.keys = torch.nn.functional.pad(keys, (0, 0, 0, pad))
            self.values = torch.nn.functional.pad(values, (0, 0, 0, pad))
        else:
            self._reserve(self.seen + t, key_states, value_states)
            self.keys[:, :, self.seen : self.seen + t] = key_states
            self.values[:, :, self.seen : self.seen + t] = value_states
        self.seen += t
        return self.keys[:, :, : self.seen], self.values[:, :, : self.seen]

    def get_mask_sizes(self, query: torch.Tensor | int) -> tuple[int, int]:
        return self.seen + _query_length(query), 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_cache_shape(self) -> int:  # transformers 4.x
        return -1

    def get_max_length(self) -> int:  # transformers 5.x
        return -1

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.seen + max_length
        self.seen = max(0, min(self.seen, max_length))

    def reset(self) -> None:
        self.seen = 0


class RingKVLayer(CacheLayerMixin):
    """Sliding-window KV in ``capacity`` slots (slot = position mod capacity), with each slot's position."""

    is_sliding = True

    def __init__(self, window: int, capacity: int):
        super().__init__()
        if capacity < window:
            raise ValueError(f"ring capacity {capacity} is smaller than the window {window}")
        self.window, self.capacity, self.seen = window, capacity, 0
        self.positions: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        b, h, _, d = key_states.shape
        value_states = key_states if value_states is None else value_states
        self.keys = key_states.new_zeros(b, h, self.capacity, d)
        self.values = value_states.new_zeros(b, h, self.capacity, value_states.shape[3])
        self.positions = torch.full((self.capacity,), -1, dtype=torch.long, device=key_states.device)
        self.is_initialized = True

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if not self.is_initialized:
            return None
        return self.keys, self.values, self.positions

    def write(self, key_states: torch.Tensor, value_states: torch.Tensor, positions: torch.Tensor) -> None:
        """Store the last ``capacity`` of the given keys (out of place, so autograd is safe)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if int(positions[0]) != self.seen:
            raise ValueError(f"window KV layer holds {self.seen} positions but got keys for {int(positions[0])}")
        n = min(positions.shape[0], self.capacity)
        pos = positions[-n:]
        slots = pos % self.capacity
        self.keys = self.keys.index_copy(2, slots, key_states[:, :, -n:])
        self.values = self.values.index_copy(2, slots, value_states[:, :, -n:])
        self.positions = self.positions.index_copy(0, slots, pos)
        self.seen = int(positions[-1]) + 1

    def write_one(self, key_states: torch.Tensor, value_states: torch.Tensor, position: int) -> None:
        """Decode: store one token in place (no autograd). The slot it overwrites held ``position - capacity``,
        already outside the window."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if position != self.seen:
            raise ValueError(f"window KV layer holds {self.seen} positions but got keys for {position}")
        slot = position % self.capacity
        self.keys.narrow(2, slot, 1).copy_(key_states)
        self.values.narrow(2, slot, 1).copy_(value_states)
        self.positions[slot] = position
        self.seen = position + 1

    def window_bias(self, position: int) -> torch.Tensor:
        """``[1, 1, 1, capacity]``: 0 for the slots the query at ``position`` sees (its window), ``-inf`` elsewhere."""
        p = self.positions
        return torch.zeros(p.shape, dtype=self.keys.dtype, device=p.device).masked_fill_(
            (p < 0) | (p <= position - self.window), float("-inf")).view(1, 1, 1, -1)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, cache_kwargs: dict[str, Any] | None = None,
        *args, **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache-API update: returns old ring + new keys (mask them by position); stores the new ones."""
        pos = _positions_from(cache_kwargs, self.seen, key_states.shape[2], key_states.device)
        old = self.contents()
        self.write(key_states, value_states, pos)
        if old is None:
            return key_states, value_states
        return torch.cat([old[0], key_states], 2), torch.cat([old[1], value_states], 2)

    def get_mask_sizes(self, query: torch.Tensor | int) -> tuple[int, int]:
        return min(self.seen, self.capacity) + _query_length(query), 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_cache_shape(self) -> int:  # transformers 4.x
        return self.capacity

    def get_max_length(self) -> int:  # transformers 5.x
        return self.capacity

    @property
    def max_rollback(self) -> int:
        return self.capacity - self.window + 1

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.seen + max_length
        max_length = max(0, min(self.seen, max_length))
        if max_length == self.seen or not self.is_initialized:
            self.seen = max_length
            return
        oldest_needed = max(0, max_length - self.window + 1)
        kept = self.positions[(self.positions >= oldest_needed) & (self.positions < max_length)]
        if kept.numel() != max_length - oldest_needed:
            raise ValueError(
                f"cannot roll a window cache back from {self.seen} to {max_length} tokens: it keeps only "
                f"{self.capacity - self.window} slots beyond its window (max rollback {self.max_rollback} tokens); "
                "raise AttentionConfig.rollback_slack"
            )
        self.positions = self.positions.masked_fill(self.positions >= max_length, -1)
        self.seen = max_length

    def reset(self) -> None:
        self.seen = 0
        if self.positions is not None:
            self.positions = self.positions.fill_(-1)


@dataclass
class CacheMemory:
    """Bytes held by a :class:`HybridAttentionCache`."""

    tokens: int
    bytes_per_token: int  # what one more token adds (full layers only)
    window_bytes: int  # ring buffers: constant in the context length
    kv_bytes: int  # K/V bytes for ``tokens`` tokens: bytes_per_token * tokens + window_bytes
    allocated_bytes: int  # every tensor the cache holds (K/V capacity, ring positions, selections)


def kv_cache_bytes(
    config: AttentionConfig,
    n_tokens: int,
    n_kv_heads: int,
    head_dim: int,
    v_head_dim: int | None = None,
    batch: int = 1,
    dtype_bytes: int = 2,
) -> int:
    """Spec formula: ``b*[L_f*n_kv*(dk+dv)*N + L_w*n_kv*(dk+dv)*min(N, window+slack)]`` per batch row.

    ``L_f`` counts ``F`` layers; ``L_w`` counts ``W``, ``S`` and ``R`` layers (each keeps a ring). Ring buffers
    are allocated whole with the first token, so for ``0 < N < window+slack`` the formula uses the full ring.
    """
    dv = head_dim if v_head_dim is None else v_head_dim
    per = batch * n_kv_heads * (head_dim + dv) * dtype_bytes
    n_full = config.layout.count("F")
    n_ring = len(config.layout) - n_full
    ring = config.ring_capacity if n_tokens > 0 else 0
    return per * (n_full * n_tokens + n_ring * ring)


class HybridAttentionCache(Cache):
    """Per-layer KV for a model converted by :func:`efficient.attention.apply_attention`."""

    def __init__(self, config: AttentionConfig, max_cache_len: int | None = None):
        layers: list[CacheLayerMixin] = []
        for kind in config.layout:
            if kind == "F":
                layers.append(FullKVLayer(config.block_size, max_cache_len))
            else:
                layers.append(RingKVLayer(config.window, config.ring_capacity))
        super().__init__(layers=layers)
        self.config = config
        # layer index of an F/R layer -> block indices [B, Hkv, T, K] of the current forward
        self.selection: dict[int, torch.Tensor] = {}
        # decode: the selected blocks gathered once per step, shared by the sparse layers reading them
        self.gathered: dict[int, Any] = {}
        self._window_bias: tuple[int, torch.Tensor] | None = None

    def write_window(self, layer_idx: int, key_states: torch.Tensor, value_states: torch.Tensor, position: int):
        """Decode: write one token into a layer's ring; returns its window bias (see ``RingKVLayer.window_bias``).

        Every ring is written at the same positions in every forward and cropped together, so their slot
        positions agree and one bias per step serves all of them.
        """
        layer = self.layers[layer_idx]
        layer.write_one(key_states, value_states, position)
        if self._window_bias is None or self._window_bias[0] != position:
            self._window_bias = (position, layer.window_bias(position))
        return self._window_bias[1]

    def set_selection(self, layer_idx: int, blocks: torch.Tensor) -> None:
        """Hand an F/R layer's block selection to the sparse layers after it (drops the stale gather)."""
        self.selection[layer_idx] = blocks
        self.gathered.pop(layer_idx, None)

    @classmethod
    def for_model(cls, model: torch.nn.Module, max_cache_len: int | None = None) -> HybridAttentionCache:
        """An empty cache for a model converted with :func:`~efficient.attention.apply_attention`."""
        return cls(attention_config_of(model), max_cache_len)

    @property
    def max_rollback(self) -> int | None:
        """How many tokens ``crop`` can take back (None: unbounded, no window layers)."""
        rings = [layer.max_rollback for layer in self.layers if isinstance(layer, RingKVLayer)]
        return min(rings) if rings else None

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.layers[layer_idx or 0].get_seq_length()

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions (negative: drop that many), in every layer, consistently."""
        if max_length < 0:
            max_length = self.get_seq_length() + max_length
        rings = [layer for layer in self.layers if isinstance(layer, RingKVLayer)]
        for layer in rings:  # check every ring before changing anything
            if layer.is_initialized and max_length < layer.seen:
                oldest = max(0, max_length - layer.window + 1)
                kept = layer.positions[(layer.positions >= oldest) & (layer.positions < max_length)]
                if kept.numel() != max_length - oldest:
                    layer.crop(max_length)  # raises the explanatory error
        for layer in self.layers:
            layer.crop(max_length)
        self.selection.clear()
        self.gathered.clear()
        self._window_bias = None

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.selection.clear()
        self.gathered.clear()
        self._window_bias = None

    def memory(self) -> CacheMemory:
        """Bytes per token, window bytes, K/V bytes for the current length, and everything allocated."""
        per_token = window = allocated = 0
        tokens = self.get_seq_length()
        for layer in self.layers:
            if not layer.is_initialized or layer.keys is None:
                continue
            kv = layer.keys.nbytes + layer.values.nbytes
            allocated += kv
            if isinstance(layer, FullKVLayer):
                per_token += kv // layer.capacity
            else:
                window += kv
                allocated += layer.positions.nbytes
        allocated += sum(sel.nbytes for sel in self.selection.values())
        allocated += sum(g.keys.nbytes + g.values.nbytes + g.bias.nbytes for g in self.gathered.values())
        return CacheMemory(tokens, per_token, window, per_token * tokens + window, allocated)
