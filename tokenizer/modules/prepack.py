"""Optional CPU fast path: bf16 linear layers with weights pre-packed once for oneDNN.

``torch.nn.functional.linear`` on bf16 CPU tensors re-lays out the weight on every call; for the small
matrix products of streaming decode that costs about as much as the product itself. Pre-packing once
removes it (measured ~20 % per decoder layer at 10 rows, a few % at 500 rows) with bit-identical results.
Uses ``torch.ops.mkldnn`` (internal API): anything unavailable falls back to the plain path.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

log = logging.getLogger(__name__)


def _available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") and (
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except Exception:
        return False


def _packed_forward(module: nn.Linear, packed: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.device.type != "cpu" or x.dim() != 2:
            return nn.functional.linear(x, module.weight, module.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")

    return forward


def prepack_linears(model: nn.Module, enable: bool, batch_hint: int = 64) -> int:
    """Pre-pack (``enable=True``) or restore (``False``) every bf16 CPU nn.Linear of ``model``; returns the count."""
    count = 0
    use = enable and _available()
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        if "forward" in module.__dict__:
            del module.forward  # back to the class method
        w = module.weight
        if use and w.dtype == torch.bfloat16 and w.device.type == "cpu":
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_hint)
            except Exception as exc:  # internal API changed: keep the plain path
                log.debug("bf16 weight pre-packing unavailable: %s", exc)
                return count
            module.forward = _packed_forward(module, packed)
            count += 1
    return count
