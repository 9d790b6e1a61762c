"""Attention kernels: one interface with windows, sinks, block-max scores and block-sparse reads.

Shapes (GQA: query head ``h`` reads KV head ``h // G``, the transformers ``repeat_kv`` order):

- ``q``: ``[B, Hq, T, Dk]``; ``k``: ``[B, Hkv, S, Dk]``; ``v``: ``[B, Hkv, S, Dv]`` (``Dk`` may differ from ``Dv``)
- ``q_pos``: ``[T]`` absolute positions of the queries; ``k_pos``: ``[S]`` positions of the keys, ``-1`` for an
  empty slot (ring buffers store keys out of order, so masks are built from positions, never from indices).

Key ``s`` is visible to query ``t`` when ``0 <= pos(s) <= pos(t)`` and, with a window ``w``,
``pos(t) - pos(s) < w``. A per-query-head ``sink`` logit adds ``exp(sink)`` to the softmax denominator only
(gpt-oss / MiMo-V2-Flash): ``p_ts = exp(a_ts) / (exp(sink) + sum_s' exp(a_ts'))``.

Every fast function here has an eager reference (``*_eager``) written the obvious way, used by the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")
# query rows per chunk are chosen so one chunk's logits stay below this many elements
_CHUNK_ELEMENTS = 1 << 24
# from this many query rows on, use the fused CPU flash kernel (decode rows stay on the small eager path)
_FLASH_MIN_ROWS = 8


@dataclass
class AttentionOutput:
    out: torch.Tensor  # [B, Hq, T, Dv]
    lse: torch.Tensor | None = None  # [B, Hq, T] log of the softmax denominator (sink included)
    block_max: torch.Tensor | None = None  # [B, Hkv, T, nb] block-max probability, max over the group's heads


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None) -> int:
    if v is None:
        v = k
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B, H, T, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v disagree on [B, Hkv, S]: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"query and key head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} KV heads")
    return q.shape[1] // k.shape[1]


def visibility(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """``[T, S]`` bool: causal (and windowed) visibility from positions."""
    qp, kp = q_pos[:, None], k_pos[None, :]
    vis = (kp >= 0) & (kp <= qp)
    if window is not None:
        vis &= (qp - kp) < window
    return vis


def _softmax_with_sink(logits: torch.Tensor, sink: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and log-denominator of masked logits ``[..., S]``; ``sink`` broadcasts to ``[..., 1]``.

    Rows with no visible key and no sink get all-zero probabilities (not NaN).
    """
    m = logits.amax(-1, keepdim=True)
    if sink is not None:
        m = torch.maximum(m, sink)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(logits - m)
    denom = p.sum(-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink - m)
    lse = m + torch.log(denom)
    p = p / denom.clamp_min(torch.finfo(p.dtype).tiny)
    return p, lse.squeeze(-1)


