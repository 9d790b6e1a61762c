"""Strict safetensors checkpoints in the official layout (``config.json`` + ``model.safetensors``, or shards
listed in ``model.safetensors.index.json``). Never unpickles.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"

# Buffers that official checkpoints may omit: RVQ training statistics and the (recomputable) iSTFT window.
OPTIONAL = re.compile(
    r"^(encoder\.quantizer\.vq\.layers\.\d+\._codebook\.(inited|cluster_size|embed_avg)|decoder\.vocoder\.head\.istft\.window)$"
)
_MAX_LISTED = 12


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in load order."""
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    if not directory.is_dir():
        raise ValueError(f"checkpoint path must be a directory (config.json + model.safetensors): {directory}")
    single, index = directory / WEIGHTS, directory / INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index} is not a valid safetensors index ({exc})") from exc
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"shard {f.name} listed in {index.name} is missing from {directory}")
        return files
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = ""
    if pickled:
        hint = f" (found {', '.join(pickled)}: pickle checkpoints are refused, convert them to safetensors)"
    raise FileNotFoundError(f"no {WEIGHTS} or {INDEX} in {directory}{hint}")


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key in tensors:
                        raise ValueError(f"tensor {key} appears in more than one shard ({path.name})")
                    tensors[key] = f.get_tensor(key)
        except ValueError:
            raise
        except Exception as exc:  # safetensors raises SafetensorError for truncated/corrupt files
            raise ValueError(f"could not read {path} as safetensors ({exc})") from exc
    return tensors


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Strictly assign ``tensors`` to ``model`` (which may live on the meta device).

    Raises ``ValueError`` naming every missing, unexpected or mis-shaped tensor; only the ``OPTIONAL``
    buffers may be absent (they keep the model's own values: zeros or the Hann window).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors and not OPTIONAL.match(k)]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if problems:
        raise ValueError("checkpoint does not match the tokenizer config: " + "; ".join(problems))
    full = {}
    for key, ref in expected.items():
        if key in tensors:
            full[key] = tensors[key]
        elif ref.is_meta:
            full[key] = default_buffer(model, key, ref)
        else:
            full[key] = ref
    model.load_state_dict(full, strict=True, assign=True)


def default_buffer(model: nn.Module, key: str, ref: torch.Tensor) -> torch.Tensor:
    if key.endswith("istft.window"):
        return torch.hann_window(ref.shape[0])
    return torch.zeros(ref.shape, dtype=ref.dtype)


def save(model: nn.Module, directory: Path, max_shard_bytes: int | None = None) -> list[Path]:
    """Write ``model.safetensors`` (or shards + index when ``max_shard_bytes`` is set)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(state, str(directory / WEIGHTS), metadata=meta)
        return [directory / WEIGHTS]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    n = len(shards)
    weight_map, paths = {}, []
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(directory / name), metadata=meta)
        weight_map.update({k: name for k in shard})
        paths.append(directory / name)
    total = sum(v.numel() * v.element_size() for v in state.values())
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return paths
