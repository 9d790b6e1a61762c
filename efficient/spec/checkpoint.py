"""Loading MTP heads: our own ``mtp.safetensors`` beside a model, or MTP weights inside a checkpoint.

Recognised layouts (strict key and shape checks; safetensors only):

- ``mtp.safetensors`` written by :meth:`MTPDrafter.save` / ``python -m apps.train.mtp_text``;
- MiMo-7B: ``model.mtp_layers.{i}.{token_layernorm,hidden_layernorm,input_proj,final_layernorm,...}``
  (concatenation order [hidden; embedding]);
- MiMo-V2 / DeepSeek-V3 style with a dense FFN: ``model.mtp.layers.{i}.`` or ``model.layers.{L+i}.``
  with ``enorm``, ``hnorm``, ``eh_proj`` (and ``shared_head.norm`` / ``final_layernorm`` when present).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from .mtp import MTP_FILENAME, MTPConfig, MTPDrafter
from .target import TargetStep

_BLOCK = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attn.q_proj.weight": "q_proj.weight",
    "self_attn.q_proj.bias": "q_proj.bias",
    "self_attn.k_proj.weight": "k_proj.weight",
    "self_attn.k_proj.bias": "k_proj.bias",
    "self_attn.v_proj.weight": "v_proj.weight",
    "self_attn.v_proj.bias": "v_proj.bias",
    "self_attn.o_proj.weight": "o_proj.weight",
    "mlp.gate_proj.weight": "gate_proj.weight",
    "mlp.up_proj.weight": "up_proj.weight",
    "mlp.down_proj.weight": "down_proj.weight",
}
_MIMO7B = {"token_layernorm.weight": "enorm.weight", "hidden_layernorm.weight": "hnorm.weight",
           "input_proj.weight": "eh_proj.weight", "final_layernorm.weight": "final_norm.weight"}
_DEEPSEEK = {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "eh_proj.weight": "eh_proj.weight",
             "shared_head.norm.weight": "final_norm.weight", "final_layernorm.weight": "final_norm.weight"}


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / f for f in files]
    return sorted(directory.glob("*.safetensors"))


def _read_keys(files: list[Path]) -> dict[str, Path]:
    keys: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                keys[k] = f
    return keys


def _get(keys: dict[str, Path], name: str) -> torch.Tensor:
    with safe_open(str(keys[name]), framework="pt") as fh:
        return fh.get_tensor(name)


def _detect(keys: dict[str, Path], num_layers: int) -> tuple[str, list[str]] | None:
    """(layout, per-head key prefixes) of MTP weights inside a checkpoint, or None."""
    for layout, pattern in (("mimo7b", r"^model\.mtp_layers\.(\d+)\."), ("deepseek", r"^model\.mtp\.layers\.(\d+)\.")):
        idx = sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})
        if idx:
            prefix = pattern[1:].replace(r"\.", ".").replace(r"(\d+)", "{}")
            return layout, [prefix.format(i) for i in idx]
    extra = sorted({int(m.group(1)) for k in keys if (m := re.match(r"^model\.layers\.(\d+)\.eh_proj\.", k))})
    extra = [i for i in extra if i >= num_layers]
    if extra:
        return "deepseek", [f"model.layers.{i}." for i in extra]
    return None


def load_mtp(path: str | Path, target: TargetStep, num_heads: int | None = None) -> MTPDrafter:
    """MTP heads for ``target`` from ``path`` (a model directory or an ``mtp.safetensors`` file).

    Raises FileNotFoundError when the directory carries no MTP weights, ValueError on a key or shape
    mismatch.
    """
    path = Path(path)
    own = path if path.suffix == ".safetensors" else path / MTP_FILENAME
    if own.is_file():
        return _load_own(own, target)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such MTP file or model directory")
    keys = _read_keys(_safetensors_files(path))
    num_layers = int(getattr(target.config, "num_hidden_layers", 10**9))
    found = _detect(keys, num_layers)
    if found is None:
        raise FileNotFoundError(
            f"{path} carries no MTP weights (looked for {MTP_FILENAME}, model.mtp_layers.*, model.mtp.layers.*, "
            f"model.layers.>={num_layers}.eh_proj). Train heads with `python -m apps.train.mtp_text --model {path}`."
        )
    layout, prefixes = found
    if num_heads is not None:
        prefixes = prefixes[:num_heads]
    first = prefixes[0]
    own_norm = any(k.startswith(first) and k.endswith(("final_layernorm.weight", "shared_head.norm.weight"))
                   for k in keys)
    cfg = MTPConfig.from_target(
        target.config, num_heads=len(prefixes), own_final_norm=own_norm,
        concat_order="hidden_first" if layout == "mimo7b" else "emb_first",
        attention_bias=f"{first}self_attn.q_proj.bias" in keys,
    )
    drafter = MTPDrafter(cfg, target.embed, target.final_norm, target.lm_head)
    names = {**_BLOCK, **(_MIMO7B if layout == "mimo7b" else _DEEPSEEK)}
    for head, prefix in zip(drafter.heads, prefixes):
        sd = head.state_dict()
        loaded = set()
        for src, dst in names.items():
            if prefix + src in keys and dst in sd:
                t = _get(keys, prefix + src)
                if t.shape != sd[dst].shape:
                    raise ValueError(f"{prefix + src}: shape {tuple(t.shape)} != expected {tuple(sd[dst].shape)}")
                sd[dst] = t.to(sd[dst].dtype)
                loaded.add(dst)
        missing = sorted(set(sd) - loaded)
        if missing:
            raise ValueError(
                f"MTP head {prefix!r} in {path}: missing tensors {missing} (MoE MTP blocks are not supported)"
            )
        head.load_state_dict(sd)
    return drafter


def _load_own(file: Path, target: TargetStep) -> MTPDrafter:
    with safe_open(str(file), framework="pt") as fh:
        meta = fh.metadata() or {}
        if "mtp_config" not in meta:
            raise ValueError(f"{file}: not an MTP file written by efficient.spec (no mtp_config metadata)")
        cfg = MTPConfig(**json.loads(meta["mtp_config"]))
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    hidden = target.embed.weight.shape[1]
    if cfg.hidden_size != hidden or cfg.vocab_size != target.embed.weight.shape[0]:
        raise ValueError(
            f"{file}: heads are for hidden {cfg.hidden_size} / vocab {cfg.vocab_size}, the target has hidden "
            f"{hidden} / vocab {target.embed.weight.shape[0]}"
        )
    drafter = MTPDrafter(cfg, target.embed, target.final_norm, target.lm_head)
    vocab = tensors.pop("draft_vocab", None)
    expected = set(drafter.heads.state_dict())
    if set(tensors) != expected:
        raise ValueError(
            f"{file}: missing {sorted(expected - set(tensors))[:5]}, unexpected {sorted(set(tensors) - expected)[:5]}"
        )
    drafter.heads.load_state_dict(tensors, strict=True)
    drafter.draft_vocab = vocab
    return drafter