def _grouped_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``[B, Hkv, G, T, S]`` logits as one batched matmul per KV head (no K copy per query head)."""
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    logits = torch.matmul(q.reshape(b, hkv, (hq // hkv) * t, d), k.transpose(-1, -2))
    return logits.mul_(scale).view(b, hkv, hq // hkv, t, k.shape[2])


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    sink: torch.Tensor | None = None,
    block_size: int | None = None,
    key_mask: torch.Tensor | None = None,
) -> AttentionOutput:
    """Attention over ``k``/``v`` with an optional window and sink; with ``block_size`` also the block-max scores.

    ``block_max[b, g, t, i] = max over the group's query heads and the keys s of block i (key index
    ``i*block_size .. (i+1)*block_size-1``) of p_ts``: the HySparse full-layer importance score. Computed from
    the logits' per-block maximum and the row's final log-denominator, so the n x n probabilities are never
    kept beyond one query chunk. ``key_mask`` (``[B, Hkv, T, S]`` bool, optional) further restricts keys.
    With ``v=None`` only the scores (and lse) are computed: the re-selecting layer's scan of borrowed keys.
    """
    g = _check_shapes(q, k, v)
    b, hq, t, dk = q.shape
    hkv, s = k.shape[1], k.shape[2]
    scale = dk**-0.5 if scale is None else scale
    fast = sink is None and block_size is None and key_mask is None and v is not None and k.shape[-1] == v.shape[-1]
    if fast:
        vis = visibility(q_pos, k_pos, window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=vis, scale=scale, enable_gqa=g > 1)
        # rows without any visible key come back as NaN from SDPA; they attend to nothing
        return AttentionOutput(torch.nan_to_num(out, nan=0.0))
    sink_g = None if sink is None else sink.to(q.dtype).view(1, hkv, g, 1, 1)
    nb = math.ceil(s / block_size) if block_size else 0
    rows = max(1, min(t, _CHUNK_ELEMENTS // max(1, b * hq * s)))
    flash = v is not None and k.shape[-1] == v.shape[-1] and t >= _FLASH_MIN_ROWS
    if flash:
        kk, vv = (k, v) if g == 1 else (k.repeat_interleave(g, 1), v.repeat_interleave(g, 1))
    outs, lses, bms = [], [], []
    for t0 in range(0, t, rows):
        t1 = min(t, t0 + rows)
        mask = visibility(q_pos[t0:t1], k_pos, window)
        if key_mask is not None:
            mask = mask & key_mask[:, :, t0:t1]  # [B, Hkv, Tc, S]
        if flash:
            # fused CPU flash kernel: output and log-sum-exp; the sink rescales both exactly
            m = mask if mask.dim() == 4 else mask[None, None]
            if m.shape[1] > 1 and g > 1:
                m = m.repeat_interleave(g, 1)
            bias = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill_(~m, NEG_INF)
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q[:, :, t0:t1], kk, vv, 0.0, False, attn_mask=bias, scale=scale
            )
            # the fused kernel reports 0, not -inf, for a row that sees no key: it has no mass to merge
            lse = lse.masked_fill(~m.any(-1).expand(lse.shape), NEG_INF)
            if sink is not None:
                lse_s = torch.logaddexp(lse, sink.to(lse.dtype).view(1, hq, 1))
                o = o * torch.exp(lse - lse_s).unsqueeze(-1)
                lse = lse_s
            outs.append(o)
            lses.append(lse)
            if block_size:
                logits = _grouped_logits(q[:, :, t0:t1], k, scale)
                logits.masked_fill_(~(mask[:, :, None] if mask.dim() == 4 else mask), NEG_INF)
                lse_g = lse.reshape(b, hkv, g, t1 - t0, 1)
                padded = F.pad(logits, (0, nb * block_size - s), value=NEG_INF)
                blk = padded.view(*padded.shape[:-1], nb, block_size).amax(-1)
                bms.append(torch.exp(blk - lse_g).amax(2))
            continue
        logits = _grouped_logits(q[:, :, t0:t1], k, scale)  # [B, Hkv, G, Tc, S]
        logits = logits.masked_fill(~(mask[:, :, None] if mask.dim() == 4 else mask), NEG_INF)
        p, lse = _softmax_with_sink(logits, sink_g)
        if v is not None:
            outs.append(torch.matmul(p, v.unsqueeze(2)).reshape(b, hq, t1 - t0, v.shape[-1]))
        lses.append(lse.reshape(b, hq, t1 - t0))
        if block_size:
            padded = F.pad(logits, (0, nb * block_size - s), value=NEG_INF)
            blk = padded.view(*padded.shape[:-1], nb, block_size).amax(-1)  # block-max logit
            bms.append(torch.exp(blk - lse.unsqueeze(-1)).amax(2))  # probability, max over the group
    return AttentionOutput(
        torch.cat(outs, 2) if outs else None, torch.cat(lses, 2), torch.cat(bms, 2) if block_size else None
    )


def attend_window(
    q: torch.Tensor,
    old: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    sink: torch.Tensor | None = None,
    rows: int = 256,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sliding-window attention of new queries over a ring's ``old`` ``(k, v, pos)`` plus the new ``k``/``v``.

    The new keys sit at ``q_pos`` (contiguous); each chunk of ``rows`` queries reads only the ring and the new
    keys within its reach, so a long prefill costs ``O(T * (window + rows))``, not ``O(T^2)``. With
    ``return_lse`` also the log-denominators ``[B, Hq, T]``.
    """
    outs, lses = [], []
    for t0 in range(0, q.shape[2], rows):
        t1 = min(q.shape[2], t0 + rows)
        lo = max(0, t0 - window + 1)
        keys, values, k_pos = k[:, :, lo:t1], v[:, :, lo:t1], q_pos[lo:t1]
        if old is not None:
            keys, values = torch.cat([old[0], keys], 2), torch.cat([old[1], values], 2)
            k_pos = torch.cat([old[2], k_pos])
        if return_lse:  # a sink-free call would take the SDPA path, which has no log-denominator
            no_sink = torch.full((q.shape[1],), float("-inf"), dtype=q.dtype, device=q.device)
            res = attend(q[:, :, t0:t1], keys, values, q_pos[t0:t1], k_pos, scale=scale, window=window,
                         sink=no_sink if sink is None else sink)
            outs.append(res.out)
            lses.append(res.lse)
            continue
        outs.append(attend(q[:, :, t0:t1], keys, values, q_pos[t0:t1], k_pos, scale=scale, window=window,
                           sink=sink).out)
    return (torch.cat(outs, 2), torch.cat(lses, 2)) if return_lse else torch.cat(outs, 2)


