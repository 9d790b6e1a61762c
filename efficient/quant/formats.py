"""Weight formats: schemes, quantizers (codes + parameters), packing, dequantization and the GEMM kernels.

Three families, all packed so that one canonical byte layout serves every SIMD path (no width-dependent
on-disk blocks):

* ``uniform`` (``w{bits}g{group}``, bits 1-4, group 32/64/128): w = scale * q + min per group (asymmetric),
  run by the T-MAC-style bit-serial LUT kernel. Layout: 16-row blocks; per group, per 32 columns, per bit
  plane 64 bytes (byte 4r+s holds the 4-bit patterns of activation groups s and 4+s of row r), then the
  group's 16 fp16 scales and 16 fp16 mins.
* ``ternary`` (``ternary`` = BitNet I2_S kernel, ``ternary-tl`` = TL LUT kernel): w in {-1, 0, 1} times a
  per-row fp32 scale; stored as I2_S (blocks of 128 in 32 bytes, code = w + 1, byte j: w[j] in bits 7-6,
  w[j+32] 5-4, w[j+64] 3-2, w[j+96] 1-0). The TL layout is derived from it when the layer is loaded.
* ``afpq`` (``afpq4g{group}`` e2m1, ``afpq3g{group}`` sign + {0,1,2,4}; group 64/128): a sign bit plus a
  magnitude code, separate scales for the positive and the negative weights of each group (AFPQ). e2m1 is
  stored as nibbles (byte j of each 32-byte piece: code 64p+j low, 64p+32+j high), fp3 at 3 bits per weight
  as bit planes (per 64 columns: 8 bytes of magnitude bit 0, 8 of bit 1, 8 of sign; bit j = column j);
  both with fp16 [N, groups, 2] scales.
* ``sym`` (``w4g{group}s``, group 32/64/128): symmetric 4-bit, w = scale * (u - 8), u in [0, 15], one fp16 scale
  per group and no min (4 + 16 / group bits per weight: ``w4g32s`` = 4.5, as llama.cpp's Q4_0). Stored directly
  in the int8 kernel's layout (csrc/int8kernels.cpp, no conversion at load): 16-row blocks; per group
  ``group / 8`` vectors of 64 bytes (byte ``j`` of vector ``v``: low nibble the code of row ``j // 4``, column
  ``8v + j % 4``, high nibble column ``8v + 4 + j % 4``), then the group's 16 fp16 scales. On CPUs without
  AVX512-VNNI (or with the int8 kernel turned off) it runs on the LUT kernel as ``w4g{group}`` with min = -8 scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from efficient.quant import native

# AFPQ magnitude tables in integer units (value = unit * table[index]); index 0-7, bit 3 of a code = sign.
AFPQ_FORMATS = {
    4: {"name": "e2m1", "mags": (0, 1, 2, 3, 4, 6, 8, 12), "unit": 0.5},
    3: {"name": "fp3", "mags": (0, 1, 2, 4), "unit": 1.0},
}


@dataclass(frozen=True)
class Scheme:
    """A weight format: ``kind`` in {uniform, sym, ternary, afpq}; ``kernel`` in {lut, int8, i2s, tl, fp}."""

    name: str
    kind: str
    bits: int
    group_size: int
    kernel: str

    @property
    def bits_per_weight(self) -> float:
        if self.kind == "uniform":
            return self.bits + 32 / self.group_size
        if self.kind == "afpq":
            return self.bits + 32 / self.group_size  # e2m1 in nibbles, fp3 in 3 bit planes
        if self.kind == "sym":
            return self.bits + 16 / self.group_size  # one fp16 scale per group
        return 2.0

    def k_multiple(self) -> int:
        """Columns are zero-padded to a multiple of this."""
        return 128 if self.kind == "ternary" else self.group_size


_UNIFORM = re.compile(r"^w([1-4])g(32|64|128)$")
_AFPQ = re.compile(r"^afpq([34])g(64|128)$")
_SYM = re.compile(r"^w4g(32|64|128)s$")


def parse_scheme(name: str) -> Scheme:
    """``w{1-4}g{32,64,128}``, ``w4g{32,64,128}s``, ``afpq{3,4}g{64,128}``, ``ternary`` or ``ternary-tl``."""
    key = name.strip().lower()
    if m := _UNIFORM.match(key):
        return Scheme(key, "uniform", int(m.group(1)), int(m.group(2)), "lut")
    if m := _SYM.match(key):
        return Scheme(key, "sym", 4, int(m.group(1)), "int8")
    if m := _AFPQ.match(key):
        return Scheme(key, "afpq", int(m.group(1)), int(m.group(2)), "fp")
    if key in ("ternary", "ternary-i2s"):
        return Scheme("ternary", "ternary", 2, 128, "i2s")
    if key == "ternary-tl":
        return Scheme("ternary-tl", "ternary", 2, 128, "tl")
    raise ValueError(
        f"unknown quantization scheme {name!r}: expected w<bits>g<group> (bits 1-4, group 32/64/128), "
        "w4g<group>s (symmetric 4-bit), afpq<3|4>g<64|128>, ternary or ternary-tl"
    )


def padded_k(scheme: Scheme, K: int) -> int:
    m = scheme.k_multiple()
    return (K + m - 1) // m * m


# ---------------------------------------------------------------------------------------------------------
# Quantizers: fit per-group parameters, then quantize-dequantize (used by RTN and by GPTQ column by column).
# Parameters are rounded to their stored precision (fp16 / fp32) before codes are chosen.
# ---------------------------------------------------------------------------------------------------------
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)


def best_clip(qdq, wg: torch.Tensor, weight: torch.Tensor | None, candidates) -> tuple[torch.Tensor, ...]:
    """Per group, the candidate parameters whose quantize-dequantize has the lowest (weighted) squared error."""
    best_err, best = None, None
    for p in candidates:
        _, dq = qdq(wg, p)
        d = (dq - wg) ** 2
        err = (d * weight).sum(-1) if weight is not None else d.sum(-1)
        if best is None:
            best_err, best = err, p
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = tuple(torch.where(better, a, b) for a, b in zip(p, best))
    return best


class UniformQuantizer:
    def __init__(self, bits: int) -> None:
        self.qmax = (1 << bits) - 1

    def params_for(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = ((hi - lo) / self.qmax).clamp_min(1e-8).half().float()
        return scale, lo.half().float()

    def qdq(self, w: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        scale, mn = (p.unsqueeze(-1) if p.dim() < w.dim() else p for p in params)
        q = torch.clamp(torch.round((w - mn) / scale), 0, self.qmax)
        return q, q * scale + mn

    def fit(self, wg: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """wg: [..., g] -> params for each group; clip ratio searched for the lowest (weighted) error."""
        lo, hi = wg.amin(-1), wg.amax(-1)
        mid = (lo + hi) / 2
        # shrink the range around its centre (asymmetric: zero need not be inside)
        candidates = (self.params_for(mid + (lo - mid) * f, mid + (hi - mid) * f) for f in CLIP_GRID)
        return best_clip(self.qdq, wg, weight, candidates)


class SymQuantizer:
    """Symmetric 4-bit: w = scale * q, q in [-8, 7] (code u = q + 8), fp16 scale of either sign: as Q4_0, the
    larger-magnitude side of the group can use -8 (scale = extreme / -8) or the other side 7 (extreme / 7)."""

    def __init__(self, bits: int = 4) -> None:
        self.lo, self.hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def qdq(self, w: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        (scale,) = (p.unsqueeze(-1) if p.dim() < w.dim() else p for p in params)
        safe = torch.where(scale.abs() < 1e-12, torch.full_like(scale, 1e-12), scale)
        q = torch.clamp(torch.round(w / safe), self.lo, self.hi)
        return q - self.lo, q * scale

    def fit(self, wg: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """wg: [..., g] -> (scale,) per group; clip ratio and side (-8 or 7 on the extreme) searched."""
        idx = wg.abs().argmax(-1, keepdim=True)
        ext = torch.gather(wg, -1, idx).squeeze(-1)  # the signed value of largest magnitude
        cands = [((ext * f / den).half().float(),) for f in CLIP_GRID for den in (self.lo, self.hi)]
        return best_clip(self.qdq, wg, weight, cands)


class AfpqQuantizer:
    def __init__(self, bits: int) -> None:
        fmt = AFPQ_FORMATS[bits]
        self.mags = torch.tensor(fmt["mags"], dtype=torch.float32) * fmt["unit"]  # real magnitudes
        self.cmax = float(self.mags[-1])

    def qdq(self, w: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        sp, sn = (p.unsqueeze(-1) if p.dim() < w.dim() else p for p in params)
        neg = w < 0
        s = torch.where(neg, sn, sp).clamp_min(1e-12)
        a = (w.abs() / s).unsqueeze(-1)
        idx = (a - self.mags).abs().argmin(-1)
        mag = self.mags[idx] * s
        codes = idx + neg.to(idx.dtype) * 8
        return codes, torch.where(neg, -mag, mag) * (torch.where(neg, sn, sp) > 0)

    def fit(self, wg: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        pos = wg.clamp_min(0).amax(-1) / self.cmax
        neg = (-wg).clamp_min(0).amax(-1) / self.cmax
        candidates = (((pos * f).half().float(), (neg * f).half().float()) for f in CLIP_GRID)
        return best_clip(self.qdq, wg, weight, candidates)


class TernaryQuantizer:
    """BitNet-style absmean: one scale per row (the whole row is one 'group')."""

    def qdq(self, w: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        (scale,) = (p.unsqueeze(-1) if p.dim() < w.dim() else p for p in params)
        q = torch.clamp(torch.round(w / scale.clamp_min(1e-12)), -1, 1)
        return q, q * scale

    def fit(self, w: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return (w.abs().mean(-1).clamp_min(1e-8).float(),)


def make_quantizer(scheme: Scheme):
    if scheme.kind == "uniform":
        return UniformQuantizer(scheme.bits)
    if scheme.kind == "sym":
        return SymQuantizer(scheme.bits)
    if scheme.kind == "afpq":
        return AfpqQuantizer(scheme.bits)
    return TernaryQuantizer()


@dataclass
class QuantResult:
    """Codes [N, Kp] (padded columns hold code 0 / w = 0) and per-group parameters, plus the dequantized W."""

    codes: torch.Tensor
    params: tuple[torch.Tensor, ...]
    dequant: torch.Tensor  # [N, K] float32


def pad_columns(w: torch.Tensor, kp: int) -> torch.Tensor:
    """Pad with the row's last value: group min/max (hence the real weights' codes) are unchanged."""
    K = w.shape[1]
    if kp == K:
        return w
    return torch.cat([w, w[:, -1:].expand(-1, kp - K)], dim=1)


def rtn_quantize(scheme: Scheme, w: torch.Tensor, col_weight: torch.Tensor | None = None) -> QuantResult:
    """Round-to-nearest with a per-group clip search (optionally weighted by E[x^2] per column)."""
    w = w.detach().float()
    N, K = w.shape
    kp = padded_k(scheme, K)
    qz = make_quantizer(scheme)
    if scheme.kind == "ternary":
        params = qz.fit(w)
        q, dq = qz.qdq(w, params)
        codes = torch.zeros(N, kp)
        codes[:, :K] = q
        return QuantResult(codes.to(torch.int8), params, dq)
    g = scheme.group_size
    wp = pad_columns(w, kp).view(N, kp // g, g)
    cw = None
    if col_weight is not None:
        cw = torch.nn.functional.pad(col_weight.float(), (0, kp - K)).view(1, kp // g, g)
    params = qz.fit(wp, cw)
    q, dq = qz.qdq(wp, params)
    codes = q.view(N, kp).to(torch.uint8)
    return QuantResult(codes, params, dq.view(N, kp)[:, :K].contiguous())


# ---------------------------------------------------------------------------------------------------------
# Packing (codes + params -> tensors saved in checkpoints) and the inverse.
# ---------------------------------------------------------------------------------------------------------
def pack(scheme: Scheme, res: QuantResult, N: int, K: int) -> dict[str, torch.Tensor]:
    kp = padded_k(scheme, K)
    if scheme.kind == "uniform":
        return {"qweight": _pack_uniform(res.codes, res.params[0], res.params[1], scheme.bits, scheme.group_size)}
    if scheme.kind == "sym":
        return {"qweight": pack_sym(res.codes, res.params[0], scheme.group_size)}
    if scheme.kind == "ternary":
        return {"qweight": _pack_i2s(res.codes.to(torch.int8)), "wscale": res.params[0].float().contiguous()}
    g = scheme.group_size
    scales = torch.stack([res.params[0], res.params[1]], dim=-1).half().contiguous()  # [N, nG, 2]
    assert scales.shape == (N, kp // g, 2)
    if scheme.bits == 3:
        return {"qweight": _pack_fp3(res.codes), "scales": scales}
    c = res.codes.view(N, kp // 64, 2, 32)
    qweight = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(N, kp // 2).contiguous()
    return {"qweight": qweight, "scales": scales}


_BITS8 = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8)


def _pack_fp3(codes: torch.Tensor) -> torch.Tensor:
    """4-bit AFPQ codes (index | 8 * sign, index 0-3) -> 3 bit planes per 64 columns: [N, kp * 3 / 8] uint8."""
    N, kp = codes.shape
    c3 = (codes & 3) | ((codes >> 3) << 2)
    planes = [((c3 >> p) & 1).view(N, kp // 64, 8, 8) for p in range(3)]
    b = torch.stack([(pl * _BITS8).sum(-1, dtype=torch.uint8) for pl in planes], dim=2)  # [N, kp/64, 3, 8]
    return b.reshape(N, kp // 64 * 24).contiguous()


def _unpack_fp3(qweight: torch.Tensor) -> torch.Tensor:
    N, nb = qweight.shape[0], qweight.shape[1] // 24
    b = ((qweight.view(N, nb, 3, 8, 1) & _BITS8) > 0).to(torch.uint8).view(N, nb, 3, 64)
    return (b[:, :, 0] | (b[:, :, 1] << 1) | (b[:, :, 2] << 3)).view(N, nb * 64)


def expected_shapes(scheme: Scheme, N: int, K: int) -> dict[str, tuple[int, ...]]:
    kp = padded_k(scheme, K)
    if scheme.kind == "uniform":
        return {"qweight": (uniform_packed_bytes(N, kp, scheme.group_size, scheme.bits),)}
    if scheme.kind == "sym":
        return {"qweight": (sym_packed_bytes(N, kp, scheme.group_size),)}
    if scheme.kind == "ternary":
        return {"qweight": (N, kp // 4), "wscale": (N,)}
    return {"qweight": (N, kp * scheme.bits // 8), "scales": (N, kp // scheme.group_size, 2)}


def uniform_packed_bytes(N: int, kp: int, g: int, bits: int) -> int:
    return (N + 15) // 16 * (kp // g) * ((g // 32) * bits * 64 + 64)


def _pack_uniform(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, bits: int, g: int) -> torch.Tensor:
    N, kp = codes.shape
    npad = (N + 15) // 16 * 16
    nR, nG, nC, cpg = npad // 16, kp // g, kp // 32, g // 32
    q = torch.zeros(npad, kp, dtype=torch.uint8)
    q[:N] = codes
    s16 = torch.zeros(npad, nG, dtype=torch.float16)
    m16 = torch.zeros(npad, nG, dtype=torch.float16)
    s16[:N], m16[:N] = scale.half(), mn.half()
    sh = torch.tensor([1, 2, 4, 8], dtype=torch.uint8)
    planes = []
    for i in range(bits):
        b = ((q >> i) & 1).view(npad, kp // 4, 4)
        planes.append((b * sh).sum(-1, dtype=torch.uint8))  # idx [npad, kp/4]
    idx = torch.stack(planes)  # [b, npad, kp/4]
    idx = idx.view(bits, nR, 16, nC, 2, 4).permute(1, 3, 0, 2, 5, 4)  # [nR, nC, b, r, s, h]
    byte = (idx[..., 0] | (idx[..., 1] << 4)).reshape(nR, nG, cpg * bits * 64)
    sc = s16.view(nR, 16, nG).transpose(1, 2).contiguous().view(torch.uint8)  # [nR, nG, 32]
    mb = m16.view(nR, 16, nG).transpose(1, 2).contiguous().view(torch.uint8)
    return torch.cat([byte, sc, mb], dim=-1).reshape(-1).contiguous()


def unpack_uniform(packed: torch.Tensor, N: int, kp: int, bits: int, g: int):
    """-> codes [N, kp] uint8, scale [N, nG] fp32, min [N, nG] fp32."""
    npad = (N + 15) // 16 * 16
    nR, nG, nC, cpg = npad // 16, kp // g, kp // 32, g // 32
    blk = packed.view(nR, nG, cpg * bits * 64 + 64)
    byte = blk[..., : cpg * bits * 64].reshape(nR, nC, bits, 16, 4)
    idx = torch.stack([byte & 15, byte >> 4], dim=-1)  # [nR, nC, b, r, s, h]
    idx = idx.permute(2, 0, 3, 1, 5, 4).reshape(bits, npad, kp // 4)
    codes = torch.zeros(npad, kp // 4, 4, dtype=torch.uint8)
    for i in range(bits):
        for j in range(4):
            codes[..., j] |= ((idx[i] >> j) & 1) << i
    tail = blk[..., cpg * bits * 64 :].contiguous()
    s16 = tail[..., :32].contiguous().view(torch.float16).view(nR, nG, 16).transpose(1, 2).reshape(npad, nG)
    m16 = tail[..., 32:].contiguous().view(torch.float16).view(nR, nG, 16).transpose(1, 2).reshape(npad, nG)
    return codes.view(npad, kp)[:N], s16[:N].float(), m16[:N].float()


def int8_layout(qweight: torch.Tensor, N: int, kp: int, bits: int, g: int) -> torch.Tensor:
    """The int8 kernel's layout (csrc/int8kernels.cpp) of a canonical uniform ``qweight``; the same size.
    Per 16-row block, per group: ``g / 4 / F`` vectors of 64 bytes (``F = 8 / bits``), byte ``j`` of vector
    ``v`` holding in bits ``[bits*i, bits*i + bits)`` the code of row ``j // 4``, column ``4 * (v*F + i) + j % 4``;
    then the group's 16 fp16 scales and 16 fp16 mins."""
    if bits not in (2, 4):
        raise ValueError(f"the int8 kernel takes 2- or 4-bit weights, not {bits}-bit")
    rows = 1024  # converted in slices of 64 row blocks: bounded temporary memory for 150k-row heads
    if N > rows:
        blk = uniform_packed_bytes(16, kp, g, bits)  # bytes per 16-row block, the same in both layouts
        flat = qweight.reshape(-1)
        return torch.cat([int8_layout(flat[r // 16 * blk : (min(r + rows, N) + 15) // 16 * blk],
                                      min(rows, N - r), kp, bits, g) for r in range(0, N, rows)])
    codes, s, m = unpack_uniform(qweight, N, kp, bits, g)
    npad = (N + 15) // 16 * 16
    nR, nG, F = npad // 16, kp // g, 8 // bits
    nv = g // 4 // F
    q = torch.zeros(npad, kp, dtype=torch.uint8)
    q[:N] = codes
    c = q.view(nR, 16, nG, nv, F, 4).permute(0, 2, 3, 4, 1, 5).to(torch.int32)  # [nR, nG, nv, F, 16, 4]
    shifts = torch.tensor([bits * i for i in range(F)], dtype=torch.int32).view(1, 1, 1, F, 1, 1)
    byte = (c << shifts).sum(3).to(torch.uint8).reshape(nR, nG, nv * 64)
    s16 = torch.zeros(npad, nG, dtype=torch.float16)
    m16 = torch.zeros(npad, nG, dtype=torch.float16)
    s16[:N], m16[:N] = s.half(), m.half()
    sc = s16.view(nR, 16, nG).transpose(1, 2).contiguous().view(torch.uint8)  # [nR, nG, 32]
    mb = m16.view(nR, 16, nG).transpose(1, 2).contiguous().view(torch.uint8)
    return torch.cat([byte, sc, mb], dim=-1).reshape(-1).contiguous()


def sym_packed_bytes(N: int, kp: int, g: int) -> int:
    return (N + 15) // 16 * (kp // g) * (8 * g + 32)


def pack_sym(codes: torch.Tensor, scale: torch.Tensor, g: int) -> torch.Tensor:
    """Symmetric 4-bit codes u [N, kp] (0-15) and fp16-exact scales [N, kp / g] -> the flat uint8 layout
    (module docstring; the int8 kernel's 4-bit code vectors, then 16 fp16 scales per group)."""
    N, kp = codes.shape
    npad = (N + 15) // 16 * 16
    nR, nG, nv = npad // 16, kp // g, g // 8
    q = torch.zeros(npad, kp, dtype=torch.uint8)
    q[:N] = codes
    c = q.view(nR, 16, nG, nv, 2, 4).permute(0, 2, 3, 4, 1, 5)  # [nR, nG, nv, nibble, row, col % 4]
    byte = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).reshape(nR, nG, nv * 64)
    s16 = torch.zeros(npad, nG, dtype=torch.float16)
    s16[:N] = scale.half()
    sc = s16.view(nR, 16, nG).transpose(1, 2).contiguous().view(torch.uint8)  # [nR, nG, 32]
    return torch.cat([byte, sc], dim=-1).reshape(-1).contiguous()


