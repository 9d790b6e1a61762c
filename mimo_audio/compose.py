"""The efficient speech-LM backbone: LUT low-bit weights + sparse attention, composed with MTP drafting.

:func:`compose_backbone` converts a :class:`~mimo_audio.modeling.SpeechLM` in place: the backbone's
attention to a HySparse / sliding-window layout (``efficient.attention.apply_attention``), then the
backbone's projections to a low-bit LUT format (``efficient.quant.quantize``). Text head, embeddings,
patch encoder and patch decoder keep their weights. The result runs through the normal generation loop
(``SpeechLM.new_cache`` gives it the hybrid cache) and through MTP speculative decoding
(:class:`mimo_audio.speculative.SpeculativeText`), whose greedy output equals the composed model's own
plain greedy output (lossless with respect to the same weights; quantization and sparse attention are
not lossless with respect to the original model).
"""

from __future__ import annotations

import logging
from typing import Any

from .modeling import SpeechLM

logger = logging.getLogger(__name__)

# Backbone projections only (not the sinks and gates that the attention conversion adds).
BACKBONE_LINEARS = ("model.layers.*.mlp.*_proj", "model.layers.*.self_attn.[qkvo]_proj")


def compose_backbone(
    lm: SpeechLM, quant: str | None = "w4g64", attention: str | None = "hysparse-1:3", **attention_options: Any
) -> SpeechLM:
    """Convert ``lm``'s backbone in place (``None`` skips a part); returns ``lm``.

    ``quant``: an ``efficient.quant`` scheme (``w4g64``, ``w2g64``, ``ternary``, ...); ``attention``: an
    ``efficient.attention`` layout (``hysparse-1:3``, ``swa-3:1``, ``FSSF``, ...) with options such as
    ``window``, ``block_size``, ``top_k``, ``rollback_slack`` (must cover the MTP draft length).
    """
    if attention is not None:
        from efficient.attention import apply_attention

        apply_attention(lm.model, attention, **attention_options)
    if quant is not None:
        from efficient.quant import quantize

        reports = quantize(lm, quant, include=BACKBONE_LINEARS)
        logger.info("quantized %d backbone linears to %s", len(reports), quant)
    return lm
