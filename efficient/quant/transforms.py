"""Activation-aware equivalent transforms (AWQ-style channel scaling) applied before quantization.

A linear layer fed by an RMSNorm (or by another linear through an elementwise product) computes the same
function if an input channel is divided by ``s`` upstream and the matching weight column multiplied by ``s``.
Scaling up the columns that see large activations gives them finer steps inside their quantization group at
the cost of the other columns; the factor per channel is ``rms(x)^alpha`` with ``alpha`` searched per
scaling point on the calibration Hessian (output error ``tr(dW H dW^T)``, summed over the layers that share
the input). The float model is unchanged (exact up to fp32 rounding), so the packed format and the kernels
are the same and there is no runtime cost.

Scaling points of a Llama-style decoder layer (the transformers layout: ``input_layernorm`` ->
``self_attn.{q,k,v}_proj``, ``v_proj`` -> ``o_proj`` through the attention mix, ``post_attention_layernorm``
-> ``mlp.{gate,up}_proj``, ``up_proj`` -> ``down_proj`` through the gated product). The ``v -> o`` point
respects grouped-query attention: one factor per key/value channel, shared by the query heads that read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from efficient.quant.formats import Scheme, SymQuantizer, UniformQuantizer, pad_columns, padded_k, parse_scheme
from efficient.quant.gptq import collect_hessians

log = logging.getLogger(__name__)

ALPHAS = tuple(i / 10 for i in range(10))  # 0 (no scaling) included: the search never picks worse than none


@dataclass
class ScalePoint:
    """Where a per-channel factor ``s`` is folded: ``prev`` rows (or norm weight) divided by ``s``, the
    columns of every layer of ``layers`` multiplied by ``s`` (expanded by ``expand`` for GQA)."""

    name: str
    prev: nn.Module  # RMSNorm (weight [K]) or nn.Linear (rows [K])
    layers: list[tuple[str, nn.Linear]]
    expand: int = 1  # o_proj: every kv channel feeds `expand` query heads' columns
    head_dim: int = 0


def scale_points(model: nn.Module) -> list[ScalePoint]:
    """The scaling points of every Llama-style decoder layer of ``model`` (empty if none is recognized)."""
    out = []
    for name, mod in model.named_modules():
        attn, mlp = getattr(mod, "self_attn", None), getattr(mod, "mlp", None)
        ln1, ln2 = getattr(mod, "input_layernorm", None), getattr(mod, "post_attention_layernorm", None)
        if attn is None or mlp is None or ln1 is None or ln2 is None:
            continue
        qkv = [getattr(attn, k, None) for k in ("q_proj", "k_proj", "v_proj", "o_proj")]
        gud = [getattr(mlp, k, None) for k in ("gate_proj", "up_proj", "down_proj")]
        if not all(isinstance(m, nn.Linear) for m in qkv + gud):
            continue
        q, k, v, o = qkv
        gate, up, down = gud
        p = f"{name}."
        out.append(ScalePoint(p + "input_layernorm", ln1, [(p + "self_attn.q_proj", q), (p + "self_attn.k_proj", k),
                                                           (p + "self_attn.v_proj", v)]))
        cfg = getattr(model, "config", None)
        heads = getattr(cfg, "num_attention_heads", None)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        if heads and o.in_features % heads == 0 and v.out_features == kv_heads * (o.in_features // heads):
            hd = o.in_features // heads
            out.append(ScalePoint(p + "self_attn.v_proj", v, [(p + "self_attn.o_proj", o)],
                                  expand=heads // kv_heads, head_dim=hd))
        out.append(ScalePoint(p + "post_attention_layernorm", ln2, [(p + "mlp.gate_proj", gate),
                                                                   (p + "mlp.up_proj", up)]))
        out.append(ScalePoint(p + "mlp.up_proj", up, [(p + "mlp.down_proj", down)]))
    return out


def _expand(s: torch.Tensor, pt: ScalePoint) -> torch.Tensor:
    """A factor per ``prev`` output channel -> a factor per column of the consuming layers."""
    if pt.expand == 1:
        return s
    kv = s.view(-1, pt.head_dim)  # [kv_heads, hd] -> every query head of the group reads its kv head
    return kv.repeat_interleave(pt.expand, dim=0).reshape(-1)


def _reduce(x: torch.Tensor, pt: ScalePoint) -> torch.Tensor:
    """Per-column statistic -> per ``prev`` channel (mean over the query heads sharing a kv channel)."""
    if pt.expand == 1:
        return x
    return x.view(-1, pt.expand, pt.head_dim).mean(1).reshape(-1)


def _rtn_error(scheme: Scheme, w: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """tr(dW H dW^T) of plain min-max round-to-nearest (the search's cheap proxy for the final quantizer)."""
    N, K = w.shape
    kp = padded_k(scheme, K)
    g = scheme.group_size
    wg = pad_columns(w, kp).view(N, kp // g, g)
    if scheme.kind == "sym":  # Q4_0's scale: the group's extreme at -8
        ext = torch.gather(wg, -1, wg.abs().argmax(-1, keepdim=True)).squeeze(-1)
        _, dq = SymQuantizer(scheme.bits).qdq(wg, ((ext / -8).half().to(wg.dtype),))
    else:
        qz = UniformQuantizer(scheme.bits)
        _, dq = qz.qdq(wg, qz.params_for(wg.amin(-1), wg.amax(-1)))
    dw = dq.view(N, kp)[:, :K] - w
    return ((dw @ H) * dw).sum()


@torch.no_grad()
def apply_scales(pt: ScalePoint, s: torch.Tensor) -> None:
    """Fold ``s`` (per ``prev`` output channel) into the model: exact in float."""
    if isinstance(pt.prev, nn.Linear):
        pt.prev.weight.div_(s.unsqueeze(1).to(pt.prev.weight.dtype))
        if pt.prev.bias is not None:
            pt.prev.bias.div_(s.to(pt.prev.bias.dtype))
    else:
        pt.prev.weight.div_(s.to(pt.prev.weight.dtype))
    cols = _expand(s, pt)
    for _, lin in pt.layers:
        lin.weight.mul_(cols.unsqueeze(0).to(lin.weight.dtype))


@torch.no_grad()
def search_scales(pt: ScalePoint, H: torch.Tensor, scheme: Scheme,
                  alphas: tuple[float, ...] = ALPHAS) -> tuple[torch.Tensor, float, float]:
    """The factor per ``prev`` channel minimizing the summed output error; returns (s, alpha, error ratio)."""
    H = H.double()
    rms = _reduce(H.diagonal().clamp_min(0).sqrt(), pt).clamp_min(1e-8)
    ws = [lin.weight.detach().double() for _, lin in pt.layers]
    best = (None, 0.0, float("inf"))
    base = None
    for a in alphas:
        s = rms**a
        s = s / (s.max() * s.min()).sqrt()  # centred in log space: keeps the weights' magnitudes
        c = _expand(s, pt)
        Hs = H / c.unsqueeze(0) / c.unsqueeze(1)  # the Hessian of the scaled input x / s
        err = sum(float(_rtn_error(scheme, w * c.unsqueeze(0), Hs)) for w in ws)
        if base is None:
            base = err
        if err < best[2]:
            best = (s.float(), a, err)
    return best[0], best[1], best[2] / max(base, 1e-30)


def awq_transform(model: nn.Module, scheme: str | Scheme, calib_fn: Callable[[nn.Module], None],
                  skip: tuple[str, ...] = ()) -> list[tuple[str, float, float]]:
    """Search and fold activation-aware scales into every recognized scaling point of ``model`` (in place).

    ``scheme`` must be uniform (``w<bits>g<group>`` or symmetric ``w4g<group>s``): the search measures that
    format's rounding error.
    Points whose consuming layers are named in ``skip`` are left alone (they are not quantized).
    Returns ``(point, alpha, error ratio vs no scaling)`` per point.
    """
    sch = scheme if isinstance(scheme, Scheme) else parse_scheme(scheme)
    if sch.kind not in ("uniform", "sym"):
        raise ValueError(f"{sch.name}: the activation-aware transform supports the uniform w<bits>g<group> and "
                         "w4g<group>s formats")
    points = [p for p in scale_points(model) if not any(n in skip for n, _ in p.layers)]
    if not points:
        raise ValueError("activation-aware scaling needs Llama-style decoder layers (input_layernorm, self_attn."
                         "q/k/v/o_proj, post_attention_layernorm, mlp.gate/up/down_proj); none found")
    firsts = [(p.layers[0][0], p.layers[0][1]) for p in points]
    hs = dict(collect_hessians(model, firsts, calib_fn))
    out = []
    for p in points:
        s, a, ratio = search_scales(p, hs[p.layers[0][0]], sch)
        apply_scales(p, s)
        out.append((p.name, a, ratio))
        log.debug("awq %s: alpha %.1f, error x%.3f", p.name, a, ratio)
    log.info("awq: %d scaling points, mean error ratio %.3f", len(out), sum(r for *_, r in out) / len(out))
    return out
