"""The "target model step" the speculative decoder drives: any transformers causal LM, or an adapter.

A target step takes ``n`` new token ids and a cache, runs one forward pass, and returns the logits and
the last hidden state (before the final norm, which is what MTP heads consume) for those ``n``
positions. Rollback goes through ``cache.crop(-n_dropped)`` only, so every cache that implements it
(transformers' ``DynamicCache``, the backend's sliding-window and HySparse caches) plugs in.

Adapter hook for other backbones (e.g. the speech LM's Qwen2Model): subclass :class:`TargetStep` and
implement ``forward``/``new_cache`` and the three shared modules; see docs/mtp_and_moe.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .._hf import cache_kwargs


@runtime_checkable
class CropCache(Protocol):
    def get_seq_length(self) -> int: ...

    def crop(self, max_length: int) -> None: ...  # called with a negative count: drop that many tokens


class TargetStep:
    """Interface of a model the speculative decoder can verify with."""

    embed: nn.Module
    final_norm: nn.Module
    lm_head: nn.Module
    config: Any

    def new_cache(self) -> CropCache:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, cache: CropCache) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [1, n] -> (logits [n, vocab] float32, pre-norm hidden [n, d])."""
        raise NotImplementedError


def rollback(cache: CropCache, length: int) -> None:
    """Roll a cache back to ``length`` positions, naming the cache when it cannot."""
    drop = cache.get_seq_length() - length
    try:
        if drop > 0:
            # a negative count drops that many tokens: the one form transformers 4.x and 5.x both accept
            # (5.x refuses a positive length), and the backend's caches too
            cache.crop(-drop)
    except (ValueError, RuntimeError) as err:  # 5.x's sliding-window layers raise RuntimeError
        raise ValueError(
            f"{type(cache).__name__} cannot roll back to {length} positions ({err}). Speculative decoding "
            "needs caches that keep draft slack beyond their window (efficient.attention caches do)."
        ) from err
    if cache.get_seq_length() != length:
        raise RuntimeError(f"{type(cache).__name__}.crop({length}) left {cache.get_seq_length()} positions")


class CausalLMTarget(TargetStep):
    """Adapter for a transformers ``*ForCausalLM`` (Llama, Qwen2, Mistral, MoE models, ...).

    ``cache_factory`` builds the cache per generation (default: ``DynamicCache(config=...)``, which
    gets sliding-window layers from configs that declare them). Pass the caches of
    ``efficient.attention`` here to compose with sparse attention.
    """

    def __init__(self, model: nn.Module, cache_factory: Callable[[], CropCache] | None = None) -> None:
        self.model = model
        self.config = model.config
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        norm = getattr(decoder, "norm", None)
        if norm is None:
            raise ValueError(f"{type(model).__name__}: cannot find the final norm (expected `.model.norm`)")
        self.final_norm = norm
        self.embed = model.get_input_embeddings()
        self.lm_head = model.get_output_embeddings()
        if self.lm_head is None:
            raise ValueError(f"{type(model).__name__} has no LM head; wrap its backbone with a TargetStep adapter")
        self.decoder_layers = getattr(decoder, "layers", None)
        self._cache_factory = cache_factory
        self._captured: torch.Tensor | None = None
        self._hook = norm.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._captured = inputs[0]

    def close(self) -> None:
        """Remove the forward hook this adapter put on the model's final norm."""
        self._hook.remove()

    def new_cache(self) -> CropCache:
        if self._cache_factory is not None:
            return self._cache_factory()
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.config)
        except TypeError:  # older transformers
            return DynamicCache()

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, cache: CropCache) -> tuple[torch.Tensor, torch.Tensor]:
        start = cache.get_seq_length()
        n = input_ids.shape[1]
        pos = torch.arange(start, start + n, device=input_ids.device)
        out = self.model(
            input_ids=input_ids, use_cache=True, position_ids=pos[None], **cache_kwargs(self.model, cache, pos)
        )
        hidden, self._captured = self._captured, None
        return out.logits[0].float(), hidden[0]

    @torch.no_grad()
    def forward_tree(self, input_ids: torch.Tensor, cache: CropCache, position_ids: torch.Tensor,
                     allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward` for a token tree: ``position_ids [n]`` per node, ``allowed [1, 1, n, past + n]``
        (bool, True: attend). The ``n`` entries are appended to ``cache`` in input order (the caller keeps the
        accepted ones)."""
        start = cache.get_seq_length()
        n = input_ids.shape[1]
        dtype = self.lm_head.weight.dtype
        # additive form: eager and sdpa attention both take it
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        slots = torch.arange(start, start + n, device=input_ids.device)
        out = self.model(input_ids=input_ids, use_cache=True, position_ids=position_ids[None].to(input_ids.device),
                         attention_mask=mask.to(input_ids.device), **cache_kwargs(self.model, cache, slots))
        hidden, self._captured = self._captured, None
        return out.logits[0].float(), hidden[0]
