"""PackedMatrix: fused packed matrices give exactly the separate QuantLinear products; one call per matrix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from efficient.fastpath import PackedMatrix, random_packed
from efficient.quant import native
from efficient.quant.linear import QuantLinear


@pytest.mark.parametrize("scheme", ["w2g128", "w4g32", "ternary"])
def test_fused_equals_separate_quantlinears(scheme: str) -> None:
    g = torch.Generator().manual_seed(0)
    lins = [nn.Linear(256, n, bias=True) for n in (64, 32, 48)]
    for lin in lins:
        lin.weight.data = torch.randn(lin.out_features, 256, generator=g) * 0.05
        lin.bias.data = torch.randn(lin.out_features, generator=g)
    qls = [QuantLinear.from_linear(lin, scheme) for lin in lins]
    fused = PackedMatrix.from_modules(qls)
    assert fused.N == 144 and fused.splits == [64, 32, 48]
    x = torch.randn(3, 256, generator=g)
    out = torch.full((3, 144), float("nan"))
    fused(x, out)  # writes the caller's buffer
    ref = torch.cat([q(x) for q in qls], dim=1)
    assert torch.equal(out, ref)
    # quantizing the float linears directly gives the same codes as QuantLinear.from_linear
    assert torch.equal(PackedMatrix.from_modules(lins, scheme)(x), ref)


def test_dense_and_padding() -> None:
    g = torch.Generator().manual_seed(1)
    lins = [nn.Linear(40, 16, bias=False), nn.Linear(40, 8, bias=False)]
    x = torch.randn(2, 40, generator=g)
    dense = PackedMatrix.from_modules(lins)
    assert dense.kind == "dense"
    torch.testing.assert_close(dense(x), torch.cat([lin(x) for lin in lins], 1))
    q = PackedMatrix.from_modules(lins, "w4g32")  # K = 40 is padded to 64 inside
    ref = torch.cat([QuantLinear.from_linear(lin, "w4g32")(x) for lin in lins], 1)
    assert torch.equal(q(x), ref)


def test_native_kernel_is_used_when_built() -> None:
    pm = PackedMatrix.from_packed(*_packed("w2g128", 64, 128))
    assert pm.kind == ("lut" if native.kernel_path() != "torch" else "fallback")


def test_fusing_misaligned_lut_rows_is_refused() -> None:
    lins = [nn.Linear(128, 10), nn.Linear(128, 16)]
    with pytest.raises(ValueError, match="multiples of 16"):
        PackedMatrix.from_modules(lins, "w2g128")


def test_random_packed_fills_rows_with_distinct_memory() -> None:
    a = random_packed("w2g128", 512, 256, sample_rows=64)
    pm = PackedMatrix.from_packed(*_packed("w2g128", 512, 256, a))
    y = pm(torch.randn(1, 256))
    assert y.shape == (1, 512) and torch.isfinite(y).all()
    # rows repeat every 64 (copied blocks), in distinct memory
    assert torch.equal(y[:, :64], y[:, 64:128])


def _packed(scheme: str, N: int, K: int, t: dict | None = None):
    from efficient.quant.formats import parse_scheme

    sch = parse_scheme(scheme)
    return sch, [t if t is not None else random_packed(sch, N, K)], [N], K
