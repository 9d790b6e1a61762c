"""Fit the sparse layers' adapters so the borrowed K/V are read in the layer's own terms (training-free).

A sparse (``S``/``R``) layer of a converted pretrained model reads another layer's keys and values, which live
in that layer's space: the layer's own queries score them at random, so its long-range heads (those that
retrieve a pass key from far back) go blind whatever blocks are selected, and the gates fitted by
:mod:`.calibrate` shut the sparse branch. With ``AttentionConfig.sparse_adapter`` each sparse layer gets

- ``q_sparse``: a query projection for the borrowed keys, fitted so that the layer's attention over *all* its
  keys - its own within the window, the borrowed ones beyond - matches the original layer's attention
  distribution, head by head and query by query (forward KL, Adam, on the original model's hidden states);
- ``v_sparse``: per head, the least-squares map of the borrowed values onto the layer's own values;
- branches merged by their share of the joint softmax (see ``EfficientAttention._combine``), gates open.

The KV cache is unchanged; the layer keeps its own q/k/v/o.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from .kernels import NEG_INF
from .modules import EfficientAttention

log = logging.getLogger(__name__)

GATE_OPEN = 8.0  # sigmoid(8) = 0.9997: with an adapter the joint-softmax shares do the mixing
TAIL_WEIGHT = 32.0  # a retrieval answer row counts this many ordinary rows


@torch.no_grad()
def _init_value_map(m: EfficientAttention, v_src: list[torch.Tensor], v_own: list[torch.Tensor]) -> None:
    """``v_sparse`` of each head = ridge least-squares map of the source group's values onto the layer's own."""
    g = m.num_heads // m.num_kv_heads
    for kv in range(m.num_kv_heads):
        x = torch.cat([v[:, kv].reshape(-1, v.shape[-1]) for v in v_src])  # [N, Dv]
        y = torch.cat([v[:, kv].reshape(-1, v.shape[-1]) for v in v_own])
        gram = x.T @ x
        ridge = 1e-4 * gram.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        m.v_sparse[kv * g : (kv + 1) * g].copy_(torch.linalg.solve(gram + ridge, x.T @ y))


def _far_kl(m: EfficientAttention, x, rope, q, k, kf, window: int, *, rows: torch.Tensor | None = None,
            weights: torch.Tensor | None = None, chunk: int = 256, backward: bool = False, scale: float = 1.0,
            per_head: bool = False):
    """Weighted mean forward KL (original || converted) of the heads' attention rows at the query positions
    ``rows`` (all by default): within the window the converted layer has the original logits, beyond it
    ``q_sparse`` scores the borrowed keys. ``backward`` accumulates ``scale`` x its gradient."""
    b, h, t, _ = q.shape
    g = h // k.shape[1]
    own = k.repeat_interleave(g, 1)
    src = kf.repeat_interleave(g, 1)
    kp = torch.arange(t, device=q.device)
    rows = kp if rows is None else rows.to(q.device)
    weights = torch.ones(rows.numel(), device=q.device) if weights is None else weights.to(q.device, q.dtype)
    with torch.set_grad_enabled(backward):
        qs = m._sparse_query(x[:, rows], (rope[0][:, rows], rope[1][:, rows]), None)
    total = torch.zeros(h) if per_head else 0.0
    n, wsum = rows.numel(), float(weights.sum())
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        qp = rows[c0:c1, None]
        causal = kp[None] <= qp
        near = (qp - kp[None]) < window
        with torch.no_grad():
            a = (q[:, :, rows[c0:c1]] @ own.transpose(-1, -2)).mul_(m.scaling).masked_fill_(~causal, NEG_INF)
            logp = torch.log_softmax(a, -1)
            p = logp.exp()
        with torch.set_grad_enabled(backward):
            far = (qs[:, :, c0:c1] @ src.transpose(-1, -2)) * m.scaling
            mixed = torch.where(near, a, far).masked_fill(~causal, NEG_INF)
            logq = torch.log_softmax(mixed, -1)
            kl = (p * (logp - logq).masked_fill(~causal, 0.0)).sum(-1) * weights[c0:c1]  # [B, H, Tc]
            if per_head:
                total = total + kl.sum((0, 2)).detach().cpu() / (b * wsum)
                continue
            kl = kl.sum() / (b * h * wsum)
            if backward:
                (kl * scale).backward(retain_graph=c1 < n)
        total += float(kl.detach())
    return total


@torch.no_grad()
def _init_query(m: EfficientAttention, source: EfficientAttention, data, window: int) -> list[int]:
    """``q_sparse`` of each head := the source layer's query projection of the head of the same KV group whose
    attention over the borrowed keys is closest (KL) to this head's; returns the chosen source heads."""
    g = m.num_heads // m.num_kv_heads
    w_src = source.q_proj.weight.view(m.num_heads, m.head_dim, -1)
    b_src = None if source.q_proj.bias is None else source.q_proj.bias.view(m.num_heads, m.head_dim)
    scores = []
    for j in range(g):  # candidate j of every group, all heads at once
        pick = [(h // g) * g + j for h in range(m.num_heads)]
        m.q_sparse.weight.copy_(w_src[pick].reshape(m.num_heads * m.head_dim, -1))
        m.q_sparse.bias.copy_(0.0 if b_src is None else b_src[pick].reshape(-1))
        scores.append(sum(_far_kl(m, *d[:5], window, rows=d[5], weights=d[6], per_head=True) for d in data))
    best = torch.stack(scores).argmin(0).tolist()
    pick = [(h // g) * g + best[h] for h in range(m.num_heads)]
    m.q_sparse.weight.copy_(w_src[pick].reshape(m.num_heads * m.head_dim, -1))
    m.q_sparse.bias.copy_(0.0 if b_src is None else b_src[pick].reshape(-1))
    return pick


def _rows(t: int, window: int, n: int, tail: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random query positions past the window plus the last ``tail`` (weighted up: the retrieval rows)."""
    rows = torch.randperm(max(1, t - window), generator=gen)[:n] + min(window, t - 1)
    weights = torch.ones(rows.numel())
    if tail:
        rows = torch.cat([rows, torch.arange(t - tail, t)])
        weights = torch.cat([weights, torch.full((tail,), TAIL_WEIGHT)])
    return rows, weights


@torch.no_grad()
def _fit_gates(m: EfficientAttention, mods: list[EfficientAttention], data, cfg) -> float:
    """Per head: constant gates by least squares against the original head outputs (as :mod:`.calibrate`
    does), once with the branches weighted by their joint-softmax shares (``merge``) and once as the plain gated
    sum with the calibrated window sink; each head keeps whichever reproduces the original better (retrieval
    heads need the query-dependent shares, heads whose borrowed reads stay rough do better plain). Returns the
    mean relative output error."""
    from .calibrate import _logit
    from .kernels import attend, attend_blocks, attend_window, select_blocks

    skip = cfg.window if cfg.sparse_skip_window else None
    sink_plain = m.sink_swa.clone()  # the calibrated window sink, kept by the heads that stay plain
    stats = {"merge": [0.0] * 6, "plain": [0.0] * 6}
    for x, rope, q, k, kf, _, _, v, vf, _, sel_q in data:
        t = q.shape[2]
        pos = torch.arange(t, device=q.device)
        full = attend(q, k, v, pos, pos, scale=m.scaling).out
        sq = m._sparse_query(x, rope, q)
        # the blocks the selecting layer (the full layer, or an R layer) picks at inference
        scores = attend(sel_q, kf, None, pos, pos, scale=m.scaling, block_size=cfg.block_size).block_max
        blocks = select_blocks(scores, cfg.top_k, pos, cfg.block_size, skip)
        far = attend_blocks(sq, kf, vf, pos, t, blocks, block_size=cfg.block_size, scale=m.scaling,
                            sink=m.sink_sparse, exclude_window=skip)
        mapped = m._map_values(far.out)
        dims = (0, 2, 3)
        for mode, sink in (("merge", m.sink_sparse.new_full(m.sink_swa.shape, -60.0)), ("plain", sink_plain)):
            near, lse = attend_window(q, None, k, v, pos, window=cfg.window, scale=m.scaling, sink=sink,
                                      return_lse=True)
            if mode == "merge":
                share = torch.sigmoid(far.lse - lse).unsqueeze(-1)
                a, b = (1 - share) * near, share * mapped
            else:
                a, b = near, mapped
            st = stats[mode]
            for j, val in enumerate((a * a, a * b, b * b, a * full, b * full, full * full)):
                st[j] = st[j] + val.sum(dims)
    best = {}
    for mode, (aa, ab, bb, ao, bo, oo) in stats.items():
        det = (aa * bb - ab * ab).clamp_min(1e-12)
        g_a = ((bb * ao - ab * bo) / det).clamp(1e-3, 1 - 1e-3)
        g_b = ((aa * bo - ab * ao) / det).clamp(1e-3, 1 - 1e-3)
        err = g_a**2 * aa + g_b**2 * bb + 2 * g_a * g_b * ab - 2 * g_a * ao - 2 * g_b * bo + oo
        best[mode] = (err / oo.clamp_min(1e-12), g_a, g_b)
    merge = best["merge"][0] <= best["plain"][0]  # per head, whichever reproduces the original better
    pick = lambda j: torch.where(merge, best["merge"][j], best["plain"][j])  # noqa: E731
    m.sparse_merge.copy_(merge.to(m.sparse_merge.dtype))
    m.sink_swa.copy_(torch.where(merge, torch.full_like(sink_plain, -60.0), sink_plain))
    m.gate_swa.bias.copy_(_logit(pick(1)))
    m.gate_sparse.bias.copy_(_logit(pick(2)))
    return float(pick(0).mean())


def reconstruct(
    base: nn.Module,
    captures: list[tuple[list[torch.Tensor], tuple]],
    *,
    tails: list[int] | None = None,
    steps: int = 40,
    rows: int = 128,
    lr: float = 3e-3,
    layers: list[int] | None = None,
    seed: int = 0,
    fit_gates: bool = True,
) -> dict[int, tuple[float, float]]:
    """Fit the adapters of every sparse layer (or of ``layers``); returns ``{layer: (KL before, KL after)}``.

    ``captures``: per calibration sequence, the original model's attention inputs and RoPE tables
    (:func:`.calibrate.capture_attention_inputs`, taken before conversion); ``tails[i]``: how many last positions
    of sequence ``i`` are retrieval queries (an answer that copies from far back), weighted up. Each step
    scores ``rows`` random query positions per sequence (plus the tails), Adam, ``steps`` steps per layer.
    """
    mods: list[EfficientAttention] = [layer.self_attn for layer in base.layers]
    cfg = mods[0].attn_config
    tails = tails or [0] * len(captures)
    gen = torch.Generator().manual_seed(seed)
    todo = [i for i, m in enumerate(mods)
            if m.kind in "SR" and m.has_sparse_adapter and (layers is None or i in layers)]
    report: dict[int, tuple[float, float]] = {}
    for i in todo:
        m = mods[i]
        t0 = time.perf_counter()
        with torch.no_grad():
            data = []
            for (inputs, rope), tail in zip(captures, tails):
                q, k, v = m._project(inputs[i], rope)
                _, kf, vf = mods[m.kv_source]._project(inputs[m.kv_source], rope)
                fixed = _rows(q.shape[2], cfg.window, rows, tail, torch.Generator().manual_seed(seed + 1))
                sel = mods[m.selection_source]
                sel_q = (sel._project(inputs[m.selection_source], rope)[0] if sel.kind == "F"
                         else sel._sparse_query(inputs[m.selection_source], rope, None))
                data.append((inputs[i], rope, q, k, kf, *fixed, v, vf, tail, sel_q))
            _init_value_map(m, [d[8] for d in data], [d[7] for d in data])
            _init_query(m, mods[m.kv_source], data, cfg.window)
            sink_calibrated = m.sink_swa.clone()
            m.sink_swa.fill_(-60.0)
            m.sink_sparse.fill_(-60.0)
            for gate in (m.gate_swa, m.gate_sparse):
                gate.weight.zero_()
                gate.bias.fill_(GATE_OPEN)
        params = list(m.q_sparse.parameters())
        everything = list(m.parameters())
        saved = [p.requires_grad for p in everything]
        for p in everything:
            p.requires_grad_(any(p is t for t in params))
        opt = torch.optim.Adam(params, lr=lr)

        # the fixed rows give a comparable before / after
        before = sum(_far_kl(m, *d[:5], cfg.window, rows=d[5], weights=d[6]) for d in data) / len(data)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            for d in data:
                r, w = _rows(d[2].shape[2], cfg.window, rows, d[9], gen)
                _far_kl(m, *d[:5], cfg.window, rows=r, weights=w, backward=True, scale=1.0 / len(data))
            opt.step()
        after = sum(_far_kl(m, *d[:5], cfg.window, rows=d[5], weights=d[6]) for d in data) / len(data)
        for p, r in zip(everything, saved):
            p.requires_grad_(r)
            p.grad = None
        err = float("nan")
        if fit_gates:
            with torch.no_grad():
                m.sink_swa.copy_(sink_calibrated)
            err = _fit_gates(m, mods, data, cfg)
        report[i] = (before, after)
        log.info("layer %d (%s): attention KL to the original %.3f -> %.3f, output error %.3f (%.0f s)", i, m.kind,
                 before, after, err, time.perf_counter() - t0)
    return report


def fit_sparse_adapters(
    model: nn.Module,
    teacher: nn.Module,
    sequences: list[torch.Tensor],
    *,
    tails: list[int] | None = None,
    **options,
) -> dict[int, tuple[float, float]]:
    """:func:`reconstruct` on ``sequences`` (``[1, T]`` token ids each) run through ``teacher`` (the original,
    unconverted model); ``model`` was converted with ``sparse_adapter=True``."""
    from .calibrate import capture_attention_inputs
    from .introspect import find_base_model

    base, tbase = find_base_model(model), find_base_model(teacher)
    if getattr(tbase, "_efficient_attention_config", None) is not None:
        raise ValueError("the teacher must be the original (unconverted) model")
    captures = [capture_attention_inputs(tbase, ids) for ids in sequences]
    return reconstruct(base, captures, tails=tails, **options)


_NEEDLES = (
    ("The secret number is {key}. Keep it in mind: {key}.", "What was the secret number? The secret number is"),
    ("Note: the access code is {key}. The access code is {key}.", "Recall the access code. The access code is"),
    ("Important: the pass key is {key}. Remember it. {key} is the pass key.", "The pass key is"),
    ("The magic word of today is {key}.", "Question: what is the magic word of today? Answer: the magic word is"),
)


def retrieval_sequences(tokenizer, text: str, length: int, n: int, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """A synthetic retrieval curriculum over ``text`` (use training text): ``n`` sequences of about ``length``
    tokens, a fact with a random 4-6 digit key hidden at a random depth, a question at the end and the answer;
    returns ``(ids [1, T], tail)`` where the last ``tail`` positions are the ones that must retrieve the key."""
    import random

    rng = random.Random(seed)
    filler = tokenizer(text, add_special_tokens=False).input_ids
    out = []
    for _ in range(n):
        key = str(rng.randint(10 ** (d := rng.randint(3, 5)), 10 ** (d + 1) - 1))
        fact, question = rng.choice(_NEEDLES)
        needle = tokenizer(f"\n\n{fact.format(key=key)}\n\n", add_special_tokens=False).input_ids
        ask = tokenizer(f"\n\n{question}", add_special_tokens=False).input_ids
        answer = tokenizer(f" {key}.", add_special_tokens=False).input_ids
        budget = length - len(needle) - len(ask) - len(answer)
        if budget < 16 or len(filler) <= budget:
            raise ValueError(f"length {length} leaves no room for filler, or the text is shorter than that")
        start = rng.randint(0, len(filler) - budget - 1)
        body = filler[start : start + budget]
        depth = rng.randint(int(0.1 * budget), int(0.9 * budget))
        ids = body[:depth] + needle + body[depth:] + ask + answer
        out.append((torch.tensor([ids]), len(answer) + 1))
    return out
