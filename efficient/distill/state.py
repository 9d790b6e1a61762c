"""Resumable training state: trainable tensors + AdamW moments in safetensors, the rest in JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_TENSORS = "distill_state.safetensors"
STATE_JSON = "distill_state.json"


def save_state(directory: str | Path, params: list[tuple[str, nn.Parameter]], opt: torch.optim.Optimizer,
               meta: dict[str, Any]) -> Path:
    """Write the tensors and ``meta`` (JSON-serialisable) atomically; returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, p in params:
        tensors[f"param/{name}"] = p.detach().cpu().contiguous()
        st = opt.state.get(p)
        if st:
            tensors[f"exp_avg/{name}"] = st["exp_avg"].detach().cpu().contiguous()
            tensors[f"exp_avg_sq/{name}"] = st["exp_avg_sq"].detach().cpu().contiguous()
            tensors[f"step/{name}"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    tmp = out / (STATE_TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / STATE_TENSORS)
    tmpj = out / (STATE_JSON + ".tmp")
    tmpj.write_text(json.dumps(meta, indent=1))
    tmpj.replace(out / STATE_JSON)
    return out


def has_state(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / STATE_TENSORS).is_file() and (d / STATE_JSON).is_file()


@torch.no_grad()
def load_state(directory: str | Path, params: list[tuple[str, nn.Parameter]],
               opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the tensors into ``params`` and ``opt``; returns the JSON meta. Names must match exactly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    if not has_state(d):
        raise FileNotFoundError(f"{d}: no healing state ({STATE_TENSORS} + {STATE_JSON}) to resume from")
    try:
        tensors = load_file(str(d / STATE_TENSORS))
        meta = json.loads((d / STATE_JSON).read_text())
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{d}: unreadable healing state: {exc}") from exc
    names = {n for n, _ in params}
    saved = {k.split("/", 1)[1] for k in tensors if k.startswith("param/")}
    if names != saved:
        diff = sorted(names ^ saved)
        raise ValueError(f"{d}: the healing state trains other parameters than this run ({diff[:3]} ...); "
                         "resume with the same --convert/--train settings")
    for name, p in params:
        t = tensors[f"param/{name}"]
        if t.shape != p.shape:
            raise ValueError(f"{d}: {name} has shape {tuple(t.shape)} in the state, {tuple(p.shape)} here")
        p.copy_(t.to(p.device, p.dtype))
        if f"exp_avg/{name}" in tensors:
            opt.state[p] = {"exp_avg": tensors[f"exp_avg/{name}"].to(p.device),
                            "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].to(p.device),
                            "step": tensors[f"step/{name}"].reshape(())}
    return meta
