"""``PackedMatrix``: one weight matrix (possibly several fused: QKV, gate/up) = one kernel call per product.

The generic ``QuantLinear.forward`` pays for flexibility on every call (env look-ups, dtype casts, padding,
a fresh output tensor, a bias add); at a 1024-wide layer that overhead is as large as the kernel. Here the
kernel, its pointers and the thread count are resolved once, the output goes to a caller-owned buffer, and
several projections that read the same input share one packed matrix (their packed rows are concatenated:
the kernels compute every output row independently, so the result equals the separate products exactly).

Kinds: ``lut`` (uniform ``w{b}g{g}``, T-MAC LUT kernel; on AVX512-VNNI CPUs the int8-activation kernel
for the bit widths :func:`efficient.quant.native.int8_kernel_for` selects, at every M), ``sym`` (symmetric
``w4g{g}s``, its int8 kernel; ``fallback`` through its ``w4g{g}`` twin where that kernel does not run),
``i2s`` (ternary), ``dense`` (fp32 or bf16 torch weight: oneDNN, AMX when the CPU has it), ``fallback``
(other schemes, through ``formats.gemm``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from efficient.quant import formats, native
from efficient.quant.formats import QuantResult, Scheme, parse_scheme
from efficient.quant.linear import QuantLinear

_ENV_THREADS = os.environ.get(native.ENV_THREADS)  # read once: the per-call look-up was measurable


def _threads() -> int:
    return max(1, int(_ENV_THREADS)) if _ENV_THREADS else torch.get_num_threads()


class PackedMatrix:
    """y[M, N] = x[M, K] @ W^T (+ bias) for fp32 contiguous ``x``; ``N`` = the sum of the fused parts' rows."""

    def __init__(self, kind: str, N: int, K: int, tensors: dict[str, torch.Tensor], scheme: Scheme | None = None,
                 bias: torch.Tensor | None = None, splits: Sequence[int] | None = None) -> None:
        self.kind, self.N, self.K, self.scheme, self.t = kind, N, K, scheme, tensors
        self.bias = bias.float().contiguous() if bias is not None else None
        self.splits = list(splits) if splits is not None else [N]
        self.threads: int | None = None  # None: native.num_threads() at each call (follows torch)
        self.kp = formats.padded_k(scheme, K) if scheme is not None and scheme.kind != "ternary" else K
        if kind == "sym":
            self._lib = native.library()
            if self._lib is not None and formats.sym_native():
                self._w = self.t["qweight"].data_ptr()
            else:  # the LUT kernels on the asymmetric twin, converted once
                self.kind = "fallback"
                self.t = {**self.t, "lut": formats.sym_as_uniform(scheme, self.t["qweight"], N, self.kp)[1]}
        elif kind in ("lut", "i2s"):
            self._lib = native.library()
            path = native.kernel_path()
            if self._lib is None or path == "torch":
                self.kind = "fallback"
            else:
                self._pid = native.PATHS.index(path)
                self._tmode = native.TABLES.index(native.table_mode())
                # The int8-activation kernel (AVX512-VNNI) where it is chosen: only its layout is kept (the same
                # bytes; canonical() rebuilds the checkpoint layout when something needs it).
                self._i8 = None
                if kind == "lut" and self._tmode == 0 and native.int8_kernel_for(scheme.bits):
                    self._i8 = formats.int8_layout(self.t["qweight"], N, self.kp, scheme.bits, scheme.group_size)
                elif kind == "i2s" and native.int8_kernel_for("ternary"):
                    self._i8 = formats.int8_ternary_layout(self.t["qweight"], self.t["wscale"])
                if self._i8 is not None:
                    self.t = {"int8": self._i8}
                    self._i8p = self._i8.data_ptr()
                else:
                    self._w = self.t["qweight"].data_ptr()
                    self._s = self.t["wscale"].data_ptr() if kind == "i2s" else 0

    def canonical(self) -> dict[str, torch.Tensor]:
        """The packed tensors in the checkpoint layout (``formats.pack``), rebuilt exactly from the int8-kernel
        layout when only that one is kept."""
        if "lut" in self.t:  # symmetric weights' derived twin
            return {k: v for k, v in self.t.items() if k != "lut"}
        if "int8" not in self.t:
            return self.t
        sch = self.scheme
        if sch.kind == "ternary":
            q, ws = formats.int8_ternary_layout_inverse(self.t["int8"], self.N, formats.padded_k(sch, self.K))
            return {"qweight": q, "wscale": ws}
        return {"qweight": formats.int8_layout_inverse(self.t["int8"], self.N, self.kp, sch.bits, sch.group_size)}

    # ------------------------------------------------------------------------------------------ builders
    @classmethod
    def dense(cls, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None] | None = None,
              dtype: torch.dtype = torch.float32) -> PackedMatrix:
        w = torch.cat([t.detach() for t in weights]).to(dtype).contiguous()
        return cls("dense", w.shape[0], w.shape[1], {"w": w}, None, _cat_bias(weights, biases),
                   [t.shape[0] for t in weights])

    @classmethod
    def quantized(cls, scheme: str | Scheme, weights: Sequence[torch.Tensor],
                  biases: Sequence[torch.Tensor | None] | None = None) -> PackedMatrix:
        """Quantize each part (RTN, as ``efficient.quant.quantize``) and fuse the packed parts."""
        sch = scheme if isinstance(scheme, Scheme) else parse_scheme(scheme)
        parts = []
        for w in weights:
            N, K = w.shape
            parts.append(formats.pack(sch, formats.rtn_quantize(sch, w), N, K))
        return cls.from_packed(sch, parts, [w.shape[0] for w in weights], weights[0].shape[1],
                               _cat_bias(weights, biases))

    @classmethod
    def from_packed(cls, scheme: Scheme, parts: Sequence[dict[str, torch.Tensor]], rows: Sequence[int], K: int,
                    bias: torch.Tensor | None = None) -> PackedMatrix:
        """Fuse already packed parts (row counts ``rows``) of one scheme into one matrix."""
        N = sum(rows)
        kind = {"lut": "lut", "i2s": "i2s", "int8": "sym"}.get(scheme.kernel, "fallback")
        if kind in ("lut", "sym") and len(parts) > 1 and any(r % 16 for r in rows[:-1]):
            raise ValueError(f"fusing {scheme.name} matrices needs row counts that are multiples of 16, "
                             f"got {list(rows)}")
        if scheme.kernel == "tl" and len(parts) > 1:
            raise ValueError("ternary-tl matrices cannot be fused (32-row blocks); use 'ternary'")
        names = [k for k in parts[0] if k not in ("tl", "int8", "lut")]  # derived layouts: rebuilt for the fusion
        t = {k: torch.cat([p[k].reshape(-1) if k == "qweight" and kind in ("lut", "sym") else p[k] for p in parts])
             .contiguous() for k in names}
        if scheme.kernel == "tl":
            t["tl"] = parts[0]["tl"]
        return cls(kind, N, K, t, scheme, bias, rows)

    @classmethod
    def from_modules(cls, mods: Sequence[nn.Module], scheme: str | Scheme | None = None,
                     dense_dtype: torch.dtype = torch.float32) -> PackedMatrix:
        """Fuse ``nn.Linear`` / ``QuantLinear`` modules reading the same input. ``nn.Linear`` parts stay dense
        unless ``scheme`` is given; ``QuantLinear`` parts keep their packed codes (all of one scheme)."""
        biases = [m.bias for m in mods]
        if all(isinstance(m, QuantLinear) for m in mods):
            sch = mods[0].scheme
            if any(m.scheme != sch for m in mods):
                raise ValueError("cannot fuse QuantLinear layers of different schemes")
            parts = [{k: v for k, v in m.packed().items()} for m in mods]
            return cls.from_packed(sch, parts, [m.out_features for m in mods], mods[0].in_features,
                                   _cat_bias([torch.empty(m.out_features, 0) for m in mods], biases))
        if any(isinstance(m, QuantLinear) for m in mods):
            raise ValueError("cannot fuse a QuantLinear with an unquantized nn.Linear")
        ws = [m.weight.detach().float() for m in mods]
        if scheme is not None:
            return cls.quantized(scheme, ws, biases)
        return cls.dense(ws, biases, dense_dtype)

    # ------------------------------------------------------------------------------------------ running
    def nbytes(self) -> int:
        """Weight bytes one product reads."""
        skip = {"tl"} if self.scheme is None or self.scheme.kernel != "tl" else set()
        if "lut" in self.t:
            skip.add("qweight")  # the symmetric fallback reads its twin
        return sum(v.numel() * v.element_size() for k, v in self.t.items() if k not in skip)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, bias: bool = True) -> torch.Tensor:
        """``x`` fp32 [M, K] contiguous; ``out`` fp32 [M, N] (allocated when None); ``bias=False`` leaves the
        bias to the caller (the attention step adds it natively)."""
        M = x.shape[0]
        if out is None:
            out = torch.empty(M, self.N, dtype=torch.float32)
        if self.kind == "dense":
            w = self.t["w"]
            if w.dtype == torch.float32:
                torch.mm(x, w.t(), out=out)
            else:
                out.copy_(torch.mm(x.to(w.dtype), w.t()))
        elif self.kind == "fallback":
            out.copy_(formats.gemm(self.scheme, self.t, x, self.N, self.K))
        else:
            nt = self.threads or _threads()
            if self.kp != self.K:  # K not a multiple of the group: zero-pad the activations
                x = F.pad(x, (0, self.kp - self.K))
            if self.kind == "sym":
                rc = self._lib.lk_int8_sym_gemm(self._w, x.data_ptr(), out.data_ptr(), M, self.N, self.kp,
                                                self.scheme.group_size, nt)
            elif self.kind == "lut" and self._i8 is not None:
                rc = self._lib.lk_int8_gemm(self._i8p, x.data_ptr(), out.data_ptr(), M, self.N, self.kp,
                                            self.scheme.group_size, self.scheme.bits, nt)
            elif self.kind == "lut":
                rc = self._lib.lk_lut_gemm(self._w, x.data_ptr(), out.data_ptr(), M, self.N,
                                           self.kp, self.scheme.group_size, self.scheme.bits, self._pid, nt,
                                           self._tmode)
            elif self._i8 is not None:  # ternary through the int8 kernel (same integers as I2_S)
                rc = self._lib.lk_int8_ternary_gemm(self._i8p, x.data_ptr(), out.data_ptr(), M, self.N, self.K, nt)
            else:
                rc = self._lib.lk_i2s_gemm(self._w, self._s, x.data_ptr(), out.data_ptr(), M, self.N, self.K,
                                           self._pid, nt)
            if rc != 0:
                raise RuntimeError(f"native kernel rejected {self.N}x{self.K} ({self.scheme.name})")
        if bias and self.bias is not None:
            out.add_(self.bias)
        return out


