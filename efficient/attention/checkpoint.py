"""Save and load a converted model: safetensors weights plus a config describing the attention layout.

A directory written by :func:`save_converted` holds

- ``model.safetensors``: every weight of the converted model (the original ones, the new sinks and gates);
- ``config.json``: the transformers config of the original architecture (``efficient_attention`` inside too);
- ``efficient_attention.json``: format name and version, the :class:`AttentionConfig` and free-form notes
  (how it was made: source model, calibration, healing steps);
- the tokenizer files, when one was given.

:func:`load_converted` rebuilds the architecture from ``config.json``, converts it with the saved layout and
loads the weights with strict key, shape and dtype checks.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from .convert import apply_attention
from .introspect import attention_config_of
from .layout import AttentionConfig

FORMAT_NAME = "mimo-audio-efficient-attention"
FORMAT_VERSION = 1
CONFIG_FILE = "efficient_attention.json"
WEIGHTS_FILE = "model.safetensors"


def save_converted(model: nn.Module, out_dir: str | Path, *, tokenizer=None, notes: dict | None = None) -> Path:
    """Write ``model`` (converted by :func:`apply_attention`) to ``out_dir``; returns the directory."""
    from safetensors.torch import save_model

    cfg = attention_config_of(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / WEIGHTS_FILE))
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "attention": cfg.to_dict(),
            "notes": notes or {}}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
    model.config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def read_attention_config(path: str | Path) -> tuple[AttentionConfig, dict]:
    """The :class:`AttentionConfig` and notes saved in a converted-model directory."""
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: not a directory written by `mimo-audio sparsify` / save_converted")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{p}: format {meta.get('format')!r} is not {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{p}: format version {meta.get('format_version')!r} is not supported "
                         f"(this build reads version {FORMAT_VERSION})")
    known = {f.name for f in fields(AttentionConfig)}
    attention = meta.get("attention")
    if not isinstance(attention, dict) or "layout" not in attention:
        raise ValueError(f"{p}: no 'attention' section with a layout")
    unknown = sorted(set(attention) - known)
    if unknown:
        raise ValueError(f"{p}: unknown attention settings {unknown}")
    return AttentionConfig(**attention), meta.get("notes", {})


def load_converted(path: str | Path, *, dtype: torch.dtype | None = None) -> nn.Module:
    """A converted ``*ForCausalLM`` from a directory written by :func:`save_converted`, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    try:  # transformers 5.x
        from transformers.initialization import no_init_weights
    except ImportError:  # 4.x
        from transformers.modeling_utils import no_init_weights

    path = Path(path)
    attn_cfg, _ = read_attention_config(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} not found")
    wfile = path / WEIGHTS_FILE
    if not wfile.is_file():
        raise FileNotFoundError(f"{wfile} not found")
    config = AutoConfig.from_pretrained(path)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    apply_attention(model, attn_cfg, init="random")
    try:
        state = load_file(str(wfile))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{wfile} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    if floats:
        model.to(floats[0])  # build in the saved precision; `dtype` converts afterwards
    own = model.state_dict()
    by_storage: dict[int, list[str]] = {}
    for name, tensor in own.items():
        by_storage.setdefault(tensor.data_ptr(), []).append(name)
    # tied parameters (lm_head = embed_tokens) are stored once
    missing = [k for k in own if k not in state and not any(o in state for o in by_storage[own[k].data_ptr()])]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"{wfile}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]} "
                         f"for layout {attn_cfg.layout}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{wfile}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if dtype is not None:
        model.to(dtype)
    return model.eval()
