"""``apply_attention``: convert a transformers Qwen2 / Llama / Mistral model (or MoE variant) to a layout.

- Training-free conversion keeps every pretrained weight. Sparse (``S``/``R``) layers keep their own
  ``k_proj``/``v_proj`` for the window branch and borrow the full layer's KV for the sparse branch.
  With ``calibration_ids``, each new sink and gate is fitted, per head, so the new layer's output is as close
  as possible (least squares) to the original layer's on that text, layer by layer with the original model's
  hidden states (:mod:`.calibrate`). Without data the defaults are a plain window (W) and a mostly-local mix
  (S/R).
- ``init="random"`` builds the modules for a natively trained model: :func:`build_model` makes a fresh model
  from a transformers config and converts it that way.

The model's config records the layout (``config.efficient_attention``), its attention implementation becomes
``"efficient_hybrid"`` (so transformers builds no dense masks), and a forward pre-hook on the base model
supplies a :class:`HybridAttentionCache` when the caller passes none or an empty ``DynamicCache`` (as
``generate`` does).
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_utils import AttentionInterface

from .cache import HybridAttentionCache
from .introspect import find_base_model
from .layout import AttentionConfig, resolve_layout
from .modules import EfficientAttention

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "efficient_hybrid"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen2_moe", "mixtral", "qwen3", "qwen3_moe")


def _no_dense_attention(*args, **kwargs):
    raise RuntimeError("efficient_hybrid attention runs inside efficient.attention modules only")


AttentionInterface.register(ATTN_IMPLEMENTATION, _no_dense_attention)


@functools.cache
def _cache_kwarg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _cache_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
    if len(args) > 3:
        raise ValueError("pass past_key_values to a converted model by keyword")
    # transformers 5 renamed the forward's ``past_key_values`` to ``cache``: accept either, pass the one it takes
    key = _cache_kwarg(type(module))
    pkv = kwargs.pop("cache", None)
    pkv = kwargs.pop("past_key_values", None) if pkv is None else pkv
    fresh = pkv is None or (type(pkv) is DynamicCache and pkv.get_seq_length() == 0)
    if fresh:
        pkv = HybridAttentionCache(module._efficient_attention_config)
    kwargs[key] = pkv
    if not isinstance(pkv, HybridAttentionCache):
        raise TypeError(
            f"a model converted by efficient.apply_attention needs a HybridAttentionCache, got {type(pkv).__name__} "
            "(make one with HybridAttentionCache.for_model(model))"
        )
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all()):
        raise ValueError("padded batches are not supported by efficient attention: give every row the same length")
    return args, kwargs


def _config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def apply_attention(
    model: nn.Module,
    layout: str | AttentionConfig,
    *,
    inplace: bool = True,
    init: str = "pretrained",
    calibration_ids: torch.Tensor | None = None,
    **config_overrides,
) -> nn.Module:
    """Convert ``model``'s attention to ``layout``; returns the converted model (``model`` itself if ``inplace``).

    ``layout``: an :class:`AttentionConfig`, a preset (``"hysparse-1:3"``, ``"hysparse-sparsest"``,
    ``"hysparse-sparsest-reselect"``, ``"swa-5:1"``, ``"full"``) or one letter per layer (``"FSSSF..."``).
    ``config_overrides`` set :class:`AttentionConfig` fields (``window``, ``top_k``, ``block_size``, ...).
    ``init``: ``"pretrained"`` (training-free; fitted on ``calibration_ids`` ``[1, T]`` if given) or
    ``"random"`` (new parameters for training from scratch).
    """
    if init not in ("pretrained", "random"):
        raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
    base = find_base_model(model)
    mcfg = base.config
    model_type = getattr(mcfg, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if getattr(base, "_efficient_attention_config", None) is not None:
        raise ValueError("this model is already converted; convert the original (or a copy of it) instead")
    n_layers = len(base.layers)
    if isinstance(layout, AttentionConfig):
        cfg = copy.deepcopy(layout)
        for key, value in config_overrides.items():
            setattr(cfg, key, value)
        cfg.layout = resolve_layout(cfg.layout, n_layers)
    else:
        if init == "pretrained" and "sparse_skip_window" not in config_overrides:
            config_overrides["sparse_skip_window"] = True  # the window branch already covers recent keys
        cfg = AttentionConfig(layout=resolve_layout(layout, n_layers), **config_overrides)
    if not inplace:
        model = copy.deepcopy(model)
        base = find_base_model(model)
        mcfg = base.config

    heads = mcfg.num_attention_heads
    kv_heads = _config_value(mcfg, "num_key_value_heads", default=heads)
    head_dim = _config_value(mcfg, "head_dim", default=mcfg.hidden_size // heads)
    captured = None
    if init == "pretrained" and calibration_ids is not None:
        from .calibrate import capture_attention_inputs

        captured = capture_attention_inputs(base, calibration_ids)
    for i, (layer, kind) in enumerate(zip(base.layers, cfg.layout)):
        old = layer.self_attn
        projections = {name: getattr(old, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")
                       if isinstance(getattr(old, name, None), nn.Module)}
        new = EfficientAttention(
            kind, i, cfg, hidden_size=mcfg.hidden_size, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            scaling=getattr(old, "scaling", None), projections=projections,
        )
        ref = old.q_proj.weight
        new.to(device=ref.device, dtype=ref.dtype)
        if init == "pretrained":
            _default_init(new)
        layer.self_attn = new

    base._efficient_attention_config = cfg
    mcfg.efficient_attention = cfg.to_dict()
    mcfg._attn_implementation = ATTN_IMPLEMENTATION
    base.register_forward_pre_hook(_cache_hook, with_kwargs=True)
    if captured is not None:
        from .calibrate import calibrate

        calibrate(base, *captured)
    log.info("attention layout %s (%d full layers of %d)", cfg.layout, cfg.layout.count("F"), n_layers)
    return model


@torch.no_grad()
def _default_init(m: EfficientAttention) -> None:
    """Without calibration data: W is a plain window (sink far below), S/R mostly local, a little sparse."""
    if m.kind == "W":
        m.sink.fill_(-8.0)
    if m.kind in "SR":
        m.sink_swa.fill_(-8.0)
        m.sink_sparse.fill_(-8.0)
        for gate, bias in ((m.gate_swa, 3.0), (m.gate_sparse, -2.0)):
            gate.weight.zero_()
            gate.bias.fill_(bias)


def build_model(model_config, attention: str | AttentionConfig, *, causal_lm: bool = True, **overrides) -> nn.Module:
    """A fresh, randomly initialised model with ``attention`` (for native training), from a transformers config."""
    from transformers import AutoModel, AutoModelForCausalLM

    factory = AutoModelForCausalLM if causal_lm else AutoModel
    model = factory.from_config(model_config)
    if isinstance(attention, str):
        overrides.setdefault("sparse_skip_window", False)
    return apply_attention(model, attention, init="random", **overrides)


def new_parameters(model: nn.Module, include_window_projections: bool = True) -> list[tuple[str, nn.Parameter]]:
    """The parameters a conversion added (sinks, gates) and, optionally, the S/R layers' window k/v projections."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, EfficientAttention):
            continue
        params = dict(module.named_parameters())
        names = module.new_parameter_names()
        if include_window_projections and module.kind in "SR":
            names += [n for n in params if n.startswith(("k_proj.", "v_proj."))]
        out += [(f"{name}.{n}", params[n]) for n in names]
    return out