def unpack_sym(packed: torch.Tensor, N: int, kp: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> codes u [N, kp] uint8 (w = scale * (u - 8)), scale [N, kp / g] fp32."""
    npad = (N + 15) // 16 * 16
    nR, nG, nv = npad // 16, kp // g, g // 8
    blk = packed.view(nR, nG, nv * 64 + 32)
    byte = blk[..., : nv * 64].reshape(nR, nG, nv, 1, 16, 4)
    c = torch.cat([byte & 15, byte >> 4], dim=3)  # [nR, nG, nv, 2, 16, 4]
    codes = c.permute(0, 4, 1, 2, 3, 5).reshape(npad, kp)
    s16 = blk[..., nv * 64 :].contiguous().view(torch.float16).view(nR, nG, 16).transpose(1, 2).reshape(npad, nG)
    return codes[:N].contiguous(), s16[:N].float()


def sym_as_uniform(scheme: Scheme, qweight: torch.Tensor, N: int, kp: int) -> tuple[Scheme, torch.Tensor]:
    """The same weights as the asymmetric ``w4g{group}`` format (min = -8 scale, exact in fp16): what the
    LUT kernels run on CPUs without AVX512-VNNI. Returns (that scheme, its canonical qweight)."""
    g = scheme.group_size
    twin = Scheme(f"w4g{g}", "uniform", 4, g, "lut")
    rows, blk = 1024, sym_packed_bytes(16, kp, g)  # in slices of 64 row blocks: bounded temporary memory
    flat = qweight.reshape(-1)
    parts = []
    for r in range(0, N, rows):
        n = min(rows, N - r)
        codes, s = unpack_sym(flat[r // 16 * blk : (r + n + 15) // 16 * blk], n, kp, g)
        parts.append(_pack_uniform(codes, s, s * -8.0, 4, g))
    return twin, torch.cat(parts)


def int8_ternary_layout(qweight: torch.Tensor, wscale: torch.Tensor) -> torch.Tensor:
    """The ternary int8 kernel's layout of I2_S weights (``qweight`` [N, Kp / 4], ``wscale`` [N]), the same
    size: per 16-row block ``Kp / 16`` vectors of 64 bytes (2-bit codes ``w + 1``, arranged as in
    :func:`int8_layout`), then the 16 rows' fp32 scales."""
    N, kp = qweight.shape[0], qweight.shape[1] * 4
    if N > 1024:  # in slices of 64 row blocks: bounded temporary memory
        return torch.cat([int8_ternary_layout(qweight[r : r + 1024], wscale[r : r + 1024]) for r in range(0, N, 1024)])
    npad = (N + 15) // 16 * 16
    nR, nv = npad // 16, kp // 16
    q = torch.zeros(npad, kp, dtype=torch.int32)
    q[:N] = (unpack_i2s(qweight) + 1).to(torch.int32)
    c = q.view(nR, 16, nv, 4, 4).permute(0, 2, 3, 1, 4)  # [nR, nv, F, 16, 4]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int32).view(1, 1, 4, 1, 1)
    byte = (c << shifts).sum(2).to(torch.uint8).reshape(nR, nv * 64)
    ws = torch.zeros(npad, dtype=torch.float32)
    ws[:N] = wscale.float()
    return torch.cat([byte, ws.view(nR, 16).view(torch.uint8)], dim=1).reshape(-1).contiguous()


def int8_layout_inverse(layout: torch.Tensor, N: int, kp: int, bits: int, g: int) -> torch.Tensor:
    """The canonical ``qweight`` back from :func:`int8_layout` (exact: codes and fp16 parameters are kept)."""
    npad = (N + 15) // 16 * 16
    nR, nG, F = npad // 16, kp // g, 8 // bits
    nv = g // 4 // F
    blk = layout.view(nR, nG, nv * 64 + 64)
    byte = blk[..., : nv * 64].reshape(nR, nG, nv, 1, 16, 4).to(torch.int32)
    shifts = torch.tensor([bits * i for i in range(F)], dtype=torch.int32).view(1, 1, 1, F, 1, 1)
    c = ((byte >> shifts) & ((1 << bits) - 1)).to(torch.uint8)  # [nR, nG, nv, F, 16, 4]
    codes = c.permute(0, 4, 1, 2, 3, 5).reshape(npad, kp)
    tail = blk[..., nv * 64 :].contiguous()
    s16 = tail[..., :32].contiguous().view(torch.float16).view(nR, nG, 16).transpose(1, 2).reshape(npad, nG)
    m16 = tail[..., 32:].contiguous().view(torch.float16).view(nR, nG, 16).transpose(1, 2).reshape(npad, nG)
    return _pack_uniform(codes[:N], s16[:N].float(), m16[:N].float(), bits, g)


def int8_ternary_layout_inverse(layout: torch.Tensor, N: int, kp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """I2_S ``qweight`` [N, kp / 4] and ``wscale`` [N] back from :func:`int8_ternary_layout` (exact)."""
    npad = (N + 15) // 16 * 16
    nR, nv = npad // 16, kp // 16
    blk = layout.view(nR, nv * 64 + 64)
    byte = blk[:, : nv * 64].reshape(nR, nv, 1, 16, 4).to(torch.int32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int32).view(1, 1, 4, 1, 1)
    c = (byte >> shifts) & 3  # [nR, nv, F, 16, 4]
    codes = (c.permute(0, 3, 1, 2, 4).reshape(npad, kp)[:N] - 1).to(torch.int8)
    ws = blk[:, nv * 64 :].contiguous().view(torch.float32).reshape(npad)[:N].clone()
    return _pack_i2s(codes), ws


INT8_ACT_BLOCK = 32  # columns per int8 activation scale in the int8 kernel (as llama.cpp's Q8_0)


def int8_gemm_reference(scheme: Scheme, qweight: torch.Tensor, x: torch.Tensor, N: int) -> torch.Tensor:
    """What the int8 kernel computes, in float64 (x: float32 [M, Kp], padded): activations rounded to int8
    per block of 32 columns (scale max|x_b| / 127, round half to even), integer dot products with the codes,
    and the codes centred on c = (2^bits - 1) / 2 through the float activation sums: per weight group,
    s * (sum_b d_b * (a_b . q_b) + c * (sum x - sum_b d_b * sum a_b)) + min * sum x, i.e.
    s * sum_k (q_k - c) * d_b a_k + (min + c s) * sum_k x_k (only the rounding of a is lossy)."""
    M, kp = x.shape
    g, ab = scheme.group_size, INT8_ACT_BLOCK
    codes, s, mn = unpack_uniform(qweight, N, kp, scheme.bits, g)
    c = (2**scheme.bits - 1) / 2
    a, asc = _quant_act(x, ab)  # [M, kp], [M, kp / 32]
    adq = (a.double().view(M, kp // ab, ab) * asc.double().unsqueeze(-1)).view(M, kp // g, g)
    dot = (adq.unsqueeze(1) * (codes.double().view(1, N, kp // g, g) - c)).sum(-1)  # [M, N, nG]
    sx = x.double().view(M, kp // g, g).sum(-1)  # [M, nG]
    y = dot * s.double().unsqueeze(0) + (mn.double() + c * s.double()).unsqueeze(0) * sx.unsqueeze(1)
    return y.sum(-1).float()


def int8_sym_gemm_reference(scheme: Scheme, qweight: torch.Tensor, x: torch.Tensor, N: int) -> torch.Tensor:
    """What the symmetric int8 kernel computes, in float64 (x: float32 [M, Kp], padded): activations rounded to
    int8 per block of 32 columns as in :func:`int8_gemm_reference`, then y = sum_G s_G sum_b d_b (a_b . q_b) with
    q = u - 8 (the integer dot products are exact; only the rounding of the activations is lossy)."""
    M, kp = x.shape
    g, ab = scheme.group_size, INT8_ACT_BLOCK
    codes, s = unpack_sym(qweight, N, kp, g)
    a, asc = _quant_act(x, ab)
    adq = (a.double().view(M, kp // ab, ab) * asc.double().unsqueeze(-1)).view(M, kp // g, g)
    dot = (adq.unsqueeze(1) * (codes.double().view(1, N, kp // g, g) - 8)).sum(-1)  # [M, N, nG]
    return (dot * s.double().unsqueeze(0)).sum(-1).float()


def _pack_i2s(codes: torch.Tensor) -> torch.Tensor:
    N, kp = codes.shape
    c = (codes.to(torch.int16) + 1).to(torch.uint8).view(N, kp // 128, 4, 32)
    return ((c[:, :, 0] << 6) | (c[:, :, 1] << 4) | (c[:, :, 2] << 2) | c[:, :, 3]).reshape(N, kp // 4).contiguous()


def unpack_i2s(qweight: torch.Tensor) -> torch.Tensor:
    """-> ternary int8 [N, kp]."""
    N, nb = qweight.shape[0], qweight.shape[1] // 32
    v = qweight.view(N, nb, 1, 32)
    sh = torch.tensor([6, 4, 2, 0], dtype=torch.uint8).view(1, 1, 4, 1)
    return (((v >> sh) & 3).to(torch.int8) - 1).view(N, nb * 128)


def tl_layout(ternary: torch.Tensor, K: int) -> torch.Tensor:
    """TL kernel layout from ternary codes [N, >=K]: int16 [ceil(N/32), Kt/9, 32], Kt = K rounded up to 9."""
    N = ternary.shape[0]
    kt = (K + 8) // 9 * 9
    npad = (N + 31) // 32 * 32
    w = torch.zeros(npad, kt, dtype=torch.int16)
    w[:N, :K] = ternary[:, :K].to(torch.int16)
    t = (w + 1).view(npad, kt // 3, 3)
    idx = t[..., 0] * 9 + t[..., 1] * 3 + t[..., 2]  # [npad, kt/3]
    idx = idx.view(npad, kt // 9, 3)
    words = idx[..., 0] | (idx[..., 1] << 5) | (idx[..., 2] << 10)  # [npad, kt/9]
    return words.view(npad // 32, 32, kt // 9).transpose(1, 2).contiguous()


def unpack_afpq(qweight: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """-> 4-bit codes [N, kp] (magnitude index | 8 * sign) from either packing."""
    if bits == 3:
        return _unpack_fp3(qweight)
    N, half = qweight.shape
    v = qweight.view(N, half // 32, 1, 32)
    return torch.cat([v & 15, v >> 4], dim=2).view(N, half * 2)


def dequantize(scheme: Scheme, packed: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
    """The float32 [N, K] weight the packed tensors represent (the kernels' reference)."""
    kp = padded_k(scheme, K)
    if scheme.kind == "uniform":
        codes, s, m = unpack_uniform(packed["qweight"], N, kp, scheme.bits, scheme.group_size)
        g = scheme.group_size
        w = codes.float().view(N, kp // g, g) * s.unsqueeze(-1) + m.unsqueeze(-1)
        return w.view(N, kp)[:, :K].contiguous()
    if scheme.kind == "sym":
        codes, s = unpack_sym(packed["qweight"], N, kp, scheme.group_size)
        g = scheme.group_size
        w = (codes.float().view(N, kp // g, g) - 8) * s.unsqueeze(-1)
        return w.view(N, kp)[:, :K].contiguous()
    if scheme.kind == "ternary":
        return (unpack_i2s(packed["qweight"]).float() * packed["wscale"].unsqueeze(1))[:, :K].contiguous()
    codes = unpack_afpq(packed["qweight"], scheme.bits).long()
    fmt = AFPQ_FORMATS[scheme.bits]
    mags = torch.tensor(fmt["mags"] + (0,) * (8 - len(fmt["mags"])), dtype=torch.float32) * fmt["unit"]
    g = scheme.group_size
    sc = packed["scales"].float()  # [N, nG, 2]
    neg = (codes & 8) > 0
    mag = mags[codes & 7].view(N, kp // g, g)
    s = torch.where(neg.view(N, kp // g, g), sc[..., 1:2], sc[..., 0:1])
    w = torch.where(neg.view(N, kp // g, g), -mag, mag) * s
    return w.view(N, kp)[:, :K].contiguous()


# ---------------------------------------------------------------------------------------------------------
# GEMM: y[M, N] = x[M, Kp] @ W^T through the native library or the PyTorch emulation of the same arithmetic.
# ---------------------------------------------------------------------------------------------------------
def afpq_mag_table(bits: int) -> torch.Tensor:
    mags = AFPQ_FORMATS[bits]["mags"]
    t = list(mags) + [0] * (8 - len(mags))
    return torch.tensor(t + t, dtype=torch.uint8)  # the sign bit (8) indexes the same magnitudes


def gemm(
    scheme: Scheme,
    packed: dict[str, torch.Tensor],
    x: torch.Tensor,
    N: int,
    K: int,
    path: str | None = None,
    threads: int | None = None,
    tables: str | None = None,
) -> torch.Tensor:
    """x: float32 [M, K] contiguous (zero-padded to the scheme's K multiple here). Returns float32 [M, N].

    ``tables`` (uniform formats): ``int8`` (fast) or ``float`` (exact); default from ``MIMO_QUANT_TABLES``.
    Uniform weights whose ``packed`` also holds an ``int8`` layout (:func:`int8_layout`, added by
    ``QuantLinear`` where :func:`native.int8_kernel_for` says so) run the int8-activation kernel instead of
    the int8 LUT tables on the avx512 path (for every M, so that a layer computes the same at any M).
    Symmetric ``w4g{g}s`` weights run the symmetric int8 kernel where :func:`sym_native` says so, else the LUT
    kernel on their ``w4g{g}`` twin (``packed["lut"]`` when ``QuantLinear`` built it, else converted here).
    """
    path = path or native.kernel_path()
    mode = native.table_mode(tables)
    if scheme.kind == "sym" and not (path == "torch" and mode == "int8") and not sym_native(path, mode):
        kp = padded_k(scheme, K)
        twin, lut = (Scheme(f"w4g{scheme.group_size}", "uniform", 4, scheme.group_size, "lut"), packed["lut"]) \
            if "lut" in packed else sym_as_uniform(scheme, packed["qweight"], N, kp)
        return gemm(twin, {"qweight": lut}, x, N, K, path, threads, tables)
    kp = padded_k(scheme, K)
    x = x.float().contiguous()
    if x.shape[1] != K:
        raise ValueError(f"activation has {x.shape[1]} features, the layer expects {K}")
    if scheme.kind != "ternary" and kp != K:
        x = torch.nn.functional.pad(x, (0, kp - K))
    if path == "torch" and scheme.kind == "sym":  # the symmetric int8 kernel's arithmetic
        return int8_sym_gemm_reference(scheme, packed["qweight"], x, N)
    if path == "torch":
        return _gemm_torch(scheme, packed, x, N, K, mode)  # the canonical layout: LUT arithmetic
    lib = native.library()
    pid = native.PATHS.index(path)
    nt = threads or native.num_threads()
    M = x.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    if scheme.kind == "sym":
        rc = lib.lk_int8_sym_gemm(packed["qweight"].data_ptr(), x.data_ptr(), y.data_ptr(), M, N, kp,
                                  scheme.group_size, nt)
    elif scheme.kind == "uniform" and "int8" in packed and mode == "int8" and path == "avx512":
        rc = lib.lk_int8_gemm(packed["int8"].data_ptr(), x.data_ptr(), y.data_ptr(), M, N, kp, scheme.group_size,
                              scheme.bits, nt)
    elif scheme.kind == "uniform":
        rc = lib.lk_lut_gemm(packed["qweight"].data_ptr(), x.data_ptr(), y.data_ptr(), M, N, kp,
                             scheme.group_size, scheme.bits, pid, nt, native.TABLES.index(mode))
    elif scheme.kernel == "i2s" and "int8" in packed and path == "avx512":  # same integers as I2_S, faster
        rc = lib.lk_int8_ternary_gemm(packed["int8"].data_ptr(), x.data_ptr(), y.data_ptr(), M, N, K, nt)
    elif scheme.kernel == "i2s":
        rc = lib.lk_i2s_gemm(packed["qweight"].data_ptr(), packed["wscale"].data_ptr(), x.data_ptr(),
                             y.data_ptr(), M, N, K, pid, nt)
    elif scheme.kernel == "tl":
        tl = packed.get("tl")
        if tl is None:
            raise ValueError("ternary-tl weights need their TL layout (QuantLinear builds it at load)")
        rc = lib.lk_tl_gemm(tl.data_ptr(), packed["wscale"].data_ptr(), x.data_ptr(), y.data_ptr(),
                            M, N, K, pid, nt)
    else:
        mag = afpq_mag_table(scheme.bits)
        unit = AFPQ_FORMATS[scheme.bits]["unit"]
        rc = lib.lk_fp_gemm(packed["qweight"].data_ptr(), packed["scales"].data_ptr(), mag.data_ptr(), unit,
                            x.data_ptr(), y.data_ptr(), M, N, kp, scheme.group_size, pid, nt, scheme.bits)
    if rc != 0:
        raise RuntimeError(f"native kernel rejected the shapes (scheme {scheme.name}, N={N}, K={K})")
    return y


def sym_native(path: str | None = None, tables: str | None = None) -> bool:
    """Whether symmetric ``w4g{g}s`` weights run the native symmetric int8 kernel here: the int8 kernel is chosen
    for 4-bit weights (:func:`native.int8_kernel_for`), on the avx512 path with int8 tables, and the library
    has the kernel; otherwise they run as their asymmetric ``w4g{g}`` twin on the LUT kernels."""
    path = path or native.kernel_path()
    return (path == "avx512" and native.table_mode(tables) == "int8" and native.int8_sym_supported()
            and native.int8_kernel_for(4))


_SIGNS = torch.tensor([[1.0 if (i >> j) & 1 else -1.0 for j in range(4)] for i in range(16)])


def lut_tables_torch(x: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's int8 tables: q [M, K/4, 16] (int32), lscale [M, K/g], sumx [M, K/g]; same rounding."""
    M, kp = x.shape
    xg = x.view(M, kp // 4, 1, 4)
    S = _SIGNS.view(1, 1, 16, 4)
    e = ((S[..., 0] * xg[..., 0] + S[..., 1] * xg[..., 1]) + S[..., 2] * xg[..., 2]) + S[..., 3] * xg[..., 3]
    a = x.abs().view(M, kp // 4, 4)
    mag = ((a[..., 0] + a[..., 1]) + a[..., 2]) + a[..., 3]
    mx = mag.view(M, kp // g, g // 4).amax(-1)
    inv = torch.where(mx > 0, torch.full_like(mx, 127.0) / mx, torch.zeros_like(mx))
    invt = inv.repeat_interleave(g // 4, dim=1).unsqueeze(-1)
    q = torch.round(e * invt).to(torch.int32)
    return q, mx / 127.0, x.view(M, kp // g, g).sum(-1)


def _quant_act(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    M, K = x.shape
    xg = x.view(M, K // group, group)
    mx = xg.abs().amax(-1, keepdim=True)
    inv = torch.where(mx > 0, torch.full_like(mx, 127.0) / mx, torch.zeros_like(mx))
    q = torch.round(xg * inv).clamp(-127, 127)
    return q.view(M, K), (mx / 127.0).squeeze(-1)


def _gemm_torch(scheme: Scheme, packed: dict[str, torch.Tensor], x: torch.Tensor, N: int, K: int,
                tables: str = "int8") -> torch.Tensor:
    M, kp = x.shape[0], padded_k(scheme, K)
    if scheme.kind == "uniform" and tables == "float":  # exact tables: the float product (in float64)
        w = dequantize(scheme, packed, N, K)
        return (x[:, :K].double() @ w.double().T).float()
    if scheme.kind == "uniform":
        b, g = scheme.bits, scheme.group_size
        codes, s, mn = unpack_uniform(packed["qweight"], N, kp, b, g)
        tq, lsc, sx = lut_tables_torch(x, g)
        c4 = codes.view(N, kp // 4, 4).long()
        comb = torch.zeros(M, N, kp // g, dtype=torch.int64)
        t_idx = torch.arange(kp // 4).view(1, -1)
        for i in range(b):
            idx = sum(((c4[..., j] >> i) & 1) << j for j in range(4))  # [N, kp/4]
            for m in range(M):
                v = tq[m][t_idx, idx]  # [N, kp/4]
                comb[m] += v.view(N, kp // g, g // 4).sum(-1).long() << i
        half = 0.5 * ((1 << b) - 1)
        c = s * half + mn  # [N, nG]
        y = comb.double() * (s.double().unsqueeze(0) * (lsc.double() * 0.5).unsqueeze(1))
        y = y + c.double().unsqueeze(0) * sx.double().unsqueeze(1)
        return y.sum(-1).float()
    if scheme.kind == "ternary":
        w = unpack_i2s(packed["qweight"])[:, :K].double()
        mx = x.abs().amax(-1, keepdim=True)
        inv = torch.where(mx > 0, torch.full_like(mx, 127.0) / mx, torch.zeros_like(mx))
        a = torch.round(x * inv).clamp(-127, 127)
        dot = (a.double() @ w.T).float()
        return dot * (packed["wscale"].unsqueeze(0) * (mx / 127.0))
    g = scheme.group_size
    a, asc = _quant_act(x, g)  # [M, kp], [M, nG]
    codes = unpack_afpq(packed["qweight"], scheme.bits).long()
    mag = afpq_mag_table(scheme.bits).double()[codes]  # [N, kp]
    negm = mag * ((codes & 8) > 0)
    ag = a.double().view(M, 1, kp // g, g)
    tot = (ag * mag.view(1, N, kp // g, g)).sum(-1)
    neg = (ag * negm.view(1, N, kp // g, g)).sum(-1)
    sc = packed["scales"].double()
    d = (tot - neg) * sc[..., 0] - neg * sc[..., 1]
    unit = AFPQ_FORMATS[scheme.bits]["unit"]
    return (d * asc.double().unsqueeze(1) * unit).sum(-1).float()
