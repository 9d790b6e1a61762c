"""The int8 kernel's small-M GEMM (prefill: 2-8 rows, four row blocks at a time) gives every row the same bits
as the GEMV of that row alone, over row-block counts that leave every remainder path (4, 2, 1, partial)."""

from __future__ import annotations

import pytest
import torch

from efficient.fastpath import PackedMatrix
from efficient.quant import formats, native

needs_vnni = pytest.mark.skipif(not native.int8_supported(),
                                reason="int8 kernel needs the native library on a CPU with AVX512-VNNI")


@needs_vnni
@pytest.mark.parametrize("name", ["w4g128", "w2g64"])
@pytest.mark.parametrize("N", [16 * 4, 16 * 11 + 5])  # whole groups of four; 2 x 4 + 2 + 1 blocks, partial last
def test_gemm_rows_equal_the_gemv(name: str, N: int) -> None:
    K = 256
    sch = formats.parse_scheme(name)
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0)) * 0.05
    pm = PackedMatrix.quantized(sch, [w])
    assert pm._i8 is not None  # the int8 kernel runs this matrix
    x = torch.randn(9, K, generator=torch.Generator().manual_seed(1))
    rows = torch.cat([pm(x[i : i + 1].contiguous()) for i in range(9)])
    for M in range(2, 10):
        assert torch.equal(pm(x[:M].contiguous()), rows[:M]), f"M={M}"
