"""MoEfication: split a dense SwiGLU FFN into E experts along its intermediate dimension.

Expert e owns neurons [e*I/E, (e+1)*I/E) of gate/up and the matching columns of down, so
``sum_e expert_e(x) == ffn(x)`` exactly: routing every token to all experts with unit weights
reproduces the dense model, which makes a real-weight oracle for the offload machinery. Top-k routing
(hard, unit weights) then gives a real sparse model whose router is fitted by least squares to the
experts' output norms (:func:`fit_routers`).
"""

from __future__ import annotations

import torch
from torch import nn

from .offload import Routing


class ExpertMLP(nn.Module):
    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(gate.shape[1], gate.shape[0], bias=False)
        self.up_proj = nn.Linear(up.shape[1], up.shape[0], bias=False)
        self.down_proj = nn.Linear(down.shape[1], down.shape[0], bias=False)
        with torch.no_grad():
            self.gate_proj.weight.copy_(gate)
            self.up_proj.weight.copy_(up)
            self.down_proj.weight.copy_(down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class MoefiedMLP(nn.Module):
    """A dense FFN split into experts; hard top-k routing (k = E reproduces the dense FFN).

    Returns a plain tensor (the dense decoder layer expects one); the router logits of the last call
    are kept in ``last_router_logits``.
    """

    returns_router_logits = False

    def __init__(self, mlp: nn.Module, num_experts: int, top_k: int) -> None:
        super().__init__()
        inter = mlp.gate_proj.weight.shape[0]
        if inter % num_experts:
            raise ValueError(f"intermediate size {inter} is not divisible by {num_experts} experts")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
        s = inter // num_experts
        g, u, d = mlp.gate_proj.weight.data, mlp.up_proj.weight.data, mlp.down_proj.weight.data
        self.experts = nn.ModuleList(
            [ExpertMLP(g[e * s : (e + 1) * s], u[e * s : (e + 1) * s], d[:, e * s : (e + 1) * s])
             for e in range(num_experts)]
        )
        self.gate = nn.Linear(g.shape[1], num_experts, bias=True)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.routing = Routing(top_k=top_k, kind="hard")
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self.gate(flat)
        _, sel = self.routing(logits)
        out = torch.zeros_like(flat)
        for e in torch.unique(sel).tolist():
            rows = torch.where((sel == e).any(-1))[0]
            out.index_add_(0, rows, self.experts[e](flat[rows]))
        self.last_router_logits = logits
        return out.reshape(shape)


def moefy(model: nn.Module, num_experts: int, top_k: int) -> nn.Module:
    """In place: every decoder layer's ``mlp`` (gate/up/down_proj) becomes a :class:`MoefiedMLP`."""
    layers = model.get_decoder().layers
    for layer in layers:
        if not hasattr(layer.mlp, "gate_proj"):
            raise ValueError(f"{type(layer.mlp).__name__} is not a dense SwiGLU FFN")
        layer.mlp = MoefiedMLP(layer.mlp, num_experts, top_k)
    model.config.num_experts_per_tok = top_k
    return model


@torch.no_grad()
def fit_routers(model: nn.Module, token_batches: list[torch.Tensor], ridge: float = 1e-2) -> None:
    """Least-squares routers: predict each expert's output norm from the FFN input, on real text."""
    blocks = [layer.mlp for layer in model.get_decoder().layers]
    feats: list[list[torch.Tensor]] = [[] for _ in blocks]
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: feats[i].append(a[0].reshape(-1, a[0].shape[-1])))
             for i, b in enumerate(blocks)]
    saved = [b.routing for b in blocks]
    for b in blocks:  # route everything while collecting (the dense model's activations)
        b.routing = Routing(top_k=len(b.experts), kind="hard")
    try:
        for ids in token_batches:
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        for b, r in zip(blocks, saved):
            b.routing = r
    for b, xs in zip(blocks, feats):
        x = torch.cat(xs).float()
        y = torch.stack([ex(x).norm(dim=-1) for ex in b.experts], dim=-1)  # [n, E]
        xa = torch.cat([x, torch.ones(len(x), 1)], 1)
        a = xa.T @ xa + ridge * len(x) * torch.eye(xa.shape[1])
        w = torch.linalg.solve(a, xa.T @ y)
        b.gate.weight.copy_(w[:-1].T)
        b.gate.bias.copy_(w[-1])