def select_blocks(
    block_scores: torch.Tensor,
    top_k: int,
    q_pos: torch.Tensor,
    block_size: int,
    skip_window: int | None = None,
) -> torch.Tensor:
    """Top-k block indices ``[B, Hkv, T, min(top_k, nb)]``, ascending, from block scores ``[B, Hkv, T, nb]``.

    Blocks that start after the query are never preferred over visible ones. With ``skip_window``, blocks that
    lie wholly inside the query's window score lowest too (a sliding-window branch already covers them).
    Ties go to the later block (a tiny position bias), so the choice is deterministic.
    """
    nb = block_scores.shape[-1]
    k = min(top_k, nb)
    starts = torch.arange(nb, device=block_scores.device) * block_size
    scores = block_scores.float() + starts * 1e-12
    invisible = starts[None, :] > q_pos[:, None]
    if skip_window is not None:
        ends = starts + block_size - 1
        inside = ((q_pos[:, None] - starts[None, :]) < skip_window) & (ends[None, :] <= q_pos[:, None])
        invisible = invisible | inside
    scores = scores.masked_fill(invisible, -1.0)
    idx = scores.topk(k, dim=-1).indices
    return idx.sort(-1).values


def attend_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    n_valid: int,
    blocks: torch.Tensor,
    *,
    block_size: int,
    scale: float | None = None,
    sink: torch.Tensor | None = None,
    exclude_window: int | None = None,
    rows: int = 64,
) -> AttentionOutput:
    """Attend only to the selected key blocks of another layer's KV (HySparse sparse branch).

    ``k``/``v`` hold positions ``0 .. n_valid-1`` contiguously (slot = position), length a multiple of
    ``block_size``; ``blocks`` is ``[B, Hkv, T, K]`` (one block set per query and KV group). With
    ``exclude_window`` keys inside the query's window are skipped (the SWA branch covers them).

    For each chunk of ``rows`` queries the union of their blocks is gathered once (whole, contiguous blocks),
    and every query is masked to its own blocks: exact, and cheap because neighbouring queries share blocks.
    """
    _check_shapes(q, k, v)
    b, hq, t, dk = q.shape
    hkv, cap = k.shape[1], k.shape[2]
    if cap % block_size:  # buffers from the cache are block multiples; pad anything else
        pad = block_size - cap % block_size
        k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
        cap += pad
    nb = cap // block_size
    scale = dk**-0.5 if scale is None else scale
    kb = k.view(b, hkv, nb, block_size, dk)
    vb = v.view(b, hkv, nb, block_size, v.shape[-1])
    bi = torch.arange(b, device=q.device)[:, None, None]
    hi = torch.arange(hkv, device=q.device)[None, :, None]
    offs = torch.arange(block_size, device=q.device)
    outs, lses = [], []
    if t == 1:  # decode: the query's own blocks, no union needed
        ids = blocks[:, :, 0]
        k_sel = kb[bi, hi, ids].reshape(b, hkv, -1, dk)
        v_sel = vb[bi, hi, ids].reshape(b, hkv, -1, v.shape[-1])
        kp = (ids[..., None] * block_size + offs).reshape(b, hkv, 1, -1)
        key_mask = (kp <= q_pos.view(1, 1, 1, 1)) & (kp < n_valid)
        if exclude_window is not None:
            key_mask &= (q_pos.view(1, 1, 1, 1) - kp) >= exclude_window
        kp = torch.zeros(kp.shape[-1], dtype=torch.long, device=q.device)
        return attend(q, k_sel, v_sel, q_pos, kp, scale=scale, sink=sink, key_mask=key_mask)
    for t0 in range(0, t, rows):
        t1 = min(t, t0 + rows)
        sel = torch.zeros(b, hkv, t1 - t0, nb, dtype=torch.bool, device=q.device)
        sel.scatter_(-1, blocks[:, :, t0:t1], True)
        union = sel.any(2)  # [B, Hkv, nb]
        u = int(union.sum(-1).max())
        ids = (union.float() + torch.arange(nb, device=q.device) * 1e-6).topk(u, -1).indices.sort(-1).values
        allowed = sel.gather(-1, ids[:, :, None, :].expand(-1, -1, t1 - t0, -1))  # [B, Hkv, Tc, U]
        kg = kb[bi, hi, ids].reshape(b, hkv, u * block_size, dk)  # contiguous 64-token blocks
        vg = vb[bi, hi, ids].reshape(b, hkv, u * block_size, v.shape[-1])
        kp = (ids[..., None] * block_size + offs).reshape(b, hkv, 1, u * block_size)
        qp = q_pos[t0:t1].view(1, 1, -1, 1)
        mask = allowed.repeat_interleave(block_size, -1) & (kp <= qp) & (kp < n_valid)
        if exclude_window is not None:
            mask &= (qp - kp) >= exclude_window
        res = attend(q[:, :, t0:t1], kg, vg, q_pos[t0:t1], torch.zeros(u * block_size, dtype=torch.long,
                     device=q.device), scale=scale, sink=sink, key_mask=mask)
        outs.append(res.out)
        lses.append(res.lse)
    return AttentionOutput(torch.cat(outs, 2), torch.cat(lses, 2))


