"""Kernels against a float reference on the dequantized weights, and every SIMD path against each other.

Error bounds (all exact, derived from the only lossy steps; asserted per output element):
* uniform (T-MAC LUT): each int8 table entry is off by <= lscale/2 (lscale = max |x0|+..+|x3| of the weight
  group / 127), so |y - x.W^T| <= sum_groups s * 1/2 * (2^bits - 1) * (g/4) * lscale/2.
* ternary (I2_S, TL): activations rounded to int8 per row: |y - x.W^T| <= wscale * sum|w| * ascale / 2;
  the integer dot products are exact, so I2_S and TL agree bit for bit (lossless).
* AFPQ: activations rounded to int8 per group: |y - x.W^T| <= sum_groups ascale_g / 2 * sum_g |w|.
Native paths are bit-identical to the scalar path (AFPQ: equal up to float summation order).
"""

from __future__ import annotations

import pytest
import torch

from efficient.quant import formats, native

NATIVE = [p for p in ("scalar", "avx2", "avx512") if native.library() is not None
          and native.PATHS.index(p) <= native.PATHS.index(native.cpu_path())]
SCHEMES = ["w1g32", "w2g64", "w3g128", "w4g32", "w4g128", "ternary", "ternary-tl", "afpq4g64", "afpq3g128"]


def _packed(name: str, N: int, K: int, seed: int = 0):
    sch = formats.parse_scheme(name)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.05 + 0.01
    res = formats.rtn_quantize(sch, w)
    pk = formats.pack(sch, res, N, K)
    if sch.kernel == "tl":
        pk["tl"] = formats.tl_layout(formats.unpack_i2s(pk["qweight"]), K)
    return sch, pk, formats.dequantize(sch, pk, N, K)


def _bound(sch, pk, x: torch.Tensor, wdq: torch.Tensor) -> torch.Tensor:
    N, K = wdq.shape
    kp = formats.padded_k(sch, K)
    xp = torch.nn.functional.pad(x, (0, kp - K))
    if sch.kind == "uniform":
        g = sch.group_size
        _, lsc, _ = formats.lut_tables_torch(xp, g)  # [M, nG]
        _, s, _ = formats.unpack_uniform(pk["qweight"], N, kp, sch.bits, g)  # [N, nG]
        per = 0.5 * ((1 << sch.bits) - 1) * (g / 4) * 0.5
        return (lsc.unsqueeze(1) * s.unsqueeze(0) * per).sum(-1)
    if sch.kind == "ternary":
        asc = x.abs().amax(-1, keepdim=True) / 127
        return asc * wdq.abs().sum(-1).unsqueeze(0) / 2
    g = sch.group_size
    asc = xp.view(x.shape[0], kp // g, g).abs().amax(-1) / 127  # [M, nG]
    wabs = torch.nn.functional.pad(wdq.abs(), (0, kp - K)).view(N, kp // g, g).sum(-1)  # [N, nG]
    return (asc.unsqueeze(1) * wabs.unsqueeze(0) / 2).sum(-1)


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("M", [1, 5, 16])
def test_kernel_matches_float_reference_on_every_path(name, M):
    N, K = 37, 320  # odd row count; 320 is not a multiple of 128 (padded) and not of 9 (TL pads)
    sch, pk, wdq = _packed(name, N, K)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1))
    ref = x.double() @ wdq.double().T
    bound = _bound(sch, pk, x, wdq).double()
    outs = {"torch": formats.gemm(sch, pk, x, N, K, path="torch")}
    for p in NATIVE:
        for threads in (1, 2):
            outs[f"{p}/{threads}"] = formats.gemm(sch, pk, x, N, K, path=p, threads=threads)
    for key, y in outs.items():
        err = (y.double() - ref).abs()
        assert (err <= bound * 1.0001 + 1e-5).all(), f"{name} {key}: error {err.max():.3g} above bound"
    if NATIVE:
        base = outs["scalar/1"]
        for key, y in outs.items():
            if key == "torch" or sch.kind == "afpq":  # AFPQ paths sum float lanes in different orders
                assert torch.allclose(y, base, rtol=1e-5, atol=1e-5), f"{name}: {key} differs"
            else:
                assert torch.equal(y, base), f"{name}: {key} is not bit-identical to scalar"


