"""Conversion + trainable selection in one call: what ``mimo-audio heal`` and the benchmark heal.

A conversion spec is one or more parts joined by ``+``: an attention layout (``hysparse-1:3``,
``hysparse-sparsest``, ``swa-5:1``, or one letter per layer) and/or a low-bit scheme (``w4g128``,
``w2g128``, ``afpq4g128``, ...) or a mixed low-bit layout (``q2k-mix``: a scheme per tensor, the tied
embedding low-bit too, see :mod:`efficient.quant.layouts`). ``mtp`` (MTP heads) is healed by
:class:`~efficient.distill.MTPSelfDistiller` instead and is not a student conversion.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from efficient.quant.layouts import LAYOUTS, get_layout

from .params import attach_quant_adapters, attention_parameters

log = logging.getLogger(__name__)

_ATTENTION = re.compile(r"^(full|hysparse-1:\d+|hysparse-sparsest(-reselect)?|swa-\d+:1|[FSRWfsrw]+)$")
_QUANT = re.compile(r"^(w[1-4]g(32|64|128)|w4g(32|64|128)s|afpq[34]g(64|128)|ternary(-tl|-i2s)?)$")


@dataclass
class ConversionSpec:
    attention: str | None = None
    quant: str | None = None
    parts: list[str] = field(default_factory=list)


def parse_conversion(spec: str) -> ConversionSpec:
    """``"hysparse-1:3"``, ``"w4g128"``, ``"hysparse-1:3+w4g128"`` -> :class:`ConversionSpec`."""
    out = ConversionSpec()
    for part in (p.strip() for p in spec.split("+")):
        if not part:
            raise ValueError(f"empty part in conversion {spec!r}")
        out.parts.append(part)
        if _QUANT.match(part.lower()) or get_layout(part) is not None:
            if out.quant:
                raise ValueError(f"conversion {spec!r} names two low-bit schemes")
            out.quant = part.lower()
        elif _ATTENTION.match(part):
            if out.attention:
                raise ValueError(f"conversion {spec!r} names two attention layouts")
            out.attention = part
        else:
            raise ValueError(
                f"unknown conversion {part!r}: expected an attention layout (hysparse-1:M, hysparse-sparsest, "
                "swa-N:1, or letters F/S/R/W per layer), a low-bit scheme (w4g128, w2g128, afpq4g128, ternary), "
                f"a mixed low-bit layout ({', '.join(LAYOUTS)}) or mtp (alone)"
            )
    return out


def convert_student(
    teacher: nn.Module,
    spec: str | ConversionSpec,
    *,
    calibration_ids: torch.Tensor | None = None,
    quant_method: str = "rtn",
    quant_calib_fn=None,
    quant_transform: str | None = None,
    quant_act_order: bool = False,
    attention_train: str = "sparse",
    quant_train: str = "scales",
    lora_rank: int = 16,
    attention_options: dict | None = None,
    adapter_sequences: list[tuple[torch.Tensor, int]] | None = None,
    adapter_steps: int = 10,
) -> tuple[nn.Module, list[tuple[str, nn.Parameter]]]:
    """A converted copy of ``teacher`` and the parameters healing should train (the teacher is untouched).

    ``calibration_ids [1, T]`` fit the new sinks and gates (training-free start). ``quant_method`` ``rtn``,
    ``rtn-act`` or ``gptq`` (``quant_calib_fn(model)`` runs the calibration forwards); ``quant_transform``
    ``"awq"`` (activation-aware channel scales folded in first) and ``quant_act_order`` (GPTQ act-order) as in
    :func:`efficient.quant.quantize`. ``attention_train``: ``gates`` or
    ``sparse``; ``quant_train``: ``scales``, ``lora`` or ``ste``. ``adapter_sequences`` (``(ids [1, T], tail)`` pairs:
    text and a retrieval curriculum, see :func:`efficient.attention.reconstruct.retrieval_sequences`) give the
    sparse layers adapters for the K/V they borrow, fitted to the teacher's attention for ``adapter_steps``
    steps per layer (:mod:`efficient.attention.reconstruct`) before healing.
    """
    from efficient.attention import apply_attention
    from efficient.quant import quantize

    conv = spec if isinstance(spec, ConversionSpec) else parse_conversion(spec)
    student = copy.deepcopy(teacher)
    params: list[tuple[str, nn.Parameter]] = []
    if conv.attention:
        options = dict(attention_options or {})
        if adapter_sequences:
            options["sparse_adapter"] = True
        apply_attention(student, conv.attention, calibration_ids=calibration_ids, **options)
        if adapter_sequences and any(k in "SR" for k in student.config.efficient_attention["layout"]):
            from efficient.attention.reconstruct import fit_sparse_adapters

            fit_sparse_adapters(student, teacher, [ids for ids, _ in adapter_sequences],
                                tails=[tail for _, tail in adapter_sequences], steps=adapter_steps)
        params += attention_parameters(student, attention_train)
    if conv.quant:
        quantize(student, conv.quant, method=quant_method, calib_fn=quant_calib_fn, transform=quant_transform,
                 act_order=quant_act_order)
        params += attach_quant_adapters(student, quant_train, rank=lora_rank)
    student.eval()
    log.info("student %s: %d trainable tensors, %.2fM values", "+".join(conv.parts), len(params),
             sum(p.numel() for _, p in params) / 1e6)
    return student, params