@dataclass
class GatheredBlocks:
    """The selected blocks of a full layer's KV for one decode step, shared by every sparse layer reading them."""

    keys: torch.Tensor  # [B, Hkv, K*block_size, Dk], whole contiguous blocks
    values: torch.Tensor  # [B, Hkv, K*block_size, Dv]
    bias: torch.Tensor  # [B, Hkv, 1, K*block_size]: 0 for a visible key, -inf otherwise


def gather_blocks(
    k: torch.Tensor,
    v: torch.Tensor,
    blocks: torch.Tensor,
    q_pos: int,
    n_valid: int,
    *,
    block_size: int,
    exclude_window: int | None = None,
) -> GatheredBlocks:
    """Copy the ``blocks`` (``[B, Hkv, 1, K]``) of one decode query out of ``k``/``v`` (block-multiple buffers).

    One ``index_select`` per tensor over ``[B*Hkv*nb, block_size, D]`` rows: every block is a contiguous
    ``block_size x D`` slab, so the gather is a handful of memcpys. Keys past ``n_valid``, after the query or
    (with ``exclude_window``) inside its window get a ``-inf`` bias.
    """
    b, hkv, cap, dk = k.shape
    if cap % block_size:
        raise ValueError(f"KV buffer length {cap} is not a multiple of the block size {block_size}")
    nb = cap // block_size
    ids = blocks[:, :, 0]  # [B, Hkv, K]
    n_sel = ids.shape[-1]
    base = (torch.arange(b * hkv, device=k.device) * nb).view(b, hkv, 1)
    flat = (ids + base).reshape(-1)
    keys = k.reshape(b * hkv * nb, block_size, dk).index_select(0, flat).view(b, hkv, n_sel * block_size, dk)
    values = v.reshape(b * hkv * nb, block_size, v.shape[-1]).index_select(0, flat)
    values = values.view(b, hkv, n_sel * block_size, v.shape[-1])
    kp = (ids[..., None] * block_size + torch.arange(block_size, device=k.device)).view(b, hkv, 1, -1)
    last = min(q_pos, n_valid - 1)
    if exclude_window is not None:
        last = min(last, q_pos - exclude_window)
    bias = torch.zeros(kp.shape, dtype=k.dtype, device=k.device).masked_fill_(kp > last, NEG_INF)
    return GatheredBlocks(keys, values, bias)


