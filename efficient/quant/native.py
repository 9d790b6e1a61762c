"""Loader for the native kernels (``_lutkernels*.so``, built by ``pip install``) and kernel-path selection.

The library is a plain shared object driven through :mod:`ctypes` with raw tensor data pointers. The path
is chosen at run time from the CPU (AVX-512 VNNI/VBMI, else AVX2, else scalar) and can be forced with the
environment variable ``MIMO_QUANT_KERNEL`` = ``avx512`` | ``avx2`` | ``scalar`` | ``torch`` (``auto`` default).
``MIMO_QUANT_INT8`` = ``auto`` (default: uniform 2- and 4-bit and ternary) | ``on`` (every bit width it takes) |
``off`` (the LUT kernels): the int8-activation kernel on CPUs with AVX512-VNNI (see :func:`int8_kernel_for`).
``MIMO_QUANT_THREADS`` sets the thread count (default: ``torch.get_num_threads()``), ``MIMO_QUANT_TABLES`` the
LUT table precision of the uniform formats (``int8``, the fast default, or ``float``, exact).
If the library is missing, every kernel runs as PyTorch code that gives the same results (slower), and a
one-line warning is logged once.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PATHS = ("scalar", "avx2", "avx512")  # index = native path id
ABI_VERSION = 3  # must equal lk_abi_version() of the built library
ENV_PATH = "MIMO_QUANT_KERNEL"
ENV_THREADS = "MIMO_QUANT_THREADS"
ENV_TABLES = "MIMO_QUANT_TABLES"
ENV_INT8 = "MIMO_QUANT_INT8"
# Bit widths the int8 kernel takes, and those it runs by default (all of them: with activations rounded per 32
# columns and centred codes it matches the LUT kernel's accuracy at 4 bits within 0.4%, SmolLM2-135M perplexity
# w4g128 25.17 vs 25.29, w4g32 21.92 vs 21.84, and is faster; docs/quantization.md). ``off`` keeps the LUT kernel.
INT8_BITS = (2, 4, "ternary")
INT8_DEFAULT_BITS = INT8_BITS  # `auto` runs every width the kernel takes (`on` matters again if one is opt-in)
TABLES = ("int8", "float")  # index = native table mode

_lib: ctypes.CDLL | None = None
_lib_tried = False
_warned = False


def _find_library() -> Path | None:
    here = Path(__file__).resolve().parent
    override = os.environ.get("MIMO_QUANT_LIB")
    if override:
        return Path(override)
    hits = sorted(glob.glob(str(here / "_lutkernels*.so")))
    return Path(hits[0]) if hits else None


def library() -> ctypes.CDLL | None:
    """The loaded native library, or None when it is not built."""
    global _lib, _lib_tried
    if _lib_tried:
        return _lib
    _lib_tried = True
    path = _find_library()
    if path is None or not path.is_file():
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.warning("could not load %s (%s)", path, exc)
        return None
    P, I64, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    version = lib.lk_abi_version() if hasattr(lib, "lk_abi_version") else 1
    if version != ABI_VERSION:
        log.warning("%s is a stale build (kernel ABI %d, expected %d): rebuild it with `pip install -e .` or "
                    "`python setup.py build_ext --inplace`; using the PyTorch fallback", path, version, ABI_VERSION)
        return None
    lib.lk_cpu_path.restype = I32
    lib.lk_lut_packed_bytes.argtypes = [I64, I64, I64, I64]
    lib.lk_lut_packed_bytes.restype = I64
    lib.lk_lut_tables.argtypes = [P, I64, I64, I64, P, P, P, I32]
    lib.lk_lut_gemm.argtypes = [P, P, P, I64, I64, I64, I64, I64, I32, I32, I32]
    lib.lk_lut_gemm.restype = I32
    lib.lk_i2s_gemm.argtypes = [P, P, P, P, I64, I64, I64, I32, I32]
    lib.lk_i2s_gemm.restype = I32
    lib.lk_tl_gemm.argtypes = [P, P, P, P, I64, I64, I64, I32, I32]
    lib.lk_tl_gemm.restype = I32
    lib.lk_fp_gemm.argtypes = [P, P, P, F32, P, P, I64, I64, I64, I64, I32, I32, I32]
    lib.lk_fp_gemm.restype = I32
    lib.lk_read_bw.argtypes = [P, I64, I32]
    lib.lk_read_bw.restype = I64
    if hasattr(lib, "lk_int8_gemm"):  # int8-activation kernel (int8kernels.cpp); optional: older builds lack it
        lib.lk_int8_supported.restype = I32
        lib.lk_int8_gemm.argtypes = [P, P, P, I64, I64, I64, I64, I64, I32]
        lib.lk_int8_gemm.restype = I32
        lib.lk_int8_ternary_gemm.argtypes = [P, P, P, I64, I64, I64, I32]
        lib.lk_int8_ternary_gemm.restype = I32
    if hasattr(lib, "lk_int8_sym_gemm"):  # symmetric 4-bit (w4g{g}s); optional: older builds lack it
        lib.lk_int8_sym_gemm.argtypes = [P, P, P, I64, I64, I64, I64, I32]
        lib.lk_int8_sym_gemm.restype = I32
    if hasattr(lib, "lk_attn_step"):  # batch-1 step glue (stepglue.cpp); optional: older builds lack it
        lib.lk_add_rmsnorm.argtypes = [P, P, P, F32, I64, P]
        lib.lk_silu_mul.argtypes = [P, I64, P]
        lib.lk_attn_step.argtypes = [P, P, P, P, I64, I64, I64, I64, I64, P, P, P]
        lib.lk_attn_step.restype = I32
    _lib = lib
    return lib


def cpu_path() -> str:
    """Best native path this CPU supports ('avx512', 'avx2' or 'scalar'); 'torch' without the library."""
    lib = library()
    return "torch" if lib is None else PATHS[lib.lk_cpu_path()]


def kernel_path() -> str:
    """The path kernels run on now: ``MIMO_QUANT_KERNEL`` if set (validated), else the best available."""
    global _warned
    want = os.environ.get(ENV_PATH, "auto").strip().lower() or "auto"
    if want not in ("auto", "torch", *PATHS):
        raise ValueError(f"{ENV_PATH}={want!r}: expected one of auto, avx512, avx2, scalar, torch")
    if want == "torch":
        return "torch"
    best = cpu_path()
    if best == "torch":
        if want != "auto":
            raise RuntimeError(f"{ENV_PATH}={want} but the native kernel library is not built (pip install -e .)")
        if not _warned:
            log.warning("efficient.quant: native kernels not built; using the slower PyTorch fallback")
            _warned = True
        return "torch"
    if want == "auto":
        return best
    if PATHS.index(want) > PATHS.index(best):
        raise RuntimeError(f"{ENV_PATH}={want}: this CPU only supports up to {best}")
    return want


def table_mode(tables: str | None = None) -> str:
    """LUT table precision for the uniform formats: ``int8`` (fast, default) or ``float`` (exact up to fp32
    rounding, slower). ``tables`` overrides the ``MIMO_QUANT_TABLES`` environment variable."""
    want = (tables or os.environ.get(ENV_TABLES, "int8")).strip().lower() or "int8"
    if want not in TABLES:
        raise ValueError(f"LUT tables {want!r}: expected 'int8' (fast) or 'float' (exact)")
    return want


def num_threads() -> int:
    env = os.environ.get(ENV_THREADS)
    return max(1, int(env)) if env else max(1, torch.get_num_threads())



_int8_ok: bool | None = None


def int8_supported() -> bool:
    """True when the native int8-activation kernel runs on this CPU (AVX512-VNNI) and the library has it."""
    global _int8_ok
    if _int8_ok is None:  # asked on every QuantLinear forward: the answer cannot change within a process
        lib = library()
        _int8_ok = lib is not None and hasattr(lib, "lk_int8_gemm") and lib.lk_int8_supported() == 1
    return _int8_ok


def int8_sym_supported() -> bool:
    """True when the symmetric 4-bit int8 kernel (``lk_int8_sym_gemm``) runs here (AVX512-VNNI, a build that
    has it); otherwise symmetric weights run on the LUT kernels as their asymmetric twin."""
    return int8_supported() and hasattr(library(), "lk_int8_sym_gemm")


def int8_kernel_for(bits: int | str) -> bool:
    """Whether uniform ``bits``-bit layers (``bits="ternary"``: I2_S ternary ones) should use the int8-activation
    kernel on this machine: the CPU supports it, the kernel path is ``avx512`` (forcing avx2 / scalar / torch
    keeps the LUT kernels), and ``MIMO_QUANT_INT8`` is ``on`` (any of ``INT8_BITS``) or ``auto`` (those where
    it wins, ``INT8_DEFAULT_BITS``)."""
    want = os.environ.get(ENV_INT8, "auto").strip().lower() or "auto"
    if want not in ("auto", "on", "off"):
        raise ValueError(f"{ENV_INT8}={want!r}: expected auto, on or off")
    if want == "off" or bits not in INT8_BITS:
        return False
    if want == "auto" and bits not in INT8_DEFAULT_BITS:
        return False
    return int8_supported() and kernel_path() == "avx512"
