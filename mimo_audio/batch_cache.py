"""The engine's batch state: one left-padded KV cache for rows that join and leave between patch steps.

Rows are right-aligned: row ``i`` of every tensor belongs to ``rows[i]``, its real patches are the last ones
of its mask, and positions follow the mask (``cumsum - 1``), so left padding never shifts a row. Membership
changes go through :func:`rebuild`, one copy per tensor; a plain step copies nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass
class BatchState:
    """The running rows and their left-padded model state (row i of every tensor is rows[i])."""

    rows: list[Any]  # the engine's requests
    cache: Any  # DynamicCache, [B, heads, P, dim] per layer
    mask: torch.Tensor  # [B, P] 1 = real patch
    text_logits: torch.Tensor  # [B, vocab]
    local_hidden: torch.Tensor  # [B, local_dim]


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_from(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


def rebuild(batch: BatchState | None, keep: list[int], fresh: BatchState | None) -> BatchState | None:
    """The next batch: the kept rows of ``batch`` followed by the ``fresh`` (just prefilled) rows.

    One copy per tensor: every row is written right-aligned into a new zero (= padding) tensor as long as
    the longest row, so columns that became padding for all rows disappear and newcomers are left-padded.
    """
    parts: list[tuple[BatchState, torch.Tensor | None]] = []  # (batch, row index or None = all rows)
    if batch is not None and keep:
        same = len(keep) == len(batch.rows)
        parts.append((batch, None if same else torch.tensor(keep, dtype=torch.long, device=batch.mask.device)))
    if fresh is not None:
        parts.append((fresh, None))
    if not parts:
        return None
    if len(parts) == 1 and parts[0][1] is None:  # nothing to drop or add: keep the tensors (and cache type)
        return parts[0][0]

    def rows_of(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        return t if idx is None else t.index_select(0, idx)

    masks = [rows_of(b.mask, idx) for b, idx in parts]
    lengths = [int(m.sum(1).max()) for m in masks]  # the longest real row of each part
    P = max(lengths)
    B = sum(m.shape[0] for m in masks)

    def stack(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
        """Right-align the last ``length`` columns (along ``dim``) of each part into one new tensor."""
        shape = list(tensors[0].shape)
        shape[0], shape[dim] = B, P
        out = tensors[0].new_zeros(shape)
        row = 0
        for t, n in zip(tensors, lengths):
            src = t.narrow(dim, t.shape[dim] - n, n)
            out[row : row + t.shape[0]].narrow(dim, P - n, n).copy_(src)
            row += t.shape[0]
        return out

    layers = [list(zip(*(_kv(b.cache)[i] for b, _ in parts))) for i in range(len(_kv(parts[0][0].cache)))]
    kv = []
    for keys, values in layers:
        keys = [rows_of(k, idx) for k, (_, idx) in zip(keys, parts)]
        values = [rows_of(v, idx) for v, (_, idx) in zip(values, parts)]
        kv.append((stack(keys, 2), stack(values, 2)))
    rows = [r for b, idx in parts for r in (b.rows if idx is None else [b.rows[int(i)] for i in idx])]
    return BatchState(
        rows, _cache_from(kv), stack(masks, 1),
        torch.cat([rows_of(b.text_logits, idx) for b, idx in parts]),
        torch.cat([rows_of(b.local_hidden, idx) for b, idx in parts]),
    )