@pytest.mark.parametrize("name", ["w1g32", "w2g64", "w3g128", "w4g32"])
def test_float_tables_are_exact_on_every_path(name):
    """Float (fp32) LUT tables: only fp32 rounding separates the result from x.W_deq^T (int8 tables are the
    fast option with the bound above); all native paths sum in the same order, so they agree bit for bit."""
    N, K, M = 37, 320, 3
    sch, pk, wdq = _packed(name, N, K)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(2))
    ref = x.double() @ wdq.double().T
    scale = x.double().abs() @ wdq.double().abs().T + x.double().abs().sum(-1, keepdim=True) * wdq.abs().max()
    outs = {"torch": formats.gemm(sch, pk, x, N, K, path="torch", tables="float")}
    for p in NATIVE:
        for threads in (1, 2):
            outs[f"{p}/{threads}"] = formats.gemm(sch, pk, x, N, K, path=p, threads=threads, tables="float")
    int8_err = (formats.gemm(sch, pk, x, N, K, tables="int8").double() - ref).abs().max()
    for key, y in outs.items():
        err = (y.double() - ref).abs()
        assert (err <= 1e-5 * scale).all(), f"{name} {key}: error {err.max():.3g}"
        assert err.max() < int8_err / 20, f"{name} {key}: float tables not more exact than int8"
        if NATIVE and key != "torch":
            assert torch.equal(y, outs["scalar/1"]), f"{name}: {key} is not bit-identical to scalar"


def test_table_mode_is_selectable(monkeypatch):
    from torch import nn

    from efficient.quant import QuantLinear

    q = QuantLinear.from_linear(nn.Linear(128, 16), "w2g64")
    x = torch.randn(2, 128)
    ref = x.double() @ q.dequantize().double().T + q.bias.double()
    monkeypatch.setenv(native.ENV_TABLES, "float")
    y_float = q(x)
    monkeypatch.setenv(native.ENV_TABLES, "int8")
    y_int8 = q(x)
    assert (y_float.double() - ref).abs().max() < (y_int8.double() - ref).abs().max()
    q.tables = "float"  # per-layer choice overrides the environment
    assert torch.equal(q(x), y_float)
    monkeypatch.setenv(native.ENV_TABLES, "int4")
    q.tables = None
    with pytest.raises(ValueError, match="LUT tables"):
        q(x)


def test_ternary_kernels_are_lossless_and_agree():
    """I2_S and TL compute the same integers: identical outputs; equal to the int8-activation reference.
    N = 300 spans more than one 8-row-block pass of the AVX-512 TL loop (and a partial one)."""
    N, K = 300, 384
    w = torch.randint(-1, 2, (N, K)).float() * 0.02
    x = torch.randn(3, K)
    outs = []
    for name in ("ternary", "ternary-tl"):
        sch = formats.parse_scheme(name)
        pk = formats.pack(sch, formats.rtn_quantize(sch, w), N, K)
        if sch.kernel == "tl":
            pk["tl"] = formats.tl_layout(formats.unpack_i2s(pk["qweight"]), K)
        for p in NATIVE or ["torch"]:
            for threads in (1, 2):
                outs.append(formats.gemm(sch, pk, x, N, K, path=p, threads=threads))
    mx = x.abs().amax(-1, keepdim=True)
    a = torch.round(x * (127.0 / mx)).clamp(-127, 127)
    wt = torch.sign(w).double()
    exact = (a.double() @ wt.T).float() * (pk["wscale"].unsqueeze(0) * (mx / 127.0))
    for y in outs:
        assert torch.equal(y, exact)


