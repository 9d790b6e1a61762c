"""Training-free fit of the new sinks and gates, per head, against the original layer's output.

For each converted layer the original model's attention input on a calibration text is replayed through the
layer's own projections. With the window branch's log-denominator ``lse_w`` and its sink-free output
``o_w``, a sink ``s`` scales that output by ``sigmoid(lse_w - s)`` (the share of mass the sink takes), so:

- ``W`` layers: ``sink = argmin_s || sigmoid(lse_w - s) o_w - o_full ||^2`` over a grid, per head;
- ``S``/``R`` layers: for each ``s`` on the grid, the two constant gates ``(g_swa, g_sparse)`` solve a 2x2 least
  squares problem ``g_swa * a_s + g_sparse * o_sparse ~ o_full`` (clamped into (0, 1)); the best ``s`` wins.
  Gate weights start at zero, their biases at ``logit(g)``, so healing starts from this fit.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .kernels import attend, attend_blocks, select_blocks
from .modules import EfficientAttention

log = logging.getLogger(__name__)

SINK_GRID = torch.cat([torch.tensor([-60.0]), torch.linspace(-4.0, 24.0, 57)])


@torch.no_grad()
def capture_attention_inputs(base: nn.Module, input_ids: torch.Tensor) -> tuple[list[torch.Tensor], tuple]:
    """Run the (unconverted) base model once; return each layer's attention input and the RoPE tables."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"calibration_ids must be [1, T] token ids, got shape {tuple(input_ids.shape)}")
    inputs: list[torch.Tensor] = [None] * len(base.layers)
    rope: list = [None]

    def hook(idx):
        def fn(module, args, kwargs):
            inputs[idx] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            rope[0] = kwargs.get("position_embeddings")

        return fn

    handles = [
        layer.self_attn.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(base.layers)
    ]
    try:
        base(input_ids=input_ids.to(base.embed_tokens.weight.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return inputs, rope[0]


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-3, 1 - 1e-3)
    return torch.log(p) - torch.log1p(-p)


@torch.no_grad()
def calibrate(base: nn.Module, inputs: list[torch.Tensor], rope: tuple) -> None:
    """Fit sinks and gate biases of every converted layer of ``base`` (see the module docstring)."""
    mods: list[EfficientAttention] = [layer.self_attn for layer in base.layers]
    cfg = mods[0].attn_config
    qkv = [m._project(x, rope) for m, x in zip(mods, inputs)]
    t = inputs[0].shape[1]
    pos = torch.arange(t, device=inputs[0].device)
    skip = cfg.window if cfg.sparse_skip_window else None
    selections: dict[int, torch.Tensor] = {}
    for i, m in enumerate(mods):
        q, k, v = qkv[i]
        if m.kind == "F" and m.emits_selection:
            scores = attend(q, k, None, pos, pos, scale=m.scaling, block_size=cfg.block_size).block_max
            selections[i] = select_blocks(scores, cfg.top_k, pos, cfg.block_size, skip)
        if m.kind == "F":
            continue
        full = attend(q, k, v, pos, pos, scale=m.scaling).out  # what the original layer computed
        no_sink = torch.full((m.num_heads,), float("-inf"), dtype=q.dtype, device=q.device)
        win = attend(q, k, v, pos, pos, scale=m.scaling, window=cfg.window, sink=no_sink)
        grid = SINK_GRID.to(q.device, q.dtype)
        share = torch.sigmoid(win.lse[None] - grid.view(-1, 1, 1, 1))  # [G, B, H, T]: c_t(s)
        # every error below is a sum over tokens of per-token dot products: no [G, ..., D] tensors
        ww = (win.out * win.out).sum(-1)[None]  # |o_w|^2
        wo = (win.out * full).sum(-1)[None]  # <o_w, o>
        oo = (full * full).sum((0, 2, 3))  # [H]
        dims = (1, 3)
        aa, ao = (share**2 * ww).sum(dims), (share * wo).sum(dims)  # [G, H]
        if m.kind == "W":
            err = aa - 2 * ao + oo
            m.sink.copy_(grid[err.argmin(0)])
            continue
        kf, vf = qkv[m.kv_source][1], qkv[m.kv_source][2]
        if m.kind == "R":
            scores = attend(q, kf, None, pos, pos, scale=m.scaling, block_size=cfg.block_size).block_max
            selections[i] = select_blocks(scores, cfg.top_k, pos, cfg.block_size, skip)
        blocks = selections[m.selection_source]
        sp = attend_blocks(q, kf, vf, pos, t, blocks, block_size=cfg.block_size, scale=m.scaling,
                           sink=m.sink_sparse, exclude_window=skip).out
        ab = (share * (win.out * sp).sum(-1)[None]).sum(dims)
        bb = (sp * sp).sum((0, 2, 3))[None]
        bo = (sp * full).sum((0, 2, 3))[None]
        det = (aa * bb - ab * ab).clamp_min(1e-12)
        g_a = ((bb * ao - ab * bo) / det).clamp(1e-3, 1 - 1e-3)
        g_b = ((aa * bo - ab * ao) / det).clamp(1e-3, 1 - 1e-3)
        err = g_a**2 * aa + g_b**2 * bb + 2 * g_a * g_b * ab - 2 * g_a * ao - 2 * g_b * bo + oo
        best = err.argmin(0)  # [H]
        heads = torch.arange(m.num_heads, device=q.device)
        m.sink_swa.copy_(grid[best])
        m.gate_swa.weight.zero_()
        m.gate_sparse.weight.zero_()
        m.gate_swa.bias.copy_(_logit(g_a[best, heads]))
        m.gate_sparse.bias.copy_(_logit(g_b[best, heads]))
        rel = (err[best, heads] / oo.clamp_min(1e-12)).mean()
        log.info("layer %d (%s): relative output error after calibration %.3f", i, m.kind, float(rel))
