"""What a transformers model holds: its base decoder, and the attention layout it was converted to.

Below both the cache and the conversion, so either can ask without importing the other.
"""

from __future__ import annotations

from torch import nn

from .layout import AttentionConfig


def find_base_model(model: nn.Module) -> nn.Module:
    """The module holding ``layers`` (a bare ``Qwen2Model``/``LlamaModel`` or the ``.model`` of a CausalLM)."""
    for cand in (model, getattr(model, "model", None)):
        if cand is not None and isinstance(getattr(cand, "layers", None), nn.ModuleList) and hasattr(cand, "config"):
            return cand
    raise ValueError(
        f"{type(model).__name__} is not a supported transformers decoder: expected a Qwen2/Llama/Mistral model "
        "(or *ForCausalLM, or an MoE variant) with a `.layers` list of decoder layers"
    )


def attention_config_of(model: nn.Module) -> AttentionConfig:
    """The :class:`AttentionConfig` a converted model runs with."""
    base = find_base_model(model)
    cfg = getattr(base, "_efficient_attention_config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has not been converted: call efficient.apply_attention first")
    return cfg