def test_native_tables_equal_torch_tables():
    lib = native.library()
    if lib is None:
        pytest.skip("native library not built")
    M, K, g = 2, 256, 64
    x = torch.randn(M, K)
    tab = torch.zeros(M, K // 32 * 128, dtype=torch.int8)
    lsc = torch.zeros(M, K // g)
    sx = torch.zeros(M, K // g)
    for path in {0, native.PATHS.index(native.cpu_path())}:
        lib.lk_lut_tables(x.data_ptr(), M, K, g, tab.data_ptr(), lsc.data_ptr(), sx.data_ptr(), path)
        _check_tables(tab, lsc, sx, x, M, K, g)


def _check_tables(tab, lsc, sx, x, M, K, g):
    q, lsc_t, sx_t = formats.lut_tables_torch(x, g)
    # kernel order: chunk c, half h, slot s, entry e  <->  act group 8c + 4h + s
    assert torch.equal(tab.view(M, K // 4, 16).int(), q)
    assert torch.equal(lsc, lsc_t)
    assert torch.allclose(sx, sx_t, atol=1e-5)
    assert torch.equal(q[..., :8], -q[..., 15 - torch.arange(8)])  # mirror symmetry


def test_pack_roundtrip_and_layout_sizes():
    for name in SCHEMES:
        sch, pk, wdq = _packed(name, 20, 200)
        shapes = formats.expected_shapes(sch, 20, 200)
        for k, shp in shapes.items():
            assert tuple(pk[k].shape) == shp, (name, k)
        res = formats.rtn_quantize(sch, torch.randn(20, 200))
        assert torch.allclose(formats.dequantize(sch, formats.pack(sch, res, 20, 200), 20, 200), res.dequant,
                              atol=1e-6)


def test_afpq3_is_stored_at_3_bits():
    sch, pk, wdq = _packed("afpq3g128", 16, 512)
    assert pk["qweight"].numel() == 16 * 512 * 3 // 8 and sch.bits_per_weight == 3.25
    codes = formats.rtn_quantize(sch, torch.randn(16, 512)).codes
    assert torch.equal(formats.unpack_afpq(formats.pack(sch, formats.QuantResult(codes, (torch.ones(16, 4),) * 2,
                                                                              torch.empty(0)), 16, 512)["qweight"],
                                           3), codes)


def test_k_padding_keeps_real_weights_codes():
    sch = formats.parse_scheme("w4g128")
    w = torch.randn(8, 200)
    full = formats.rtn_quantize(sch, w).dequant
    # the last (partial) group is quantized from its own 72 columns only
    part = formats.rtn_quantize(sch, w[:, 128:]).dequant
    assert torch.allclose(full[:, 128:], part)


def test_bad_shapes_and_names_give_clear_errors():
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        formats.parse_scheme("w5g128")
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        formats.parse_scheme("afpq4g32")
    sch, pk, _ = _packed("w2g64", 16, 128)
    with pytest.raises(ValueError, match="expects 128"):
        formats.gemm(sch, pk, torch.randn(1, 100), 16, 128)


def test_env_var_forces_path(monkeypatch):
    monkeypatch.setenv(native.ENV_PATH, "torch")
    assert native.kernel_path() == "torch"
    monkeypatch.setenv(native.ENV_PATH, "sse9")
    with pytest.raises(ValueError, match="MIMO_QUANT_KERNEL"):
        native.kernel_path()
    if native.library() is not None:
        monkeypatch.setenv(native.ENV_PATH, "scalar")
        assert native.kernel_path() == "scalar"


def test_stale_library_is_refused(monkeypatch, caplog, tmp_path):
    """A library built from older sources (other signatures / layouts) must not be called."""
    import shutil
    import subprocess

    if native.library() is None or shutil.which("g++") is None:
        pytest.skip("native library or compiler not available")
    src = tmp_path / "old.cpp"
    src.write_text('extern "C" int lk_abi_version(void) { return 1; }\n')
    so = tmp_path / "_lutkernels_old.so"
    subprocess.run(["g++", "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    monkeypatch.setenv("MIMO_QUANT_LIB", str(so))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_lib_tried", False)
    with caplog.at_level("WARNING"):
        assert native.library() is None
    assert any("stale build" in r.message for r in caplog.records)


def test_missing_library_falls_back_to_torch_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_lib_tried", True)
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.delenv(native.ENV_PATH, raising=False)
    with caplog.at_level("WARNING"):
        assert native.kernel_path() == "torch"
        assert native.kernel_path() == "torch"
    assert sum("fallback" in r.message for r in caplog.records) == 1
    sch, pk, wdq = _packed("w2g64", 16, 128)
    y = formats.gemm(sch, pk, torch.randn(2, 128), 16, 128)
    assert y.shape == (2, 16)
    monkeypatch.setenv(native.ENV_PATH, "avx2")
    with pytest.raises(RuntimeError, match="not built"):
        native.kernel_path()
