"""Expert offload for transformers MoE models: on-demand, speculative prefetch and pre-gated modes.

:func:`offload_moe` swaps every sparse MoE block (Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE, MoEfied
models: any module with a ``gate`` router and an ``experts`` list) for an :class:`OffloadedMoeBlock`
whose experts are read through an :class:`ExpertCache` from a slower :class:`ExpertStore`.

Modes (``OffloadEngine.mode``):

- ``resident``: experts are computed straight from the store (all in memory; the reference);
- ``on_demand``: route, then read the missing experts, serialised with compute;
- ``speculative``: block N also applies block N+1's router to its own input and prefetches those
  experts on a background thread; block N+1 still routes with its true router and reads misses on
  demand. Lossless: outputs are identical to on-demand;
- ``pregated`` (Pre-gated MoE, Hwang et al. 2024): block N runs a *pre-gate* on its input that decides
  block N+1's experts; that routing is authoritative (no fallback), so it changes the model and needs
  pre-gates distilled from the routers (:mod:`efficient.moe.pregate`).

Multi-token inputs (prefill, and speculative verification of K+1 tokens) route every token and fetch
the union of the experts they need; in speculative/pre-gated mode the prefetch for the next block is
that union too, which is how MTP drafts get their experts prefetched before they are needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import ExpertCache
from .store import Expert, ExpertStore

log = logging.getLogger(__name__)

MODES = ("resident", "on_demand", "speculative", "pregated")


@dataclass(frozen=True)
class Routing:
    """How router logits become expert weights."""

    top_k: int
    kind: str = "softmax"  # "softmax" (Qwen/Mixtral/OLMoE) or "hard" (unit weights, MoEfication)
    norm_topk_prob: bool = True

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "hard":
            sel = logits.topk(self.top_k, dim=-1).indices
            return torch.ones(sel.shape, dtype=logits.dtype, device=logits.device), sel
        w = torch.softmax(logits, dim=-1, dtype=torch.float)
        w, sel = w.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        return w, sel


class OffloadEngine:
    """Shared state of all offloaded blocks of one model: mode, cache, routers and pre-gates."""

    def __init__(self, store: ExpertStore, cache: ExpertCache | None, mode: str = "on_demand") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown offload mode {mode!r}; expected one of {MODES}")
        if mode in ("on_demand", "speculative") and cache is None:
            raise ValueError(f"mode {mode!r} needs an ExpertCache")
        if mode == "pregated":
            raise ValueError("start in another mode, add pre-gates (make_pregates / load_pregates), then "
                             "engine.set_mode('pregated')")
        self.store, self.cache, self.mode = store, cache, mode
        self.blocks: list[OffloadedMoeBlock] = []
        self.pregates: nn.ModuleList | None = None
        self._pending: dict[int, torch.Tensor] = {}  # layer -> pre-gate logits decided by layer - 1
        self.prefetch_predictions = 0
        self.prefetch_correct = 0

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown offload mode {mode!r}; expected one of {MODES}")
        if mode == "pregated" and self.pregates is None:
            raise ValueError("pre-gated mode needs pre-gates: engine.pregates = make_pregates(...) or load them")
        if mode in ("on_demand", "speculative") and self.cache is None:
            raise ValueError(f"mode {mode!r} needs an ExpertCache")
        self.mode = mode
        self._pending.clear()

    def next_choice(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Block ``layer`` looks ahead: (next-layer logits, selected experts) or None."""
        nxt = layer + 1
        if nxt >= len(self.blocks):
            return None
        if self.mode == "pregated":
            logits = self.pregates[layer](x)
            self._pending[nxt] = logits
        elif self.mode == "speculative":
            logits = self.blocks[nxt].gate(x)
        else:
            return None
        sel = self.blocks[nxt].routing(logits)[1]
        return logits, sel

    def prefetch_tokens(self, hidden: torch.Tensor) -> None:
        """Prefetch block 0's experts for a batch of hidden states (e.g. embeddings of MTP drafts)."""
        if self.cache is None or not self.blocks:
            return
        sel = self.blocks[0].routing(self.blocks[0].gate(hidden.reshape(-1, hidden.shape[-1])))[1]
        self.cache.prefetch([(0, int(e)) for e in torch.unique(sel)])


