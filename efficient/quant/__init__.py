"""Low-bit weight quantization with LUT kernels (T-MAC bit-serial, BitNet I2_S / TL ternary, AFPQ).

>>> from efficient.quant import quantize, save_quantized
>>> reports = quantize(model, "w4g128")                  # any nn.Module; RTN
>>> reports = quantize(model, "w2g64", method="gptq", tokenizer=tok)   # calibrated
>>> save_quantized(model, "out/")

Schemes: ``w{1-4}g{32,64,128}`` (uniform asymmetric), ``w4g{32,64,128}s`` (symmetric 4-bit: ``w4g32s`` is
llama.cpp Q4_0's 4.5 bits/weight), ``ternary`` / ``ternary-tl``, ``afpq{3,4}g{64,128}``.
Mixed layouts (a scheme per tensor, :mod:`efficient.quant.layouts`): ``quantize(model, "q2k-mix")`` (llama.cpp
Q2_K's real allocation on 576-wide models, the tied embedding packed once as the head), or
``quantize(model, "w4g128", overrides={"*down_proj": "w3g64"}, embedding="w4g32")``.
Kernel path: env ``MIMO_QUANT_KERNEL`` = auto|avx512|avx2|scalar|torch; threads: ``MIMO_QUANT_THREADS``.
"""

from efficient.quant.api import (
    LayerReport,
    load_quantized,
    load_quantized_causal_lm,
    quantize,
    read_quant_config,
    save_quantized,
    select_linears,
    summary_table,
)
from efficient.quant.formats import Scheme, parse_scheme
from efficient.quant.linear import QuantLinear
from efficient.quant.native import cpu_path, kernel_path

__all__ = [
    "LayerReport",
    "QuantLinear",
    "Scheme",
    "cpu_path",
    "kernel_path",
    "load_quantized",
    "load_quantized_causal_lm",
    "parse_scheme",
    "quantize",
    "read_quant_config",
    "save_quantized",
    "select_linears",
    "summary_table",
]
