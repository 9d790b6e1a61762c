"""Pre-gates (Pre-gated MoE): block N decides block N+1's experts from block N's own input.

Recipe: start each pre-gate as a copy of the next block's router, then distil the router into it on a
small offline corpus: collect block N's MoE input x_N and block N+1's router logits r_{N+1}(x_{N+1}),
and fit the pre-gate by ridge regression on the logits (closed form, minutes on a CPU). The quality
change is measured as perplexity on held-out text (bench/bench_moe.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .offload import OffloadEngine

PREGATE_FILENAME = "pregates.safetensors"


def make_pregates(engine: OffloadEngine) -> nn.ModuleList:
    """Pre-gate N (N = 0..L-2) initialised from block N+1's router."""
    gates = nn.ModuleList()
    for blk in engine.blocks[1:]:
        g = blk.gate
        pg = nn.Linear(g.in_features, g.out_features, bias=True)
        with torch.no_grad():
            pg.weight.copy_(g.weight)
            pg.bias.copy_(g.bias if g.bias is not None else torch.zeros(g.out_features))
        gates.append(pg)
    engine.pregates = gates
    return gates


@torch.no_grad()
def distill_pregates(
    model: nn.Module, engine: OffloadEngine, token_batches: list[torch.Tensor], ridge: float = 1e-2
) -> dict[str, float]:
    """Fit every pre-gate to reproduce the next block's router logits from the current block's input.

    Runs the model with its own routers (mode is restored afterwards). Returns the top-k agreement of
    the pre-gates with the routers on the collected data, before and after the fit.
    """
    if engine.pregates is None:
        make_pregates(engine)
    inputs: list[list[torch.Tensor]] = [[] for _ in engine.blocks]
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: inputs[i].append(a[0].reshape(-1, a[0].shape[-1])))
             for i, b in enumerate(engine.blocks)]
    mode = engine.mode
    engine.mode = "resident" if engine.cache is None else "on_demand"
    try:
        for ids in token_batches:
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        engine.mode = mode
    before, after = [], []
    for n, pg in enumerate(engine.pregates):
        x = torch.cat(inputs[n]).float()
        nxt = engine.blocks[n + 1]
        target = nxt.gate(torch.cat(inputs[n + 1]).float())
        k = nxt.routing.top_k
        before.append(_topk_overlap(pg(x), target, k))
        xa = torch.cat([x, torch.ones(len(x), 1)], 1)
        a = xa.T @ xa + ridge * len(x) * torch.eye(xa.shape[1])
        w = torch.linalg.solve(a, xa.T @ target)
        pg.weight.copy_(w[:-1].T)
        pg.bias.copy_(w[-1])
        after.append(_topk_overlap(pg(x), target, k))
    return {"topk_overlap_before": sum(before) / len(before), "topk_overlap_after": sum(after) / len(after)}


def _topk_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    ia, ib = a.topk(k, -1).indices, b.topk(k, -1).indices
    return (ia[:, :, None] == ib[:, None, :]).any(-1).float().mean().item()


def save_pregates(engine: OffloadEngine, directory: str | Path) -> Path:
    path = Path(directory) / PREGATE_FILENAME
    save_file({k: v.contiguous() for k, v in engine.pregates.state_dict().items()}, str(path))
    return path


def load_pregates(engine: OffloadEngine, path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        path = path / PREGATE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pre-gates; distil them with efficient.moe.pregate.distill_pregates")
    gates = make_pregates(engine)
    sd = load_file(str(path))
    expected = set(gates.state_dict())
    if set(sd) != expected:
        raise ValueError(f"{path}: pre-gate tensors {sorted(sd)[:4]}... do not match the model ({len(expected)} keys)")
    gates.load_state_dict(sd)
