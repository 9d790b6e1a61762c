"""MTP drafting and lossless speculative decoding.

- :class:`MTPConfig`, :class:`MTPHead`, :class:`MTPDrafter`: DeepSeek-V3 / MiMo MTP heads
- :func:`load_mtp`: heads from ``mtp.safetensors`` or from a checkpoint that carries MTP weights
- :class:`CausalLMTarget`: the target-model step for any transformers causal LM (adapter hook: :class:`TargetStep`)
- :class:`SpeculativeDecoder`, :func:`generate_plain`, :class:`SamplingParams`, :class:`SpecStats`
- :class:`TreeSpeculativeDecoder`: greedy drafting of a token tree (``tree=(4, 3, 2)``), verified in one pass
- training: ``python -m apps.train.mtp_text --model DIR --heads 3``
"""

from .checkpoint import load_mtp
from .decoder import AdaptiveDraftLength, SpecStats, SpeculativeDecoder, generate_plain
from .mtp import PRESETS, HeadKVCache, MTPConfig, MTPDrafter, MTPHead
from .sampling import SamplingParams, probs, verify_greedy, verify_sampling
from .target import CausalLMTarget, TargetStep, rollback
from .tree import TreeSpeculativeDecoder, parse_tree

__all__ = [
    "AdaptiveDraftLength", "CausalLMTarget", "HeadKVCache", "MTPConfig", "MTPDrafter", "MTPHead", "PRESETS",
    "SamplingParams", "SpecStats", "SpeculativeDecoder", "TargetStep", "TreeSpeculativeDecoder", "generate_plain",
    "load_mtp", "parse_tree", "probs", "rollback", "verify_greedy", "verify_sampling",
]
