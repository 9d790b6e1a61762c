"""Symmetric 4-bit ``w4g{g}s`` (4.5 bits per weight at g = 32, as llama.cpp's Q4_0): packing, quantizer, the
symmetric int8 kernel (AVX512-VNNI) against its Python reference and the float product, the LUT fallback through
the asymmetric twin, and the format wherever formats are used (QuantLinear, quantize / checkpoints, GPTQ, the
fast path's fused matrices, the CLI).

Bound vs the float product x.W^T: activations are rounded to int8 per block of 32 columns (step
d_b = max|x_b| / 127) and the integer dot products with q = u - 8 are exact, so
|y - x.W^T| <= sum_b d_b / 2 * sum_{k in b} |w_k|.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from efficient.fastpath import PackedMatrix
from efficient.quant import QuantLinear, formats, load_quantized, native, quantize, save_quantized
from efficient.quant.api import WEIGHTS_FILE
from efficient.quant.gptq import gptq_quantize

needs_vnni = pytest.mark.skipif(not native.int8_sym_supported(),
                                reason="the symmetric int8 kernel needs the native library on a CPU with AVX512-VNNI")


def _packed(name: str, N: int, K: int, seed: int = 0):
    sch = formats.parse_scheme(name)
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed)) * 0.05 + 0.01
    res = formats.rtn_quantize(sch, w)
    return sch, w, res, formats.pack(sch, res, N, K)


def test_scheme_names_and_size_is_4_5_bits_per_weight() -> None:
    sch = formats.parse_scheme("w4g32s")
    assert (sch.kind, sch.bits, sch.group_size, sch.bits_per_weight) == ("sym", 4, 32, 4.5)
    assert formats.parse_scheme("W4G128S").bits_per_weight == 4.125
    for bad in ("w2g32s", "w4g16s", "w4g32ss"):
        with pytest.raises(ValueError, match="unknown quantization scheme"):
            formats.parse_scheme(bad)
    N, K = 64, 4096
    _, _, _, pk = _packed("w4g32s", N, K)
    assert pk["qweight"].dtype == torch.uint8 and pk["qweight"].numel() * 8 == N * K * 4.5
    assert QuantLinear.from_linear(nn.Linear(K, N, bias=False), "w4g32s").packed_bytes() * 8 == N * K * 4.5


def test_pack_unpack_round_trip_and_byte_positions() -> None:
    N, kp = 37, 192
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (N, kp), generator=g, dtype=torch.uint8)
    scale = (torch.randn(N, kp // 64, generator=g) * 0.01).half().float()
    qw = formats.pack_sym(codes, scale, 64)
    assert qw.numel() == formats.sym_packed_bytes(N, kp, 64) == 3 * 3 * (8 * 64 + 32)
    c2, s2 = formats.unpack_sym(qw, N, kp, 64)
    assert torch.equal(c2, codes) and torch.equal(s2, scale)
    # row 21 = row 5 of block 1; group 2; column 64 * 2 + 8 v + 4 + j (high nibble) lives in byte 4 * 5 + j
    blk = qw.view(3, 3, 8 * 64 + 32)[1, 2]
    v, j = 6, 3
    assert int(blk[v * 64 + 4 * 5 + j]) >> 4 == int(codes[21, 128 + 8 * v + 4 + j])
    assert blk[8 * 64 :].view(torch.float16)[5].item() == scale[21, 2].item()
    # the LUT twin (min = -8 scale) holds the same weights; built in slices of 1024 rows
    sch = formats.parse_scheme("w4g32s")
    codes = torch.randint(0, 16, (1100, 64), generator=g, dtype=torch.uint8)
    pk = {"qweight": formats.pack_sym(codes, (torch.randn(1100, 2, generator=g) * 0.01).half().float(), 32)}
    twin, lut = formats.sym_as_uniform(sch, pk["qweight"], 1100, 64)
    assert twin.name == "w4g32" and lut.numel() == formats.uniform_packed_bytes(1100, 64, 32, 4)
    assert torch.equal(formats.dequantize(twin, {"qweight": lut}, 1100, 64), formats.dequantize(sch, pk, 1100, 64))


def test_quantizer_codes_dequant_and_clip_search_beats_plain_q4_0() -> None:
    sch, w, res, pk = _packed("w4g32s", 48, 200)  # K not a multiple of the group: padded, then sliced
    assert res.codes.shape == (48, 224) and int(res.codes.max()) <= 15
    dq = formats.dequantize(sch, pk, 48, 200)
    assert torch.allclose(dq, res.dequant, atol=1e-7)
    g = 32
    wg = formats.pad_columns(w, 224).view(48, 7, g)
    # plain Q4_0: scale = the group's extreme / -8, one of the searched candidates, so never better
    ext = torch.gather(wg, -1, wg.abs().argmax(-1, keepdim=True))
    q0 = (torch.clamp(torch.round(wg / (ext / -8).half().float()), -8, 7) * (ext / -8).half().float())
    err = ((res.dequant - w) ** 2).sum()  # the padded columns repeat the last value: compare real columns only
    assert err <= ((q0.view(48, 224)[:, :200] - w) ** 2).sum() + 1e-9
    assert (dq - w).norm() / w.norm() < 0.1


@needs_vnni
@pytest.mark.parametrize("name,K", [("w4g32s", 320), ("w4g32s", 200), ("w4g128s", 384)])
@pytest.mark.parametrize("M", [1, 2, 5, 17])
def test_kernel_matches_reference_and_float_bound(name: str, K: int, M: int) -> None:
    N = 100  # 7 row blocks (a group of four + three single ones) and a partial last block
    sch, _, _, pk = _packed(name, N, K)
    kp = formats.padded_k(sch, K)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1))
    xp = torch.nn.functional.pad(x, (0, kp - K))
    ref = formats.int8_sym_gemm_reference(sch, pk["qweight"], xp, N).double()
    wdq = formats.dequantize(sch, pk, N, K).double()
    exact = x.double() @ wdq.T
    d = xp.double().view(M, kp // 32, 32).abs().amax(-1) / 127
    wabs = torch.nn.functional.pad(wdq.abs(), (0, kp - K)).view(N, kp // 32, 32).sum(-1)
    bound = d @ wabs.T / 2
    for threads in (1, 2):
        y = formats.gemm(sch, pk, x, N, K, path="avx512", threads=threads).double()
        assert (y - ref).abs().max() <= 1e-5 * ref.abs().max(), "differs from the reference"
        assert ((y - exact).abs() <= bound * 1.0001 + 1e-6).all(), "error above the rounding bound"
    y1 = formats.gemm(sch, pk, x[-1:], N, K, path="avx512", threads=1)
    assert torch.equal(y1[0], formats.gemm(sch, pk, x, N, K, path="avx512", threads=1)[-1])


@needs_vnni
def test_native_kernel_rejects_shapes_it_does_not_take() -> None:
    lib = native.library()
    qw = torch.zeros(formats.sym_packed_bytes(16, 64, 32), dtype=torch.uint8)
    x, y = torch.randn(1, 48), torch.empty(1, 16)
    assert lib.lk_int8_sym_gemm(qw.data_ptr(), x.data_ptr(), y.data_ptr(), 1, 16, 48, 32, 1) == -1  # K % g
    assert lib.lk_int8_sym_gemm(qw.data_ptr(), x.data_ptr(), y.data_ptr(), 1, 16, 64, 16, 1) == -1  # g < 32


def test_fallback_paths_agree_with_float_product(monkeypatch) -> None:
    """Without the symmetric kernel (int8 kernel off, or a forced avx2 / scalar / torch path) the weights run
    on the LUT kernels as the asymmetric twin (min = -8 scale): the same weights, LUT accuracy."""
    N, K = 40, 200
    sch, _, _, pk = _packed("w4g32s", N, K)
    twin, lut = formats.sym_as_uniform(sch, pk["qweight"], N, formats.padded_k(sch, K))
    assert torch.equal(formats.dequantize(twin, {"qweight": lut}, N, K), formats.dequantize(sch, pk, N, K))
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(2))
    exact = x @ formats.dequantize(sch, pk, N, K).T
    tol = 0.02 * exact.abs().max()
    paths = ["torch"] + ([] if native.library() is None else
                         [p for p in native.PATHS if native.PATHS.index(p) <= native.PATHS.index(native.cpu_path())])
    monkeypatch.setenv(native.ENV_INT8, "off")
    assert not formats.sym_native()
    for p in paths:
        y = formats.gemm(sch, pk, x, N, K, path=p)
        assert (y - exact).abs().max() < tol, p
    y_float = formats.gemm(sch, pk, x, N, K, path="torch", tables="float")  # exact tables: the float product
    assert torch.allclose(y_float, exact, atol=1e-5)
    monkeypatch.delenv(native.ENV_INT8)
    if native.int8_sym_supported():  # the torch emulation of the int8 kernel gives the kernel's numbers
        yt = formats.gemm(sch, pk, x, N, K, path="torch")
        assert torch.allclose(yt, formats.gemm(sch, pk, x, N, K), rtol=1e-5, atol=1e-6)


def test_quantlinear_quantize_checkpoint_and_gptq(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 48))
    x = torch.randn(5, 96)
    with torch.no_grad():
        ref = model(x)
    reports = quantize(model, "w4g32s", exclude=[])
    assert all(r.scheme == "w4g32s" and r.packed_bytes * 8 == r.shape[0] * r.shape[1] * 4.5 for r in reports)
    assert all(isinstance(m, QuantLinear) for m in (model[0], model[2]))
    with torch.no_grad():
        y = model(x)
    assert (y - ref).norm() / ref.norm() < 0.1
    save_quantized(model, tmp_path)
    with safe_open(str(tmp_path / WEIGHTS_FILE), "pt") as f:
        assert f.get_tensor("0.qweight").numel() * 8 == 64 * 96 * 4.5
    fresh = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 48))
    load_quantized(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
    monkeypatch.setenv(native.ENV_INT8, "off")  # the same layer on the LUT kernels (derived twin)
    with torch.no_grad():
        assert (fresh(x) - y).abs().max() < 0.02 * y.abs().max()
    # GPTQ takes the format generically: codes in range, packing exact, lower calibration error than RTN
    sch = formats.parse_scheme("w4g32s")
    w = torch.randn(32, 128)
    xs = torch.randn(512, 128) * torch.linspace(0.1, 3, 128)
    H = xs.T @ xs
    res = gptq_quantize(sch, w, H)
    assert int(res.codes.max()) <= 15 and res.params[0].shape == (32, 4)
    assert torch.allclose(formats.dequantize(sch, formats.pack(sch, res, 32, 128), 32, 128), res.dequant)
    rtn = formats.rtn_quantize(sch, w).dequant

    def out_err(dq: torch.Tensor) -> float:
        return float(((dq - w) @ H * (dq - w)).sum())

    assert out_err(res.dequant) < out_err(rtn)


def test_fused_packed_matrix_equals_separate_layers(monkeypatch) -> None:
    torch.manual_seed(1)
    lins = [nn.Linear(200, 48), nn.Linear(200, 32, bias=False)]
    qs = [QuantLinear.from_linear(m, "w4g32s") for m in lins]
    x = torch.randn(3, 200)
    sep = torch.cat([q(x) for q in qs], dim=1)
    for int8 in ("auto", "off"):
        monkeypatch.setenv(native.ENV_INT8, int8)
        pm = PackedMatrix.from_modules(qs)
        assert pm.kind == ("sym" if formats.sym_native() else "fallback")
        assert torch.equal(pm.canonical()["qweight"], torch.cat([q.qweight for q in qs]))
        y = pm(x)
        if int8 == "auto":
            assert torch.allclose(y, sep, rtol=1e-6, atol=1e-6)
        else:
            assert (y - sep).abs().max() < 0.02 * sep.abs().max()
    with pytest.raises(ValueError, match="multiples of 16"):
        PackedMatrix.quantized("w4g32s", [torch.randn(40, 64), torch.randn(16, 64)])


def test_cli_quantize_symmetric(tmp_path, capsys) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from apps.cli import main

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    src = tmp_path / "src"
    LlamaForCausalLM(cfg).save_pretrained(src)
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(src), "--scheme", "w4g32s", "--out", str(out)]) == 0
    assert "smaller" in capsys.readouterr().out and (out / WEIGHTS_FILE).is_file()
