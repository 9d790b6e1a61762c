"""Resumable training state: weights, optimiser moments and counters, without pickle.

A checkpoint directory holds ``model/`` (the official layout, written by the model's own ``save_pretrained``),
``optimizer.safetensors`` (AdamW moments, one tensor per parameter and moment) and ``state.json`` (step, seed,
loss history, optimiser hyper-parameters). Batches and dropout are seeded from ``(seed, step)``, so a run
resumed from step ``k`` replays exactly what an uninterrupted run does after step ``k``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("mimo-audio.train")

STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"


def resolve_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def seed_step(seed: int, step: int) -> int:
    """The seed of step ``step``: every random draw of a step (batch, crops, dropout) comes from it."""
    s = (int(seed) * 1_000_003 + int(step)) % (2**31 - 1)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


def optimizer_tensors(opt: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str]) -> dict[str, torch.Tensor]:
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if torch.is_tensor(value):
                    out[f"{names[p]}::{key}"] = value.detach().contiguous().cpu()
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str],
                           tensors: dict[str, torch.Tensor]) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            keys = [k for k in tensors if k.startswith(names[p] + "::")]
            if keys:
                opt.state[p] = {k.split("::", 1)[1]: tensors[k].to(p.device) for k in keys}


def save_checkpoint(directory: Path, save_model, opt: torch.optim.Optimizer,
                    names: dict[torch.nn.Parameter, str], state: dict) -> None:
    """Write to ``directory`` atomically (a temporary sibling renamed at the end)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(tmp / "model")
    save_file(optimizer_tensors(opt, names), str(tmp / OPTIMIZER))
    (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old.exists():
        shutil.rmtree(old)
    log.info("checkpoint at step %d -> %s", state["step"], directory)


def read_state(directory: Path) -> dict:
    path = Path(directory) / STATE
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}")
    return json.loads(path.read_text())


def read_optimizer(directory: Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / OPTIMIZER
    if not path.is_file():
        raise FileNotFoundError(f"no optimizer state at {path}")
    return load_file(str(path))


def progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, smoothing=0.1)