def attend_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    *,
    scale: float,
    sink: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    n_valid: int | None = None,
    block_size: int | None = None,
) -> AttentionOutput:
    """One decode query per head over every key of ``k`` (the decode fast path: no position masks, few ops).

    ``bias`` (broadcast to ``[B, Hkv, 1, S]``) masks keys with ``-inf``; ``n_valid`` masks the tail
    ``k[:, :, n_valid:]`` of a preallocated buffer. With ``block_size`` (``S`` a multiple of it) the block-max
    probabilities come from the same logits and the row's final log-denominator: ``exp(max_block(a) - lse)``,
    max over the group's heads, ``[B, Hkv, 1, nb]``. ``v=None`` computes only the scores. On CPU, without block
    scores, the fused flash kernel runs and ``lse`` is not returned.
    """
    b, hq, t, dk = q.shape
    if t != 1:
        raise ValueError(f"attend_decode takes one query per head, got {t}")
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    if v is not None and not block_size and n_valid is None and q.device.type == "cpu" and dk == v.shape[-1]:
        # PyTorch's fused CPU kernel, the G query heads of a KV group as G query rows of one head (GQA without
        # repeating K/V); the sink rescales its output through the log-sum-exp: o * sigmoid(lse - sink). A row
        # with no visible key comes back as zeros, which is what it should attend to.
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.view(b, hkv, g, dk), k, v, 0.0, False, attn_mask=bias, scale=scale
        )
        if bias is not None:  # the fused kernel reports 0, not -inf, for a row that sees no key
            lse = lse.masked_fill(~torch.isfinite(bias).any(-1).expand(lse.shape), NEG_INF)
        if sink is not None:
            s_ = sink.view(1, hkv, g) if sink.dtype == lse.dtype else sink.to(lse.dtype).view(1, hkv, g)
            out = out.mul_(torch.sigmoid(lse - s_).unsqueeze_(-1))
            lse = torch.logaddexp(lse, s_)
        return AttentionOutput(out.view(b, hq, 1, v.shape[-1]), lse.reshape(b, hq, 1))
    logits = torch.matmul(q.view(b, hkv, g, dk), k.transpose(-1, -2)).mul_(scale)  # [B, Hkv, G, S]
    if bias is not None:
        logits.add_(bias)
    if n_valid is not None and n_valid < s:
        logits[..., n_valid:] = NEG_INF
    lse = torch.logsumexp(logits, -1, keepdim=True)
    if sink is not None:
        lse = torch.logaddexp(lse, sink.to(lse.dtype).view(1, hkv, g, 1))
    else:
        lse = lse.clamp_min(torch.finfo(lse.dtype).min)  # a row with no visible key attends to nothing
    out = None
    if v is not None:
        out = torch.matmul(torch.exp(logits - lse), v).view(b, hq, 1, v.shape[-1])
    block_max = None
    if block_size:
        nb = s // block_size
        blk = logits.view(b, hkv, g, nb, block_size).amax(-1).sub_(lse).exp_()
        block_max = blk.amax(2, keepdim=True)  # [B, Hkv, 1, nb]
    return AttentionOutput(out, lse.view(b, hq, 1), block_max)