class OffloadedMoeBlock(nn.Module):
    """Drop-in for a transformers sparse MoE block; experts come from the engine's cache."""

    def __init__(
        self,
        layer: int,
        gate: nn.Linear,
        routing: Routing,
        engine: OffloadEngine,
        act: str = "silu",
        shared_expert: nn.Module | None = None,
        shared_expert_gate: nn.Module | None = None,
        returns_router_logits: bool = True,
    ) -> None:
        super().__init__()
        self.returns_router_logits = returns_router_logits
        self.layer, self.gate, self.routing = layer, gate, routing
        self.shared_expert, self.shared_expert_gate = shared_expert, shared_expert_gate
        self._engine = [engine]  # not a submodule
        self.act = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}[act]
        self.num_experts = gate.out_features

    @property
    def engine(self) -> OffloadEngine:
        return self._engine[0]

    def _expert(self, e: int) -> Expert:
        eng = self.engine
        if eng.mode == "resident" or eng.cache is None:
            return eng.store.read((self.layer, e))
        return eng.cache.get((self.layer, e))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        eng = self.engine
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        if eng.mode == "pregated" and self.layer > 0:
            logits = eng._pending.pop(self.layer, None)
            if logits is None:
                raise RuntimeError(f"pre-gated MoE block {self.layer} ran before block {self.layer - 1} routed it")
        else:
            logits = self.gate(x)
        weights, selected = self.routing(logits)
        if eng.cache is not None and eng.mode in ("speculative", "pregated") and self.layer > 0:
            self._score_prediction(selected)
        # look ahead before computing, so the next block's reads overlap with this block's work
        ahead = eng.next_choice(self.layer, x)
        if ahead is not None and eng.cache is not None:
            nxt = torch.unique(ahead[1]).tolist()
            eng.cache.prefetch([(self.layer + 1, e) for e in nxt])
        out = torch.zeros_like(x)
        for e in torch.unique(selected).tolist():
            rows, slot = torch.where(selected == e)
            g, u, d = self._expert(e)
            xe = x[rows]
            ye = F.linear(self.act(F.linear(xe, g)) * F.linear(xe, u), d)
            out.index_add_(0, rows, ye * weights[rows, slot, None].to(ye.dtype))
        if self.shared_expert is not None:
            s = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                s = torch.sigmoid(self.shared_expert_gate(x)) * s
            out = out + s
        self.last_router_logits = logits
        return (out.reshape(shape), logits) if self.returns_router_logits else out.reshape(shape)

    def _score_prediction(self, selected: torch.Tensor) -> None:
        """Share of this block's experts already cached or in flight when it routes."""
        eng = self.engine
        cached = [eng.cache.available((self.layer, e)) for e in torch.unique(selected).tolist()]
        eng.prefetch_predictions += len(cached)
        eng.prefetch_correct += sum(cached)


# -- wiring into transformers models ----------------------------------------------------------------------

def _is_router(gate: object) -> bool:
    """An ``nn.Linear`` router (transformers 4.x) or a top-k router module with a 2-D ``weight`` (5.x)."""
    w = getattr(gate, "weight", None)
    return isinstance(gate, nn.Module) and isinstance(w, torch.Tensor) and w.dim() == 2


def _is_fused(experts: object) -> bool:
    """transformers 5.x experts: one module with 3-D ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I]."""
    return isinstance(getattr(experts, "gate_up_proj", None), torch.Tensor) and isinstance(
        getattr(experts, "down_proj", None), torch.Tensor)


def find_moe_blocks(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, block) of every sparse MoE block, in layer order."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            experts = getattr(child, "experts", None)
            sparse = _is_router(getattr(child, "gate", None)) and (
                isinstance(experts, nn.ModuleList) or _is_fused(experts))
            if isinstance(child, OffloadedMoeBlock) or sparse:
                found.append((parent, name, child))
    return found


