"""LUT low-bit kernels vs torch and llama.cpp, side by side in one run (one command: python -m bench.bench_lut).

1. Machine read bandwidth (1 and 2 threads).
2. GEMV / small GEMM (M = 1, 8) for 4096x4096, 11008x4096, 4096x11008 with cold weights (a pool of distinct
   weight copies larger than the caches is rotated): our formats (uniform 1-4 bit, symmetric 4-bit w4g32s,
   ternary I2_S / TL, AFPQ), torch fp32 / bf16 F.linear, and llama.cpp's ggml CPU kernels (Q4_0, Q4_K, Q2_K,
   TQ2_0, TQ1_0) called through ctypes on the libggml shipped by llama-cpp-python: each weight copy is one
   ggml_mul_mat node of a single graph, run by ggml_graph_compute_with_ctx with n threads; time / nodes = one
   GEMV (activation quantization to Q8 included, as in ours). Effective GB/s = weight bytes / time, and its
   share of (1).
3. SmolLM2-135M-Instruct: perplexity on the offline test text and decode tokens/s, float vs our schemes
   (RTN and GPTQ) and llama.cpp (llama-cpp-python, the same GGUF requantized to Q4_0 / Q4_K / Q2_K).
4. The speech LM's backbone shape (Qwen2, hidden 3584, MLP 18944, 28/4 heads, 36 layers, random weights):
   decode tokens/s at 2 and 4 bits, ours through transformers + QuantLinear vs llama.cpp (llama-cpp-python on a
   GGUF of the same shape written with the gguf package) at Q2_K / TQ2_0 / Q4_0.

The machine is shared with other engineers: medians of interleaved repeats, and every number is noisy;
compare rows of one run, not runs. The "1 thr CPU-time" column is the calling thread's CPU time for the
1-thread runs (time.thread_time), which does not count time spent descheduled by other tenants.
Use --quick for GEMV 4096x4096 only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import glob
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.common.llama_cpp import SMOLLM2_FTYPES, open_llama, smollm2_gguf, window_nll
from bench.common.timing import median_time
from efficient._hf import cache_kwargs, output_cache
from efficient.quant import formats, native
from efficient.quant.formats import QuantResult, parse_scheme

POOL_BYTES = 128 << 20  # distinct weight bytes rotated per measurement ("cold": >> 32 MiB L3)
OUR_SCHEMES = ["w1g128", "w2g128", "w3g128", "w4g128", "w4g32", "ternary", "ternary-tl", "afpq4g128", "afpq3g128",
               "w2g128:float", "w4g128:float"]
if native.int8_supported():  # AVX512-VNNI: the int8-activation kernel's rows (skipped on other CPUs)
    OUR_SCHEMES += ["w4g32:int8", "w4g32s:int8", "w4g128:int8", "w2g128:int8", "ternary:int8"]
GGML_TYPES = {"Q4_0": 2, "Q4_K": 12, "Q3_K": 11, "Q2_K": 10, "TQ2_0": 35, "TQ1_0": 34}
GGML_BPW = {"Q4_0": 4.5, "Q4_K": 4.5, "Q3_K": 3.4375, "Q2_K": 2.625, "TQ2_0": 2.0625, "TQ1_0": 1.6875}
GGML_SELECTED = list(GGML_TYPES)
BEST_GGML = True  # also run llama.cpp's best path (AMX / repacked extra buffer types), see Ggml.pool_best
WITH_TORCH = True
EQUAL_BITS = [("w4g128", "Q4_K"), ("w4g32", "Q4_0"), ("w2g128", "Q2_K"), ("ternary", "TQ2_0"), ("ternary-tl", "TQ2_0"),
              ("afpq4g128", "Q4_K"), ("afpq3g128", "Q3_K"), ("w3g128", "Q3_K"),
              # the int8-activation kernel (":int8", AVX512-VNNI) against llama.cpp's 4-bit and 2-bit formats
              ("w4g32:int8", "Q4_0"), ("w4g32s:int8", "Q4_0"), ("w4g128:int8", "Q4_0"), ("w4g128:int8", "Q4_K"),
              ("w2g128:int8", "Q2_K"), ("ternary:int8", "TQ2_0")]


def read_bandwidth(threads: int) -> float:
    lib = native.library()
    buf = torch.ones(512 << 20, dtype=torch.uint8)
    t = median_time(lambda: lib.lk_read_bw(buf.data_ptr(), buf.numel(), threads), 7)
    return buf.numel() / t / 1e9


# ----------------------------------------------------------------------------------------------- our kernels
def random_packed(name: str, N: int, K: int) -> dict[str, torch.Tensor]:
    """Valid packed weights with random codes (kernel speed does not depend on the values). Large N: 256 random
    rows are packed and their row blocks repeated (a real copy), which is much faster than packing all rows."""
    sch = parse_scheme(name)
    n0 = min(N, 256)
    small = _random_packed_rows(name, n0, K)
    if n0 == N:
        return small
    reps = -(-N // n0)
    out = {}
    for k, v in small.items():
        if k == "qweight" and sch.kind in ("uniform", "sym"):  # flat bytes of 16-row blocks
            out[k] = v.view(n0 // 16, -1).repeat(reps, 1)[: (N + 15) // 16].reshape(-1).contiguous()
        elif k == "tl":  # [row blocks of 32, ...]
            out[k] = v.repeat(reps, 1, 1)[: (N + 31) // 32].contiguous()
        else:
            out[k] = v.repeat(reps, *[1] * (v.dim() - 1))[:N].contiguous()
    return out


def _random_packed_rows(name: str, N: int, K: int) -> dict[str, torch.Tensor]:
    sch = parse_scheme(name)
    kp = formats.padded_k(sch, K)
    g = torch.Generator().manual_seed(0)
    if sch.kind == "uniform":
        codes = torch.randint(0, 1 << sch.bits, (N, kp), generator=g, dtype=torch.uint8)
        p = (torch.full((N, kp // sch.group_size), 0.01), torch.full((N, kp // sch.group_size), -0.05))
    elif sch.kind == "sym":
        codes = torch.randint(0, 16, (N, kp), generator=g, dtype=torch.uint8)
        p = (torch.full((N, kp // sch.group_size), 0.01),)
    elif sch.kind == "ternary":
        codes = torch.randint(-1, 2, (N, kp), generator=g, dtype=torch.int8)
        p = (torch.full((N,), 0.02),)
    else:
        codes = torch.randint(0, 16, (N, kp), generator=g, dtype=torch.uint8)
        p = (torch.full((N, kp // sch.group_size), 0.01), torch.full((N, kp // sch.group_size), 0.012))
    pk = formats.pack(sch, QuantResult(codes, p, torch.empty(0)), N, K)
    if sch.kernel == "tl":
        pk = {"tl": formats.tl_layout(formats.unpack_i2s(pk["qweight"]), K), "wscale": pk["wscale"]}
    return pk


def our_call(name: str, pk: dict, x: torch.Tensor, y: torch.Tensor, N: int, K: int, threads: int):
    """A zero-overhead closure around the native kernel (pointers resolved once)."""
    name, _, tables = name.partition(":")  # "w2g128:float" = float (exact) LUT tables, ":int8" the int8 kernel
    lib, sch = native.library(), parse_scheme(name)
    M, path = x.shape[0], native.PATHS.index(native.kernel_path())
    xp, yp = x.data_ptr(), y.data_ptr()
    if tables == "int8":
        w = pk["int8"].data_ptr()
        if sch.kind == "ternary":
            return lambda: lib.lk_int8_ternary_gemm(w, xp, yp, M, N, K, threads)
        if sch.kind == "sym":  # symmetric 4-bit: the checkpoint layout is the kernel's
            return lambda: lib.lk_int8_sym_gemm(w, xp, yp, M, N, K, sch.group_size, threads)
        return lambda: lib.lk_int8_gemm(w, xp, yp, M, N, K, sch.group_size, sch.bits, threads)
    tmode = native.TABLES.index(tables or "int8")
    if sch.kind == "uniform":
        w = pk["qweight"].data_ptr()
        return lambda: lib.lk_lut_gemm(w, xp, yp, M, N, K, sch.group_size, sch.bits, path, threads, tmode)
    if sch.kernel == "i2s":
        w, s = pk["qweight"].data_ptr(), pk["wscale"].data_ptr()
        return lambda: lib.lk_i2s_gemm(w, s, xp, yp, M, N, K, path, threads)
    if sch.kernel == "tl":
        w, s = pk["tl"].data_ptr(), pk["wscale"].data_ptr()
        return lambda: lib.lk_tl_gemm(w, s, xp, yp, M, N, K, path, threads)
    w, s = pk["qweight"].data_ptr(), pk["scales"].data_ptr()
    mag = formats.afpq_mag_table(sch.bits)
    unit = formats.AFPQ_FORMATS[sch.bits]["unit"]
    return lambda: lib.lk_fp_gemm(w, s, mag.data_ptr(), unit, xp, yp, M, N, K, sch.group_size, path, threads,
                                  sch.bits)


class Pool:
    """One kernel on a pool of distinct weight copies; ``time(threads)`` runs every copy once."""

    def __init__(self, name: str, nbytes: int, make_calls) -> None:
        self.name, self.nbytes, self.make_calls = name, nbytes, make_calls
        self.calls: dict[int, list] = {}

    def time(self, threads: int) -> float:
        calls = self.calls.setdefault(threads, self.make_calls(threads))
        t0, c0 = time.perf_counter(), time.thread_time()
        for c in calls:
            c()
        self.last_cpu = (time.thread_time() - c0) / len(calls)  # 1 thread: immune to being descheduled
        return (time.perf_counter() - t0) / len(calls)


def pool_ours(name: str, N: int, K: int, M: int) -> Pool:
    base, _, variant = name.partition(":")
    if parse_scheme(base).kind == "sym" and variant != "int8":  # symmetric 4-bit: the int8 kernel only
        name, variant = f"{base}:int8", "int8"
    pk0 = random_packed(base, N, K)
    if variant == "int8":  # the int8 kernel's layout instead of the LUT one (same bytes)
        sch = parse_scheme(base)
        pk0 = {"int8": formats.int8_ternary_layout(pk0["qweight"], pk0["wscale"]) if sch.kind == "ternary"
               else pk0["qweight"] if sch.kind == "sym"
               else formats.int8_layout(pk0["qweight"], N, K, sch.bits, sch.group_size)}
    nbytes = sum(t.numel() * t.element_size() for t in pk0.values())
    copies = [pk0] + [{k: v.clone() for k, v in pk0.items()} for _ in range(max(1, POOL_BYTES // nbytes) - 1)]
    x, y = torch.randn(M, K), torch.empty(M, N)
    return Pool(f"ours {name}", nbytes, lambda th: [our_call(name, pk, x, y, N, K, th) for pk in copies])


def pool_torch(dtype: torch.dtype, N: int, K: int, M: int) -> Pool:
    w0 = torch.randn(N, K).to(dtype)
    nbytes = w0.numel() * w0.element_size()
    copies = [w0] + [w0.clone() for _ in range(max(1, POOL_BYTES // nbytes) - 1)]
    x = torch.randn(M, K).to(dtype)

    def make(th):
        torch.set_num_threads(th)
        return [lambda w=w: torch.nn.functional.linear(x, w) for w in copies]

    class TorchPool(Pool):
        def time(self, threads: int) -> float:
            torch.set_num_threads(threads)
            return super().time(threads)

    return TorchPool(f"torch {str(dtype).split('.')[-1]}", nbytes, make)


def interleaved(pools: list[Pool], threads_list: list[int], rounds: int) -> dict[str, dict[int, tuple[float, int]]]:
    """Round-robin over kernels and thread counts ``rounds`` times, medians per kernel: under a fluctuating
    load every kernel sees the same conditions."""
    samples: dict[tuple[str, int], list[float]] = {}
    cpu: dict[str, list[float]] = {}
    old = torch.get_num_threads()
    for p in pools:  # warm-up: page in, build the call lists
        for th in threads_list:
            p.time(th)
    for _ in range(rounds):
        for th in threads_list:
            for p in pools:
                samples.setdefault((p.name, th), []).append(p.time(th))
                if th == 1:
                    cpu.setdefault(p.name, []).append(p.last_cpu)
    torch.set_num_threads(old)
    out = {p.name: {th: (statistics.median(samples[(p.name, th)]), p.nbytes) for th in threads_list} for p in pools}
    for name, v in cpu.items():
        out[name]["cpu1"] = (statistics.median(v), out[name][1][1])
    return out


# ----------------------------------------------------------------------------------------------- ggml (llama.cpp)
class Ggml:
    """Minimal ctypes bindings to the libggml shipped inside llama-cpp-python."""

    def __init__(self) -> None:
        if os.environ.get("MIMO_GGML_LIB_DIR"):  # e.g. a llama.cpp build tree's bin/
            libdir = Path(os.environ["MIMO_GGML_LIB_DIR"])
        else:
            import llama_cpp

            libdir = Path(llama_cpp.__file__).parent / "lib"
        self.base = ctypes.CDLL(self._find(libdir, "libggml-base"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(self._find(libdir, "libggml-cpu"), mode=ctypes.RTLD_GLOBAL)
        P, I64, SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
        b = self.base

        class InitParams(ctypes.Structure):
            _fields_ = [("mem_size", SZ), ("mem_buffer", P), ("no_alloc", ctypes.c_bool)]

        self.InitParams = InitParams
        b.ggml_init.argtypes = [InitParams]
        b.ggml_init.restype = P
        b.ggml_free.argtypes = [P]
        b.ggml_new_tensor_2d.argtypes = [P, ctypes.c_int, I64, I64]
        b.ggml_new_tensor_2d.restype = P
        b.ggml_get_data.argtypes = [P]
        b.ggml_get_data.restype = P
        b.ggml_row_size.argtypes = [ctypes.c_int, I64]
        b.ggml_row_size.restype = SZ
        b.ggml_quantize_chunk.argtypes = [ctypes.c_int, P, P, I64, I64, I64, P]
        b.ggml_quantize_chunk.restype = SZ
        b.ggml_mul_mat.argtypes = [P, P, P]
        b.ggml_mul_mat.restype = P
        b.ggml_new_graph_custom.argtypes = [P, SZ, ctypes.c_bool]
        b.ggml_new_graph_custom.restype = P
        b.ggml_build_forward_expand.argtypes = [P, P]
        self.cpu.ggml_graph_compute_with_ctx.argtypes = [P, P, ctypes.c_int]
        self.cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
        if hasattr(self.cpu, "ggml_cpu_init"):
            self.cpu.ggml_cpu_init()
        self.ctxs: list = []

    @staticmethod
    def _find(libdir: Path, stem: str) -> str:
        hits = sorted(glob.glob(str(libdir / f"{stem}*.so*")))
        if not hits:
            raise FileNotFoundError(f"{stem} not found in {libdir}")
        return hits[0]

    def pool(self, type_name: str, N: int, K: int, M: int) -> Pool:
        """Weight copies as mul_mat nodes of one graph; time of one graph compute / nodes = one GEMV."""
        b, t = self.base, GGML_TYPES[type_name]
        nbytes = b.ggml_row_size(t, K) * N
        ncopy = max(1, POOL_BYTES // nbytes)
        mem = nbytes * ncopy + ncopy * (N * M * 4 + 1024) + K * M * 4 + (64 << 20)
        ctx = b.ggml_init(self.InitParams(mem, None, False))
        if not ctx:
            raise MemoryError("ggml_init failed")
        self.ctxs.append(ctx)
        wf = torch.randn(N, K) * 0.02
        q = torch.empty(nbytes, dtype=torch.uint8)
        b.ggml_quantize_chunk(t, wf.data_ptr(), q.data_ptr(), 0, N, K, None)
        x = b.ggml_new_tensor_2d(ctx, 0, K, M)
        ctypes.memmove(b.ggml_get_data(x), torch.randn(M, K).data_ptr(), K * M * 4)
        graph = b.ggml_new_graph_custom(ctx, 2 * ncopy + 16, False)
        for _ in range(ncopy):
            w = b.ggml_new_tensor_2d(ctx, t, K, N)
            ctypes.memmove(b.ggml_get_data(w), q.data_ptr(), nbytes)
            b.ggml_build_forward_expand(graph, b.ggml_mul_mat(ctx, w, x))
        compute = self.cpu.ggml_graph_compute_with_ctx

        class GgmlPool(Pool):
            def time(self, threads: int) -> float:
                t0, c0 = time.perf_counter(), time.thread_time()
                compute(ctx, graph, threads)
                self.last_cpu = (time.thread_time() - c0) / ncopy
                return (time.perf_counter() - t0) / ncopy

        return GgmlPool(f"llama.cpp {type_name}", nbytes, None)

    # ---- llama.cpp's best CPU path: weights in an "extra" buffer type of the CPU backend (AMX on CPUs with
    # AMX-INT8, CPU_REPACK = the interleaved AVX2/AVX-512 layouts), which is what llama.cpp itself loads models
    # into (llama_model_params.use_extra_bufts, on by default). Driven through the ggml-backend API.
    def _backend_api(self) -> None:
        if getattr(self, "_be", None) is not None:
            return
        P, SZ = ctypes.c_void_p, ctypes.c_size_t
        b, c = self.base, self.cpu
        c.ggml_backend_cpu_init.restype = P
        c.ggml_backend_cpu_set_n_threads.argtypes = [P, ctypes.c_int]
        c.ggml_backend_cpu_reg.restype = P
        b.ggml_backend_reg_dev_get.argtypes = [P, SZ]
        b.ggml_backend_reg_dev_get.restype = P
        b.ggml_backend_reg_get_proc_address.argtypes = [P, ctypes.c_char_p]
        b.ggml_backend_reg_get_proc_address.restype = P
        b.ggml_backend_buft_name.argtypes = [P]
        b.ggml_backend_buft_name.restype = ctypes.c_char_p
        b.ggml_backend_alloc_ctx_tensors_from_buft.argtypes = [P, P]
        b.ggml_backend_alloc_ctx_tensors_from_buft.restype = P
        b.ggml_backend_alloc_ctx_tensors.argtypes = [P, P]
        b.ggml_backend_alloc_ctx_tensors.restype = P
        b.ggml_backend_buffer_set_usage.argtypes = [P, ctypes.c_int]
        b.ggml_backend_buffer_free.argtypes = [P]
        b.ggml_backend_tensor_set.argtypes = [P, P, SZ, SZ]
        b.ggml_backend_graph_compute.argtypes = [P, P]
        b.ggml_backend_graph_compute.restype = ctypes.c_int
        b.ggml_tensor_overhead.restype = SZ
        b.ggml_graph_overhead_custom.argtypes = [SZ, ctypes.c_bool]
        b.ggml_graph_overhead_custom.restype = SZ
        self._be = c.ggml_backend_cpu_init()
        reg = c.ggml_backend_cpu_reg()
        dev = b.ggml_backend_reg_dev_get(reg, 0)
        fn = b.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        self.extra_bufts: dict[str, int] = {}
        if fn:
            arr = ctypes.CFUNCTYPE(ctypes.POINTER(P), P)(fn)(dev)
            i = 0
            while arr and arr[i]:
                self.extra_bufts[b.ggml_backend_buft_name(arr[i]).decode()] = arr[i]
                i += 1
        self.buffers: list = []

    def best_buft(self, type_name: str) -> str | None:
        """The extra buffer type llama.cpp would put these weights in (AMX first, then the repacked layouts)."""
        self._backend_api()
        supported = {"AMX": ("Q4_0", "Q4_1", "Q8_0", "Q4_K"),  # ggml-cpu/amx: qtype_has_amx_kernels
                     "CPU_REPACK": ("Q4_0", "Q4_K", "Q2_K", "Q5_K", "Q6_K", "Q8_0")}  # ggml-cpu/repack.cpp
        for name, types in supported.items():
            if name in self.extra_bufts and type_name in types:
                return name
        return None

    def pool_best(self, type_name: str, N: int, K: int, M: int) -> Pool:
        """As :meth:`pool`, with the weights in llama.cpp's best extra buffer type (falls back to the plain CPU
        buffer when the type has none: that is then also what llama.cpp runs)."""
        self._backend_api()
        b, t = self.base, GGML_TYPES[type_name]
        buft_name = self.best_buft(type_name)
        if buft_name == "AMX" and M > 1 and os.environ.get("MIMO_GGML_AMX_TILES") != "1":
            # llama.cpp's AMX tile kernels (M > 1) die with SIGILL on the VM this was developed on; the
            # repacked layout is llama.cpp's next choice (MIMO_GGML_AMX_TILES=1 forces AMX).
            buft_name = "CPU_REPACK" if type_name in ("Q4_0", "Q4_K", "Q8_0") else None
        nbytes = b.ggml_row_size(t, K) * N
        ncopy = max(1, POOL_BYTES // nbytes)
        wctx = b.ggml_init(self.InitParams(b.ggml_tensor_overhead() * (ncopy + 4), None, True))
        cctx = b.ggml_init(self.InitParams(b.ggml_tensor_overhead() * (2 * ncopy + 8)
                                           + b.ggml_graph_overhead_custom(2 * ncopy + 16, False), None, True))
        self.ctxs += [wctx, cctx]
        ws = [b.ggml_new_tensor_2d(wctx, t, K, N) for _ in range(ncopy)]
        if buft_name is not None:
            wbuf = b.ggml_backend_alloc_ctx_tensors_from_buft(wctx, self.extra_bufts[buft_name])
        else:
            wbuf = b.ggml_backend_alloc_ctx_tensors(wctx, self._be)
        if not wbuf:
            raise MemoryError("ggml backend weight buffer allocation failed")
        b.ggml_backend_buffer_set_usage(wbuf, 1)  # GGML_BACKEND_BUFFER_USAGE_WEIGHTS
        self.buffers.append(wbuf)
        wf = torch.randn(N, K) * 0.02
        q = torch.empty(nbytes, dtype=torch.uint8)
        b.ggml_quantize_chunk(t, wf.data_ptr(), q.data_ptr(), 0, N, K, None)
        for w in ws:  # set_tensor repacks into the buffer type's layout
            b.ggml_backend_tensor_set(w, q.data_ptr(), 0, nbytes)
        x = b.ggml_new_tensor_2d(cctx, 0, K, M)
        graph = b.ggml_new_graph_custom(cctx, 2 * ncopy + 16, False)
        for w in ws:
            b.ggml_build_forward_expand(graph, b.ggml_mul_mat(cctx, w, x))
        cbuf = b.ggml_backend_alloc_ctx_tensors(cctx, self._be)
        self.buffers.append(cbuf)
        xs = torch.randn(M, K)
        b.ggml_backend_tensor_set(x, xs.data_ptr(), 0, K * M * 4)
        be, cpu = self._be, self.cpu

        class BestPool(Pool):
            def time(self, threads: int) -> float:
                cpu.ggml_backend_cpu_set_n_threads(be, threads)
                t0, c0 = time.perf_counter(), time.thread_time()
                if b.ggml_backend_graph_compute(be, graph) != 0:
                    raise RuntimeError("ggml_backend_graph_compute failed")
                self.last_cpu = (time.thread_time() - c0) / ncopy
                return (time.perf_counter() - t0) / ncopy

        return BestPool(f"llama.cpp best {type_name} [{buft_name or 'CPU'}]", nbytes, None)

    def free_all(self) -> None:
        for buf in getattr(self, "buffers", []):
            self.base.ggml_backend_buffer_free(buf)
        if getattr(self, "buffers", None):
            self.buffers.clear()
        for c in self.ctxs:
            self.base.ggml_free(c)
        self.ctxs.clear()

    def bench(self, type_name: str, N: int, K: int, M: int, threads_list: list[int]) -> dict[int, tuple[float, int]]:
        try:
            return interleaved([self.pool(type_name, N, K, M)], threads_list, 5)[f"llama.cpp {type_name}"]
        finally:
            self.free_all()


def load_ggml() -> Ggml | None:
    try:
        return Ggml()
    except (ImportError, OSError, AttributeError, FileNotFoundError) as exc:
        print(f"(llama.cpp kernels skipped: {exc.__class__.__name__}: {exc})")
        return None


# ----------------------------------------------------------------------------------------------- GEMV tables
def l3_bytes() -> int:
    """Last-level cache size (sysfs; 32 MiB if unknown): weight pools larger than it stream from DRAM."""
    try:
        txt = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20}.get(txt[-1], 1)
        return int(txt.rstrip("KM")) * mult
    except (OSError, ValueError):
        return 32 << 20


def gemv_tables(shapes, ms, threads_list, bw: dict[int, float], ggml: Ggml | None, rounds: int) -> dict:
    results = {}
    for si, (N, K) in enumerate(shapes):
        for M in ms if si == 0 else ms[:1]:  # small-M GEMM on the first shape only (time on a shared VM)
            pools = [pool_ours(name, N, K, M) for name in OUR_SCHEMES]
            if ggml is not None:
                for tn in GGML_SELECTED:
                    try:
                        pools.append(ggml.pool(tn, N, K, M))
                        if BEST_GGML:
                            pools.append(ggml.pool_best(tn, N, K, M))
                    except Exception as exc:  # noqa: BLE001 - a type this ggml build lacks
                        print(f"  ggml {tn} failed: {exc}")
            if WITH_TORCH:
                pools += [pool_torch(torch.float32, N, K, M), pool_torch(torch.bfloat16, N, K, M)]
            rows = list(interleaved(pools, threads_list, rounds).items())
            del pools
            if ggml is not None:
                ggml.free_all()
            gc.collect()
            results[(N, K, M)] = dict(rows)
            print(f"\n### GEMV/GEMM N(out)={N} K(in)={K} M={M}: median us per call, "
                  f"{'cold' if POOL_BYTES > 1.2 * l3_bytes() else 'hot (the pool fits the L3)'} weights "
                  f"[effective GB/s, % of read bandwidth]")
            cols = list(threads_list) + (["cpu1"] if 1 in threads_list else [])
            head = "| kernel | MiB | " + " | ".join(
                "1 thr CPU-time us [GB/s, %BW]" if t == "cpu1" else f"{t} thr wall us [GB/s, %BW]" for t in cols) + " |"
            print(head)
            print("|" + "---|" * (2 + len(cols)))
            for name, r in rows:
                cells = []
                for th in cols:
                    sec, nb = r[th]
                    gbs = nb / sec / 1e9
                    cells.append(f"{sec * 1e6:.0f} [{gbs:.1f}, {100 * gbs / bw[1 if th == 'cpu1' else th]:.0f}%]")
                print(f"| {name} | {r[threads_list[0]][1] / 2**20:.2f} | " + " | ".join(cells) + " |")
            if ggml is not None:
                print("speed-up vs llama.cpp at equal bits (their time / ours):")
                res = results[(N, K, M)]
                for ours, theirs in EQUAL_BITS:
                    a = res.get(f"ours {ours}")
                    best = [k for k in res if k.startswith(f"llama.cpp best {theirs} [")]
                    for label, key in (("generic", f"llama.cpp {theirs}"), ("best", best[0] if best else None)):
                        b = res.get(key) if key else None
                        if a and b:
                            print(f"  {ours:>10} vs {theirs:<6} ({label}) " + "  ".join(
                                f"{th}{'' if th == 'cpu1' else 'T'} {b[th][0] / a[th][0]:.2f}x" for th in cols))
            sys.stdout.flush()
    return results


# ----------------------------------------------------------------------------------------------- end to end
E2E_CONFIGS = ["w4g32:rtn", "w4g32s:rtn", "w4g128:rtn", "afpq4g128:rtn", "w3g128:rtn", "afpq3g128:rtn", "w3g128:gptq",
               "w2g64:rtn", "w2g64:gptq"]
LLAMA_CPP_QUANTS = ["Q4_1", "Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K"]


def e2e_smollm2(threads: int, max_tokens: int, decode_repeats: int = 3) -> None:
    import copy

    from bench.common.perplexity import text_perplexity
    from bench.common.timing import decode_tokens_per_s
    from efficient.quant import quantize
    from eval.reference_models import load_smollm2
    from eval.textdata import offline_english_text

    torch.set_num_threads(threads)
    os.environ[native.ENV_THREADS] = str(threads)
    model, tok = load_smollm2()
    text = offline_english_text("test")
    print(f"\n### SmolLM2-135M-Instruct end to end ({threads} threads; PPL on the first {max_tokens} tokens of the "
          "offline test text, windows of 512; decode = batch-1 greedy, 32 new tokens after 16, "
          f"median of {decode_repeats})")
    print("| model | bits/weight (linear layers) | PPL | decode tok/s |")
    print("|---|---|---|---|")
    ppl0 = text_perplexity(model, tok, text, max_tokens=max_tokens)
    tok_s = decode_tokens_per_s(model, repeats=decode_repeats)
    print(f"| float32 (dequantized Q4_1 GGUF) | 32 | {ppl0:.3f} | {tok_s:.1f} |")
    sys.stdout.flush()
    for scheme, _, method in (c.partition(":") for c in E2E_CONFIGS):
        method = method or "rtn"
        m = copy.deepcopy(model)
        quantize(m, scheme, method=method, tokenizer=tok, calib_text=offline_english_text("train"))
        ppl = text_perplexity(m, tok, text, max_tokens=max_tokens)
        bpw = parse_scheme(scheme).bits_per_weight
        print(f"| ours {scheme} {method} | {bpw:.3g} | {ppl:.3f} ({100 * (ppl / ppl0 - 1):+.1f}%) | "
              f"{decode_tokens_per_s(m, repeats=decode_repeats):.1f} |")
        sys.stdout.flush()
        del m
        gc.collect()
    if importlib.util.find_spec("llama_cpp") is None:
        print("(llama.cpp end-to-end skipped: llama-cpp-python not installed)")
        return
    ids = tok(text, return_tensors="pt").input_ids[0][:max_tokens].tolist()
    for qname in LLAMA_CPP_QUANTS:
        ftype = SMOLLM2_FTYPES[qname]
        path = smollm2_gguf(qname, threads)
        llm = open_llama(path, threads)
        nll, cnt = window_nll(llm, [ids[i : i + 513] for i in range(0, len(ids) - 1, 512)])
        rates = []
        for _ in range(decode_repeats):
            llm.reset()
            llm.eval(ids[:16])
            t0 = time.perf_counter()
            nxt = ids[16]
            for _ in range(32):
                llm.eval([nxt])
                nxt = int(llm.scores[llm.n_tokens - 1].argmax())
            rates.append(32 / (time.perf_counter() - t0))
        label = f"{qname} (original GGUF)" if ftype is None else f"{qname} (requantized from Q4_1)"
        # K-quants need rows that are multiples of 256 (SmolLM2's 576 is not): llama.cpp then falls back to
        # other types for most tensors, so the file size is the honest "bits" figure here.
        size = f"file {os.path.getsize(path) / 2**20:.1f} MiB"
        print(f"| llama.cpp {label} | {size} | {math.exp(nll / cnt):.3f} | {statistics.median(rates):.1f} |")
        sys.stdout.flush()
        del llm


# The speech LM's backbone (MiMo-Audio-7B = MiMo-7B: mimo_audio.config.SpeechLMConfig defaults). The first
# recorded run (docs/quantization.md) used the Qwen2-7B shape 3584/18944/28/4 by mistake; say which when quoting.
SHAPE_7B = {"hidden": 4096, "inter": 11008, "heads": 32, "kv_heads": 8, "layers": 36, "vocab": 151680}


def _materialize(model: torch.nn.Module) -> None:
    """Real tensors for the parameters / buffers still on the meta device (norms 1, biases 0, embedding rows
    of the few token ids used ~N(0, 0.02); the rest of the embedding stays untouched zero pages)."""
    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):  # noqa: SLF001 - filling meta tensors in place
            for name, t in list(store.items()):
                if t is None or t.device.type != "meta":
                    continue
                is_norm = "norm" in type(mod).__name__.lower()
                real = (torch.ones if is_norm else torch.zeros)(t.shape, dtype=t.dtype)
                if isinstance(mod, torch.nn.Embedding):
                    real[:1024].normal_(0, 0.02)
                store[name] = torch.nn.Parameter(real, requires_grad=False) if isinstance(t, torch.nn.Parameter) \
                    else real


def ours_7b(scheme: str, threads: int, layers: int, distinct: int):
    """A Qwen2 model of SHAPE_7B through transformers + QuantLinear; returns a closure that runs one decode
    step. Weights: random packed codes; `distinct` independent copies of a layer's weights rotate over the
    layers (each copy is > 100 MiB, far above the L3, so every layer streams its weights from DRAM)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from efficient.quant.linear import QuantLinear

    sh = SHAPE_7B
    cfg = Qwen2Config(vocab_size=sh["vocab"], hidden_size=sh["hidden"], intermediate_size=sh["inter"],
                      num_hidden_layers=layers, num_attention_heads=sh["heads"], num_key_value_heads=sh["kv_heads"],
                      tie_word_embeddings=False, max_position_embeddings=4096)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    sets: list[dict] = []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, torch.nn.Linear):
            continue
        shape = (mod.out_features, mod.in_features)
        if name == "lm_head":
            pk = random_packed(scheme, *shape)
        else:
            layer = int(name.split(".")[2])
            while len(sets) <= layer % distinct:
                sets.append({})
            cache = sets[layer % distinct]
            key = (name.rsplit(".", 1)[-1], shape)
            if key not in cache:
                cache[key] = random_packed(scheme, *shape)
            pk = cache[key]
        with torch.device("meta"):
            q = QuantLinear(mod.in_features, mod.out_features, scheme, bias=mod.bias is not None)
        for k, v in pk.items():
            setattr(q, k, v)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, q)
    _materialize(model)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    model.eval()
    state = {}
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 1000, (1, 8)), use_cache=True)
    state["past"], state["next"] = output_cache(out), torch.tensor([[7]])

    def step() -> None:
        torch.set_num_threads(threads)
        os.environ[native.ENV_THREADS] = str(threads)
        with torch.no_grad():
            o = model(input_ids=state["next"], use_cache=True, **cache_kwargs(model, state["past"]))
        state["past"] = output_cache(o)

    return step


