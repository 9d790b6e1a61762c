"""The layer-step glue's SiLU(gate) * up (vectorized exp on AVX-512) against float64, over the whole float range."""

from __future__ import annotations

import pytest
import torch

from efficient.quant import native

lib = native.library()
needs_glue = pytest.mark.skipif(lib is None or not hasattr(lib, "lk_silu_mul"), reason="native step glue not built")


@needs_glue
def test_silu_mul_matches_float64() -> None:
    F = 16 * 40 + 5  # a scalar tail after the vectors
    g = torch.randn(F, generator=torch.Generator().manual_seed(0)) * 6
    g[:8] = torch.tensor([-1e4, -200.0, -104.5, -88.0, 0.0, 88.0, 104.5, 1e4])
    g[-3:] = torch.tensor([-30.0, 1e-30, 30.0])  # in the tail too
    gu = torch.cat([g, torch.randn(F, generator=torch.Generator().manual_seed(1))])
    out = torch.empty(F)
    lib.lk_silu_mul(gu.data_ptr(), F, out.data_ptr())
    ref = g.double() * torch.sigmoid(g.double()) * gu[F:].double()
    assert torch.isfinite(out).all()
    tiny = ref.abs() < 1e-37  # below fp32's normal range: only the size of the error matters
    assert float(((out.double() - ref).abs() / ref.abs())[~tiny].max()) < 1e-6  # measured 1.6e-7, as expf
    assert float((out.double() - ref)[tiny].abs().max()) < 1e-37
