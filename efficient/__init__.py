"""Efficiency backend: LUT low-bit kernels, hybrid sparse attention, MTP drafting, MoE offload.

Imports none of the project's other packages, so any transformers causal LM plugs in exactly as the
speech LM does. Sub-packages are imported lazily: ``import efficient`` stays cheap.

- :mod:`efficient.quant`: ``quantize(model, scheme)``, ``QuantLinear`` (T-MAC / BitNet / AFPQ kernels)
- :mod:`efficient.attention`: ``apply_attention(model, layout)`` (HySparse, sliding window with sinks)
- :mod:`efficient.spec`: MTP heads and speculative decoding
- :mod:`efficient.moe`: pre-gated MoE and expert offload
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "quantize": "efficient.quant",
    "QuantLinear": "efficient.quant",
    "apply_attention": "efficient.attention",
    "SpeculativeDecoder": "efficient.spec",
    "CausalLMTarget": "efficient.spec",
    "load_mtp": "efficient.spec",
    "offload_moe": "efficient.moe",
    "load_offloaded": "efficient.moe",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'efficient' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