def ours_fast_7b(scheme: str, threads: int, layers: int):
    """The same model through the batch-1 fast path (:mod:`mimo_audio.fast_decoder`: fused QKV / gate-up, static
    KV cache, native step glue), every layer with its own weights (the Xeon's 300 MB L3 would hold a few
    rotating copies). Returns a closure that runs one decode step (embedding row -> layers -> norm -> head)."""
    import torch.nn.functional as F

    from efficient.fastpath import PackedMatrix
    from efficient.fastpath import random_packed as fast_random
    from mimo_audio.fast_decoder import FastLayer

    sh = SHAPE_7B
    H, Fd, hd = sh["hidden"], sh["inter"], sh["hidden"] // sh["heads"]
    sch = parse_scheme(scheme)

    def mat(N: int, K: int, seed: int) -> PackedMatrix:
        return PackedMatrix.from_packed(sch, [fast_random(sch, N, K, seed)], [N], K)

    kv = sh["kv_heads"] * hd
    stack = [FastLayer(mat(H + 2 * kv, H, 4 * i), mat(H, H, 4 * i + 1), mat(2 * Fd, H, 4 * i + 2),
                       mat(H, Fd, 4 * i + 3), torch.ones(H), torch.ones(H), 1e-6, sh["heads"], sh["kv_heads"], hd,
                       256) for i in range(layers)]
    head = mat(sh["vocab"], H, 99)
    emb = torch.randn(1024, H) * 0.02
    inv = 1.0 / 1e6 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    f = torch.arange(256, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()
    state = {"n": 0, "tok": 7}

    def step() -> None:
        torch.set_num_threads(threads)
        n = state["n"] % 255
        if n == 0:
            for layer in stack:
                layer.reset()
        x = emb[state["tok"] % 1024].view(1, H).clone()
        for layer in stack:
            layer.step_(x, cos[n : n + 1], sin[n : n + 1])
        state["tok"] = int(head(F.rms_norm(x, (H,), None, 1e-6)).argmax())
        state["n"] += 1

    for _ in range(8):  # a short prompt, as for the other rows
        step()
    return step


def write_gguf_7b(ggml: Ggml, type_name: str, layers: int, path: str) -> None:
    """A qwen2 GGUF of SHAPE_7B with random weights quantized to `type_name` (output too; token embedding Q4_0).
    One block of random rows is quantized per shape and tiled; every layer gets its own copy in the file."""
    import gguf
    import numpy as np

    sh = SHAPE_7B
    H, F, V = sh["hidden"], sh["inter"], sh["vocab"]
    kv = H // sh["heads"] * sh["kv_heads"]
    b = ggml.base

    def qbytes(tname: str, N: int, K: int) -> np.ndarray:
        t = GGML_TYPES[tname]
        rows = min(N, 256)
        wf = torch.randn(rows, K) * 0.02
        row_bytes = b.ggml_row_size(t, K)
        q = torch.empty(rows * row_bytes, dtype=torch.uint8)
        b.ggml_quantize_chunk(t, wf.data_ptr(), q.data_ptr(), 0, rows, K, None)
        block = q.numpy().reshape(rows, row_bytes)
        return np.ascontiguousarray(np.tile(block, (-(-N // rows), 1))[:N])

    qt = getattr(gguf.GGMLQuantizationType, type_name)
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_context_length(4096)
    w.add_embedding_length(H)
    w.add_block_count(layers)
    w.add_feed_forward_length(F)
    w.add_head_count(sh["heads"])
    w.add_head_count_kv(sh["kv_heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_tokenizer_model("no_vocab")
    w.add_vocab_size(V)
    ones_h = np.ones(H, dtype=np.float32)
    w.add_tensor("token_embd.weight", qbytes("Q4_0", V, H), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.add_tensor("output_norm.weight", ones_h)
    w.add_tensor("output.weight", qbytes(type_name, V, H), raw_dtype=qt)
    mats = {"attn_q": qbytes(type_name, H, H), "attn_k": qbytes(type_name, kv, H), "attn_v": qbytes(type_name, kv, H),
            "attn_output": qbytes(type_name, H, H), "ffn_gate": qbytes(type_name, F, H),
            "ffn_up": qbytes(type_name, F, H), "ffn_down": qbytes(type_name, H, F)}
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones_h)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones_h)
        for nm, n in (("attn_q", H), ("attn_k", kv), ("attn_v", kv)):
            w.add_tensor(f"blk.{i}.{nm}.bias", np.zeros(n, dtype=np.float32))
        for nm, data in mats.items():
            w.add_tensor(f"blk.{i}.{nm}.weight", data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_cpp_7b(ggml: Ggml, type_name: str, threads: int, layers: int):
    """llama-cpp-python on a GGUF of SHAPE_7B; returns a closure that runs one decode step."""
    import llama_cpp

    path = f"/tmp/bench-lut-7b-{type_name}-{layers}-{os.getpid()}.gguf"
    try:
        write_gguf_7b(ggml, type_name, layers, path)
        # n_batch = n_ubatch = 1: every llama.cpp call is a GEMV (M = 1). Its AMX tile kernels (M > 1) die with
        # SIGILL on the AMX Xeon VM this was measured on; decode speed is what is compared, so nothing is lost.
        llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=1, n_ubatch=1, n_threads=threads, verbose=False)
    finally:
        if os.path.exists(path):
            os.remove(path)  # the mapping stays valid; nothing is left in /tmp
    llm.eval(list(range(8)))
    counter = [100]

    def step() -> None:
        counter[0] += 1
        llm.eval([counter[0]])

    return step


def e2e_7b(threads: int, layers: int, ggml: Ggml | None, new_tokens: int = 12, fast: bool = False,
           only: list[str] | None = None) -> None:
    """Decode speed of the speech LM's backbone shape (Qwen2, SHAPE_7B) at 2 and 4 bits, ours vs llama.cpp.
    All models are loaded at once and their decode steps interleaved round-robin, so that every model sees the
    same machine load (the VM is shared); medians over the steps."""
    sh = SHAPE_7B
    scale = sh["layers"] / layers
    print(f"\n### 7B-shaped Qwen2 decode (hidden {sh['hidden']}, MLP {sh['inter']}, {sh['heads']} heads / "
          f"{sh['kv_heads']} KV, vocab {sh['vocab']}; random weights; {threads} threads; {layers} layers built"
          + ("" if layers == sh["layers"] else f", ms/token x{scale:.2f} to {sh['layers']} layers (head included)")
          + f"; lm_head in the layers' format; steps interleaved round-robin, median of {new_tokens - 1})")
    rows = [("ours", s) for s in ("w2g128", "ternary", "w4g128", "w4g32s")] if not fast else []
    rows += [("ours fast", s) for s in ("w2g128", "ternary", "w4g128", "w4g32", "w4g32s")] if fast else []
    if ggml is not None:
        rows += [("llama.cpp", t) for t in ("Q2_K", "TQ2_0", "Q4_0")]
    if only:
        rows = [r for r in rows if r[1] in only]
    steps, bpw = {}, {}
    for who, name in rows:
        try:
            if who == "ours":
                steps[(who, name)] = ours_7b(name, threads, layers, 4)
                bpw[(who, name)] = parse_scheme(name).bits_per_weight
            elif who == "ours fast":
                steps[(who, name)] = ours_fast_7b(name, threads, layers)
                bpw[(who, name)] = parse_scheme(name).bits_per_weight
            else:
                steps[(who, name)] = llama_cpp_7b(ggml, name, threads, layers)
                bpw[(who, name)] = GGML_BPW[name]
        except Exception as exc:  # noqa: BLE001 - report and go on with the other rows
            print(f"({who} {name} failed: {exc.__class__.__name__}: {exc})")
    times: dict = {k: [] for k in steps}
    for r in range(new_tokens):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            if r:  # the first step warms up
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * scale for k, v in times.items()}
    print("| model | bits/weight (linears) | ms/token | tok/s | vs llama.cpp (their time / ours) |")
    print("|---|---|---|---|---|")
    ref = {"w2g128": "Q2_K", "ternary": "TQ2_0", "w4g128": "Q4_0", "w4g32": "Q4_0", "w4g32s": "Q4_0"}
    for (who, name), sec in med.items():
        other = med.get(("llama.cpp", ref.get(name, "")))
        vs = f"{other / sec:.2f}x vs {ref[name]}" if who.startswith("ours") and other else ""
        print(f"| {who} {name} | {bpw[(who, name)]:.3g} | {sec * 1e3:.0f} | {1 / sec:.2f} | {vs} |")
    sys.stdout.flush()


def main() -> None:
    global POOL_BYTES, OUR_SCHEMES, GGML_SELECTED, WITH_TORCH, E2E_CONFIGS, LLAMA_CPP_QUANTS, BEST_GGML
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="GEMV 4096x4096 M=1 only")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-gemv", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-7b", action="store_true")
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=7, help="round-robin repeats per GEMV table")
    ap.add_argument("--pool-mib", type=int, default=128,
                    help="distinct weight bytes rotated per kernel (cold); 0 = one copy (hot, cache-resident)")
    ap.add_argument("--e2e-configs", nargs="*", default=None,
                    help="SmolLM2 rows as scheme:method (default: " + " ".join(E2E_CONFIGS) + ")")
    ap.add_argument("--llama-cpp-quants", nargs="*", default=None,
                    help="llama.cpp SmolLM2 rows (default: " + " ".join(LLAMA_CPP_QUANTS) + ")")
    ap.add_argument("--decode-repeats", type=int, default=3, help="decode tok/s: median of this many runs")
    ap.add_argument("--fast-7b", action="store_true",
                    help="7B rows through the batch-1 fast path (mimo_audio.fast_decoder) instead of transformers")
    ap.add_argument("--threads-7b", type=int, nargs="+", default=None,
                    help="thread counts of the 7B comparison (default: the largest of --threads)")
    ap.add_argument("--only-7b", nargs="+", default=None, metavar="NAME",
                    help="7B rows to build, by format (e.g. w4g32s w4g32 Q4_0; default: all)")
    ap.add_argument("--layers-7b", type=int, default=36,
                    help="layers of the 7B-shaped model actually built (time scaled to 36 when fewer)")
    ap.add_argument("--schemes", nargs="+", default=None,
                    help="our GEMV rows (default: all formats; add ':float' for float LUT tables)")
    ap.add_argument("--ggml", nargs="*", default=None, help="llama.cpp GEMV rows (default: all)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch fp32 / bf16 GEMV rows")
    ap.add_argument("--no-best-ggml", action="store_true",
                    help="skip llama.cpp's best path (AMX / CPU_REPACK extra buffer types) in the GEMV tables")
    args = ap.parse_args()
    POOL_BYTES = max(1, args.pool_mib << 20)
    OUR_SCHEMES = args.schemes or OUR_SCHEMES
    GGML_SELECTED = GGML_SELECTED if args.ggml is None else args.ggml
    WITH_TORCH = not args.no_torch
    BEST_GGML = not args.no_best_ggml
    E2E_CONFIGS = E2E_CONFIGS if args.e2e_configs is None else args.e2e_configs
    LLAMA_CPP_QUANTS = LLAMA_CPP_QUANTS if args.llama_cpp_quants is None else args.llama_cpp_quants
    if native.library() is None:
        sys.exit("native kernels not built: pip install -e . (or python setup.py build_ext --inplace)")
    print(f"kernel path: {native.kernel_path()}; torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine: numbers are noisy)")
    bw = {th: read_bandwidth(th) for th in args.threads}
    print("read bandwidth (512 MiB, AVX2 loads, median of 7): "
          + ", ".join(f"{th}T {v:.1f} GB/s" for th, v in bw.items()))
    ggml = load_ggml()
    if not args.skip_gemv:
        shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (11008, 4096), (4096, 11008)]
        ms = [1] if args.quick else [1, 8]
        gemv_tables(shapes, ms, args.threads, bw, ggml, args.rounds)
    if args.quick:
        return
    if not args.skip_e2e:
        e2e_smollm2(max(args.threads), args.ppl_tokens, args.decode_repeats)
    if not args.skip_7b:
        for th in args.threads_7b or [max(args.threads)]:
            e2e_7b(th, args.layers_7b, ggml, fast=args.fast_7b, only=args.only_7b)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
