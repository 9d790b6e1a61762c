"""GPTQ-style calibrated quantization (second-order error feedback), generic over the weight formats.

For each layer, H = sum of x x^T over calibration activations. Columns are quantized left to right; each
column's rounding error is spread over the not yet quantized columns through the inverse Hessian's
Cholesky factor (Frantar et al., GPTQ). Group parameters are fitted when a group starts, on the already
error-updated weights, so the same routine serves uniform INT, AFPQ (two scales per group) and ternary.
Hessians of all selected layers are collected in one pass over the calibration text (not layer by layer
with quantized inputs), which is simpler and close in quality for small models.
"""

from __future__ import annotations

import torch

from efficient.quant import formats
from efficient.quant.formats import QuantResult, Scheme


def gptq_quantize(scheme: Scheme, w: torch.Tensor, H: torch.Tensor, percdamp: float = 0.01,
                  blocksize: int = 128) -> QuantResult:
    """w: [N, K] float weight; H: [K, K] (unnormalised x^T x). Returns codes/params like ``rtn_quantize``."""
    w = w.detach().float()
    N, K = w.shape
    kp = formats.padded_k(scheme, K)
    g = scheme.group_size if scheme.kind != "ternary" else kp
    qz = formats.make_quantizer(scheme)
    W = torch.zeros(N, kp)
    W[:, :K] = w
    Hp = torch.zeros(kp, kp, dtype=torch.float64)
    Hp[:K, :K] = H.double()
    dead = torch.diag(Hp) == 0
    Hp[dead, dead] = 1.0
    W[:, dead] = 0.0
    Hp += percdamp * torch.mean(torch.diag(Hp)) * torch.eye(kp, dtype=torch.float64)
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
