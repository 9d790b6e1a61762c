"""Run-time kernel choice per (bits, shape, M, CPU): time the candidates on this machine, keep the fastest.

Candidates for a low-bit :class:`PackedMatrix` at ``M`` activation rows:

* ``lut``  - the packed LUT / I2_S kernel itself (wins GEMV, M = 1: it reads the fewest bytes);
* ``bf16`` - the dequantized weight in bf16 through oneDNN (AMX-BF16 / AVX512-BF16 when present);
* ``int8`` - the dequantized weight re-quantized per output row to int8 (symmetric), activations per row to
  int8, ``torch._int_mm`` (oneDNN; AMX-INT8 / VNNI when present). Re-quantizing changes the weights by at most
  half an int8 step of the row (max|w| / 254), so it is offered only when ``allow_requant``.

Measured on an Intel Xeon with AMX (1 thread, 4096x4096, w4g32, CPU time, loaded machine): M = 1: LUT 1.4 ms,
bf16 3.4 ms, int8 1.8 ms; M = 16: LUT 5.6, bf16 5.0, int8 1.9; M = 64: LUT 19.9, bf16 5.9, int8 3.0. So the
choice is by M: LUT for decode steps, a dense path for prefill-sized M. The dense candidates keep an extra
copy of the weight (2 or 1 bytes per weight): use them where that memory is affordable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from efficient.fastpath.matrix import PackedMatrix
from efficient.quant import formats

log = logging.getLogger(__name__)


class Int8Matrix:
    """y = (x_q @ W_q^T) * x_scale * w_scale (+ bias), int8 x int8 -> int32 through ``torch._int_mm``."""

    kind = "int8"

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None) -> None:
        w = w.float()
        self.N, self.K = w.shape
        amax = w.abs().amax(1).clamp_min(1e-12)
        self.wscale = amax / 127.0
        q = torch.round(w / self.wscale[:, None]).clamp(-127, 127).to(torch.int8)
        self.wq = q.t()  # [K, N] column-major (a view of the row-major [N, K]): the fast layout for _int_mm
        self.bias = bias

    def nbytes(self) -> int:
        return self.wq.numel() + 4 * self.N

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, bias: bool = True) -> torch.Tensor:
        xs = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
        xq = torch.round(x / xs).to(torch.int8)
        y = torch._int_mm(xq, self.wq).float().mul_(xs).mul_(self.wscale)
        if bias and self.bias is not None:
            y += self.bias
        if out is None:
            return y
        out.copy_(y)
        return out


def dense_candidate(pm: PackedMatrix, kind: str, allow_requant: bool = False):
    """The ``bf16`` / ``int8`` twin of a low-bit matrix (same dequantized weights), or None if not offered."""
    if pm.scheme is None or pm.kind == "dense":
        return None
    w = formats.dequantize(pm.scheme, pm.canonical(), pm.N, pm.K)
    if kind == "bf16":
        d = PackedMatrix.dense([w], dtype=torch.bfloat16)
        d.bias = pm.bias
        return d
    if kind == "int8" and allow_requant:
        return Int8Matrix(w, pm.bias)
    return None


def _time(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def choose(pm: PackedMatrix, M: int, kinds: Sequence[str] = ("lut", "bf16", "int8"), allow_requant: bool = False,
           reps: int = 5) -> tuple[object, dict[str, float]]:
    """Time the candidate kernels of ``pm`` at ``M`` rows on this CPU (best of ``reps``); returns the fastest
    matrix (``pm`` itself for ``lut``) and the seconds per call of every candidate."""
    x = torch.randn(M, pm.K)
    out = torch.empty(M, pm.N)
    cands: dict[str, object] = {}
    for k in kinds:
        c = pm if k == "lut" else dense_candidate(pm, k, allow_requant)
        if c is not None:
            cands[k] = c
    times = {k: _time(lambda c=c: c(x, out), reps) for k, c in cands.items()}
    best = min(times, key=times.get)
    log.debug("kernel choice %s %dx%d M=%d: %s -> %s", pm.scheme.name if pm.scheme else "dense", pm.N, pm.K, M,
              {k: f"{v * 1e6:.0f} us" for k, v in times.items()}, best)
    return cands[best], times
