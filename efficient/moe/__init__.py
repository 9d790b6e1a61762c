"""MoE expert offload: a byte-bounded LRU expert cache over a slow tier, with pre-gated and
speculative-prefetch modes, and MoEfication of dense FFNs as a real-weight oracle.

- :func:`offload_moe` / :func:`load_offloaded`: serve a transformers MoE model's experts from a store
- :class:`DiskExpertStore`, :class:`MemoryExpertStore`, :class:`ExpertCache`
- :func:`make_pregates`, :func:`distill_pregates`: Pre-gated MoE
- :func:`moefy`, :func:`fit_routers`: split a dense SwiGLU FFN into experts
"""

from .cache import CacheStats, ExpertCache
from .loading import load_offloaded, save_expert_store
from .moefy import MoefiedMLP, fit_routers, moefy
from .offload import MODES, OffloadedMoeBlock, OffloadEngine, Routing, find_moe_blocks, offload_moe
from .pregate import distill_pregates, load_pregates, make_pregates, save_pregates
from .store import DiskExpertStore, ExpertStore, MemoryExpertStore

__all__ = [
    "MODES", "CacheStats", "DiskExpertStore", "ExpertCache", "ExpertStore", "MemoryExpertStore", "MoefiedMLP",
    "OffloadEngine", "OffloadedMoeBlock", "Routing", "distill_pregates", "find_moe_blocks", "fit_routers",
    "load_offloaded", "load_pregates", "make_pregates", "moefy", "offload_moe", "save_expert_store",
    "save_pregates",
]
