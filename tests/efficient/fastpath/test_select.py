"""Run-time kernel choice: every candidate computes the same product, the fastest measured one is kept."""

from __future__ import annotations

import torch
from torch import nn

from efficient.fastpath import Int8Matrix, PackedMatrix, choose
from efficient.fastpath.select import dense_candidate
from efficient.quant.linear import QuantLinear


def _lut(scheme: str = "w4g32", N: int = 96, K: int = 256) -> tuple[PackedMatrix, torch.Tensor]:
    lin = nn.Linear(K, N)
    lin.weight.data = torch.randn(N, K, generator=torch.Generator().manual_seed(0)) * 0.05
    q = QuantLinear.from_linear(lin, scheme)
    return PackedMatrix.from_modules([q]), q.dequantize()


def test_candidates_compute_the_same_product() -> None:
    pm, w = _lut()
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(1))
    exact = x @ w.T + pm.bias
    for kind, tol in (("lut", 0.02), ("bf16", 0.02), ("int8", 0.03)):
        c = pm if kind == "lut" else dense_candidate(pm, kind, allow_requant=True)
        y = c(x, torch.empty(8, 96))
        assert float((y - exact).abs().max() / exact.abs().max()) < tol, kind
    assert dense_candidate(pm, "int8") is None  # re-quantizing the weights is opt-in


def test_choose_keeps_the_fastest_measured() -> None:
    pm, _ = _lut("w2g128", 128, 512)
    best, times = choose(pm, 16, allow_requant=True, reps=2)
    assert set(times) == {"lut", "bf16", "int8"}
    winner = min(times, key=times.get)
    assert (best is pm) == (winner == "lut")
    if winner == "int8":
        assert isinstance(best, Int8Matrix)
    x = torch.randn(16, 512)
    assert best(x).shape == (16, 128)


def test_dense_matrices_have_no_candidates() -> None:
    dense = PackedMatrix.dense([torch.randn(32, 64)])
    assert dense_candidate(dense, "bf16") is None