def _cat_bias(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None] | None) -> torch.Tensor | None:
    if biases is None or all(b is None for b in biases):
        return None
    return torch.cat([b.detach().float() if b is not None else torch.zeros(w.shape[0])
                      for w, b in zip(weights, biases)])


def random_packed(scheme: str | Scheme, N: int, K: int, seed: int = 0,
                  sample_rows: int = 256) -> dict[str, torch.Tensor]:
    """Valid packed weights of an N x K matrix with random codes (kernel speed does not depend on the values),
    built without a float matrix: ``sample_rows`` random rows are quantized and their packed row blocks copied
    (a real copy: distinct memory) to fill N rows. For benchmarks of official-size models."""
    sch = scheme if isinstance(scheme, Scheme) else parse_scheme(scheme)
    n0 = min(N, sample_rows)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n0, K, generator=g) * 0.02
    if sch.kind == "uniform":  # fast: skip the clip search, plain min/max codes
        kp = formats.padded_k(sch, K)
        wg = formats.pad_columns(w, kp).view(n0, kp // sch.group_size, sch.group_size)
        qz = formats.UniformQuantizer(sch.bits)
        params = qz.params_for(wg.amin(-1), wg.amax(-1))
        q, _ = qz.qdq(wg, params)
        small = formats.pack(sch, QuantResult(q.view(n0, kp).to(torch.uint8), params, torch.empty(0)), n0, K)
    elif sch.kind == "sym":  # fast: skip the clip search, Q4_0's scale (extreme / -8)
        kp = formats.padded_k(sch, K)
        wg = formats.pad_columns(w, kp).view(n0, kp // sch.group_size, sch.group_size)
        ext = torch.gather(wg, -1, wg.abs().argmax(-1, keepdim=True)).squeeze(-1)
        params = ((ext / -8).half().float(),)
        q, _ = formats.SymQuantizer(4).qdq(wg, params)
        small = formats.pack(sch, QuantResult(q.view(n0, kp).to(torch.uint8), params, torch.empty(0)), n0, K)
    else:
        small = formats.pack(sch, formats.rtn_quantize(sch, w), n0, K)
    if n0 == N:
        return small
    reps = -(-N // n0)
    out = {}
    for k, v in small.items():
        if k == "qweight" and sch.kind in ("uniform", "sym"):  # flat bytes of 16-row blocks
            out[k] = v.view(n0 // 16, -1).repeat(reps, 1)[: (N + 15) // 16].reshape(-1).contiguous()
        else:
            out[k] = v.repeat(reps, *[1] * (v.dim() - 1))[:N].contiguous()
    return out
