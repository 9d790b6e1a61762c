"""Load a transformers MoE checkpoint with its experts left on disk.

The model skeleton is built on the meta device, the MoE blocks are swapped for offloaded ones, and only
the non-expert tensors are read into memory (strict: every non-expert parameter must be in the
checkpoint). The experts are read from the checkpoint's own safetensors files on demand, so peak
memory is the non-expert weights plus the expert-cache budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .offload import OffloadEngine, expert_tensors, find_moe_blocks, offload_moe
from .store import DiskExpertStore, is_expert_key


def save_expert_store(model: nn.Module, path: str | Path) -> Path:
    """Write a model's experts as ``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight``."""
    tensors = {}
    for i, (_, _, block) in enumerate(find_moe_blocks(model)):
        for e, (g, u, d) in enumerate(expert_tensors(block)):
            p = f"model.layers.{i}.mlp.experts.{e}."
            tensors[p + "gate_proj.weight"] = g.detach().contiguous()
            tensors[p + "up_proj.weight"] = u.detach().contiguous()
            tensors[p + "down_proj.weight"] = d.detach().contiguous()
    path = Path(path)
    save_file(tensors, str(path))
    return path


def _module_name(key: str, expected: set[str]) -> str:
    """A checkpoint key as the model names it: transformers 5 calls Mixtral's ``block_sparse_moe`` ``mlp``
    in memory but still writes (and reads) checkpoints with the original name."""
    if key not in expected and ".block_sparse_moe." in key:
        renamed = key.replace(".block_sparse_moe.", ".mlp.")
        if renamed in expected:
            return renamed
    return key


def load_offloaded(
    directory: str | Path,
    budget_bytes: int | None,
    mode: str = "on_demand",
    dtype: torch.dtype = torch.float32,
    direct_io: bool = False,
    prefetch_threads: int = 1,
) -> tuple[nn.Module, OffloadEngine]:
    """(model, engine) for a transformers MoE checkpoint directory, experts served from disk."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a transformers checkpoint (no config.json)")
    config = AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    store = DiskExpertStore.from_directory(directory, direct_io=direct_io)
    engine = offload_moe(model, store, budget_bytes, mode=mode, prefetch_threads=prefetch_threads)
    # non-expert weights
    index = directory / "model.safetensors.index.json"
    files = (sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
             if index.is_file() else sorted(directory.glob("*.safetensors")))
    state = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                if not is_expert_key(k):
                    state[k] = fh.get_tensor(k).to(dtype)
    expected = {k for k, _ in model.named_parameters()}
    state = {_module_name(k, expected): v for k, v in state.items()}
    missing = sorted(expected - set(state))
    tied = getattr(config, "tie_word_embeddings", False)
    if tied:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing:
        raise ValueError(f"{directory}: checkpoint lacks non-expert tensors {missing[:6]}")
    unexpected = sorted(set(state) - expected - {k for k, _ in model.named_buffers()})
    if unexpected:
        raise ValueError(f"{directory}: unexpected tensors {unexpected[:6]}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight
    # buffers computed at construction (rotary frequencies) are still on meta: rebuild those modules
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if any(b.is_meta for b in child.buffers(recurse=False)) and hasattr(child, "rope_type"):
                setattr(parent, name, type(child)(config=config))
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"tensors left uninitialised after loading: {leftover[:6]}")
    return model.eval(), engine
