"""Hybrid sparse attention (HySparse) and sliding-window attention with sinks, with a KV cache that shrinks.

- :func:`apply_attention` converts a transformers Qwen2 / Llama / Mistral model (or MoE variant, or a bare
  backbone such as the speech LM's ``Qwen2Model``) to a layout such as ``"hysparse-1:3"`` or ``"swa-5:1"``.
- :class:`HybridAttentionCache` is the transformers ``Cache`` it runs with (``memory()``, ``crop()``).
- :mod:`.kernels` is the one attention interface (window, sink, K/V dims, block-max scores, block reads).
- :func:`heal` is a short fine-tune of the new parameters.
- :func:`save_converted` / :func:`load_converted` write and read a converted model (safetensors + layout).
"""

from .cache import CacheMemory, HybridAttentionCache, kv_cache_bytes
from .checkpoint import load_converted, read_attention_config, save_converted
from .convert import apply_attention, build_model, new_parameters
from .heal import heal
from .introspect import attention_config_of, find_base_model
from .layout import AttentionConfig, hybrid_swa_layout, hysparse_layout, resolve_layout
from .modules import EfficientAttention

__all__ = [
    "AttentionConfig",
    "CacheMemory",
    "EfficientAttention",
    "HybridAttentionCache",
    "apply_attention",
    "attention_config_of",
    "build_model",
    "find_base_model",
    "heal",
    "hybrid_swa_layout",
    "hysparse_layout",
    "kv_cache_bytes",
    "load_converted",
    "new_parameters",
    "read_attention_config",
    "resolve_layout",
    "save_converted",
]