def _router_linear(gate: nn.Module) -> nn.Linear:
    """The router as an ``nn.Linear`` (5.x's router modules become one sharing their weight)."""
    if isinstance(gate, nn.Linear):
        return gate
    w = gate.weight
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    lin.weight = w
    return lin


def _routing_of(block: nn.Module, config) -> Routing:
    if hasattr(block, "routing") and isinstance(block.routing, Routing):
        return block.routing
    gate = getattr(block, "gate", None)
    top_k = getattr(block, "top_k", None) or getattr(gate, "top_k", None) or getattr(config, "num_experts_per_tok",
                                                                                    None)
    if not top_k:
        raise ValueError(f"{type(block).__name__}: cannot tell its top-k")
    # Mixtral always renormalises the top-k weights; Qwen/OLMoE follow norm_topk_prob (on the router in 5.x)
    norm = getattr(block, "norm_topk_prob", getattr(gate, "norm_topk_prob", True))
    return Routing(top_k=int(top_k), kind="softmax", norm_topk_prob=bool(norm))


def expert_tensors(block: nn.Module) -> list[Expert]:
    if _is_fused(block.experts):  # gate and up concatenated along the output rows
        gate_up, down = block.experts.gate_up_proj, block.experts.down_proj
        return [(*gate_up[e].chunk(2, dim=0), down[e]) for e in range(gate_up.shape[0])]
    out = []
    for ex in block.experts:
        if hasattr(ex, "gate_proj"):
            out.append((ex.gate_proj.weight, ex.up_proj.weight, ex.down_proj.weight))
        elif hasattr(ex, "w1"):
            out.append((ex.w1.weight, ex.w3.weight, ex.w2.weight))
        else:
            raise ValueError(f"unknown expert layout {type(ex).__name__} (expected gate/up/down_proj or w1/w3/w2)")
    return out


def offload_moe(
    model: nn.Module,
    store: ExpertStore,
    budget_bytes: int | None,
    mode: str = "on_demand",
    device: str | torch.device = "cpu",
    prefetch_threads: int = 1,
) -> OffloadEngine:
    """Replace the model's MoE blocks by offloaded ones reading experts from ``store``.

    The original experts are dropped from the model (their memory is freed unless referenced
    elsewhere). ``budget_bytes`` bounds the expert cache (None only with mode="resident").
    """
    blocks = find_moe_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no sparse MoE blocks (modules with `gate` and `experts`)")
    n_store_layers = len({k[0] for k in store.keys})
    if n_store_layers != len(blocks):
        raise ValueError(f"the expert store holds {n_store_layers} MoE layers, the model has {len(blocks)}")
    cache = None
    if budget_bytes is not None:
        top_k = max(_routing_of(b, model.config).top_k for _, _, b in blocks)
        per = max(store.expert_bytes(k) for k in store.keys)
        if budget_bytes < 2 * top_k * per:
            raise ValueError(
                f"expert cache budget {budget_bytes / 2**20:.1f} MiB is below two layers' active experts "
                f"(2 x top-{top_k} x {per / 2**20:.1f} MiB); prefetching would evict what it fetched"
            )
        cache = ExpertCache(store, budget_bytes, device=device, prefetch_threads=prefetch_threads)
    elif mode in ("on_demand", "speculative"):
        raise ValueError(f"mode {mode!r} needs budget_bytes")
    engine = OffloadEngine(store, cache, mode)
    act = getattr(model.config, "hidden_act", "silu")
    for i, (parent, name, block) in enumerate(blocks):
        gate = _router_linear(block.gate)
        if gate.out_features != len([k for k in store.keys if k[0] == i]):
            raise ValueError(f"MoE layer {i}: router has {gate.out_features} experts, the store another count")
        new = OffloadedMoeBlock(
            i, gate, _routing_of(block, model.config), engine, act=act,
            shared_expert=getattr(block, "shared_expert", None),
            shared_expert_gate=getattr(block, "shared_expert_gate", None),
            # 4.x blocks return (out, router_logits); 5.x blocks return out (router modules record the logits)
            returns_router_logits=getattr(block, "returns_router_logits", isinstance(block.gate, nn.Linear)),
        )
        setattr(parent, name, new)
        engine.blocks.append(new)
    return engine
