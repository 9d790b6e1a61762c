"""GPTQ-style calibrated quantization (second-order error feedback), generic over the weight formats.

For each layer, H = sum of x x^T over calibration activations. Columns are quantized left to right; each
column's rounding error is spread over the not yet quantized columns through the inverse Hessian's
Cholesky factor (Frantar et al., GPTQ). Group parameters are fitted when a group starts, on the already
error-updated weights, so the same routine serves uniform INT, AFPQ (two scales per group) and ternary.
Hessians of all selected layers are collected in one pass over the calibration text (not layer by layer
with quantized inputs), which is simpler and close in quality for small models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from efficient.quant import formats
from efficient.quant.formats import QuantResult, Scheme


def gptq_quantize(scheme: Scheme, w: torch.Tensor, H: torch.Tensor, percdamp: float = 0.01,
                  blocksize: int = 128, act_order: bool = False) -> QuantResult:
    """w: [N, K] float weight; H: [K, K] (unnormalised x^T x). Returns codes/params like ``rtn_quantize``.

    ``act_order``: quantize the columns by descending Hessian diagonal (the most used inputs first, while
    the most freedom is left to compensate them), with static groups: each group's parameters are fitted
    on the original weights of its contiguous columns before any error feedback, so the stored layout
    (contiguous groups, same packing) is unchanged. Uniform and AFPQ formats only."""
    if act_order and scheme.kind != "ternary":
        return _gptq_act_order(scheme, w, H, percdamp, blocksize)
    w = w.detach().float()
    N, K = w.shape
    W, Hp, _ = _prepare(scheme, w, H, percdamp)
    kp = W.shape[1]
    g = scheme.group_size if scheme.kind != "ternary" else kp
    qz = formats.make_quantizer(scheme)
    try:
        L = torch.linalg.cholesky(Hp)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()
    except torch.linalg.LinAlgError:  # numerically singular: fall back to round-to-nearest
        return formats.rtn_quantize(scheme, w)
    hdiag = torch.diag(Hp).float()

    codes = torch.zeros(N, kp)
    dq_all = torch.zeros(N, kp)
    params_groups: list[tuple[torch.Tensor, ...]] = []
    if scheme.kind == "ternary":
        params_groups.append(qz.fit(W))
    bs = max(blocksize, g) if scheme.kind != "ternary" else blocksize
    for i1 in range(0, kp, bs):
        i2 = min(i1 + bs, kp)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        params = params_groups[-1] if params_groups else None
        for i in range(i2 - i1):
            col = i1 + i
            if scheme.kind != "ternary" and col % g == 0:
                params = qz.fit(W1[:, i : i + g].unsqueeze(1), hdiag[col : col + g].view(1, 1, g))
                params = tuple(p.squeeze(1) for p in params)
                params_groups.append(params)
            q, dq = qz.qdq(W1[:, i : i + 1], params)
            codes[:, col] = q[:, 0].float()
            dq_all[:, col] = dq[:, 0]
            err = (W1[:, i] - dq[:, 0]) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if scheme.kind == "ternary":
        return QuantResult(codes.to(torch.int8), params_groups[0], dq_all[:, :K].contiguous())
    stacked = tuple(torch.stack([p[j] for p in params_groups], dim=1) for j in range(len(params_groups[0])))
    return QuantResult(codes.to(torch.uint8), stacked, dq_all[:, :K].contiguous())


def _prepare(scheme: Scheme, w: torch.Tensor, H: torch.Tensor, percdamp: float):
    """Padded W [N, Kp], damped H [Kp, Kp] (dead inputs: unit diagonal, weights zeroed) and H's diagonal before
    the damping."""
    w = w.detach().float()
    N, K = w.shape
    kp = formats.padded_k(scheme, K)
    W = torch.zeros(N, kp)
    W[:, :K] = w
    Hp = torch.zeros(kp, kp, dtype=torch.float64)
    Hp[:K, :K] = H.double()
    dead = torch.diag(Hp) == 0
    Hp[dead, dead] = 1.0
    W[:, dead] = 0.0
    hdiag = torch.diag(Hp).float().clone()
    Hp += percdamp * torch.mean(torch.diag(Hp)) * torch.eye(kp, dtype=torch.float64)
    return W, Hp, hdiag


def _gptq_act_order(scheme: Scheme, w: torch.Tensor, H: torch.Tensor, percdamp: float,
                    blocksize: int) -> QuantResult:
    N, K = w.shape
    W, Hp, hdiag = _prepare(scheme, w, H, percdamp)
    kp, g = W.shape[1], scheme.group_size
    qz = formats.make_quantizer(scheme)
    # static groups: [N, groups] per parameter, fitted on the original weights (activation-weighted clip)
    params = qz.fit(W.view(N, kp // g, g), hdiag.view(1, kp // g, g))
    perm = torch.argsort(hdiag, descending=True, stable=True)
    W = W[:, perm]
    Hp = Hp[perm][:, perm]
    try:
        L = torch.linalg.cholesky(Hp)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()
    except torch.linalg.LinAlgError:
        return formats.rtn_quantize(scheme, w, col_weight=H.diagonal())
    group_of = perm // g
    codes = torch.zeros(N, kp)
    dq_all = torch.zeros(N, kp)
    for i1 in range(0, kp, blocksize):
        i2 = min(i1 + blocksize, kp)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            gi = int(group_of[i1 + i])
            q, dq = qz.qdq(W1[:, i : i + 1], tuple(p[:, gi : gi + 1] for p in params))
            codes[:, i1 + i] = q[:, 0].float()
            dq_all[:, i1 + i] = dq[:, 0]
            err = (W1[:, i] - dq[:, 0]) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    codes, dq_all = codes[:, inv], dq_all[:, inv]
    return QuantResult(codes.to(torch.uint8), tuple(p.contiguous() for p in params), dq_all[:, :K].contiguous())


def collect_hessians(model: nn.Module, targets: list[tuple[str, nn.Linear]], calib_fn: Callable,
                     max_bytes: int = 1 << 30) -> Iterable[tuple[str, torch.Tensor]]:
    """Yields (name, H = sum x x^T) per target; runs ``calib_fn(model)`` once per batch of layers so that
    at most ``max_bytes`` of float32 Hessians are held at a time."""
    batch: list[tuple[str, nn.Linear]] = []
    size = 0
    groups = []
    for name, mod in targets:
        b = 4 * mod.in_features**2
        if batch and size + b > max_bytes:
            groups.append(batch)
            batch, size = [], 0
        batch.append((name, mod))
        size += b
    if batch:
        groups.append(batch)
    for group in groups:
        hs: dict[str, torch.Tensor] = {}
        hooks = []
        for name, mod in group:
            hs[name] = torch.zeros(mod.in_features, mod.in_features)

            def hook(_m, inp, _out, key=name, hs=hs):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
                hs[key].addmm_(x.T, x)

            hooks.append(mod.register_forward_hook(hook))
        try:
            with torch.no_grad():
                calib_fn(model)
        finally:
            for h in hooks:
                h.remove()
        yield from hs.items()