# ----------------------------------------------------------------------------------------------------------
# Eager references: dense, unchunked, the sink as an extra key column with a zero value.


def _repeat_kv(x: torch.Tensor, g: int) -> torch.Tensor:
    return x.repeat_interleave(g, dim=1)


def attend_eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    scale: float | None = None,
    window: int | None = None,
    sink: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention; returns ``(out [B,Hq,T,Dv], probs [B,Hq,T,S])``."""
    g = _check_shapes(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kk, vv = _repeat_kv(k, g), _repeat_kv(v, g)
    logits = q @ kk.transpose(-1, -2) * scale
    mask = visibility(q_pos, k_pos, window)[None, None]
    if key_mask is not None:
        mask = mask & _repeat_kv(key_mask, g)
    logits = logits.masked_fill(~mask, NEG_INF)
    if sink is not None:
        col = sink.to(q.dtype).view(1, -1, 1, 1).expand(*logits.shape[:-1], 1)
        logits = torch.cat([logits, col], -1)
        vv = torch.cat([vv, vv.new_zeros(*vv.shape[:2], 1, vv.shape[-1])], 2)
    probs = torch.softmax(logits, -1).nan_to_num(0.0)
    out = probs @ vv
    return out, probs[..., : k.shape[2]]


def block_max_eager(probs: torch.Tensor, n_kv_heads: int, block_size: int) -> torch.Tensor:
    """``attn_probs.view(..., nb, B).amax(-1)``, then the max over each KV group's query heads."""
    b, hq, t, s = probs.shape
    nb = math.ceil(s / block_size)
    p = F.pad(probs, (0, nb * block_size - s)).view(b, hq, t, nb, block_size).amax(-1)
    return p.view(b, n_kv_heads, hq // n_kv_heads, t, nb).amax(2)


def blocks_to_key_mask(blocks: torch.Tensor, n_keys: int, block_size: int) -> torch.Tensor:
    """``[B, Hkv, T, K]`` block ids -> ``[B, Hkv, T, n_keys]`` bool key mask."""
    nb = math.ceil(n_keys / block_size)
    sel = torch.zeros(*blocks.shape[:-1], nb, dtype=torch.bool, device=blocks.device)
    sel.scatter_(-1, blocks, True)
    return sel.repeat_interleave(block_size, -1)[..., :n_keys]


def attend_blocks_eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    n_valid: int,
    blocks: torch.Tensor,
    *,
    block_size: int,
    scale: float | None = None,
    sink: torch.Tensor | None = None,
    exclude_window: int | None = None,
) -> torch.Tensor:
    """Reference for :func:`attend_blocks`: dense attention with a token mask built from the blocks."""
    k, v = k[:, :, :n_valid], v[:, :, :n_valid]
    key_mask = blocks_to_key_mask(blocks, n_valid, block_size)
    if exclude_window is not None:
        kp = torch.arange(n_valid, device=q.device)
        key_mask = key_mask & ((q_pos[:, None] - kp[None, :]) >= exclude_window)
    k_pos = torch.arange(n_valid, device=q.device)
    return attend_eager(q, k, v, q_pos, k_pos, scale=scale, sink=sink, key_mask=key_mask)[0]
