"""Model adapters: the toolkit's ``MimoAudio`` (``mimo``) and any OpenAI-compatible endpoint (``openai``)."""

from __future__ import annotations

from typing import Any

from eval.models.base import ModelAdapter, Output


def make_adapter(model: str | None = None, endpoint: str | None = None, **options: Any) -> ModelAdapter:
    """``endpoint`` given: the HTTP adapter for that base URL (``model`` is the served model name);
    otherwise ``MimoAudio`` from the checkpoint folder ``model`` (``None``: the embedded default)."""
    if endpoint:
        from eval.models.openai_compat import OpenAIAdapter

        keep = {k: options[k] for k in ("api_key", "voice") if options.get(k)}
        return OpenAIAdapter(endpoint, model=model or "mimo-audio", **keep)
    from eval.models.mimo import MimoAdapter

    names = ("tokenizer_path", "device", "quant", "sparse", "speculative", "random_init")
    keep = {k: options[k] for k in names if options.get(k)}
    return MimoAdapter(lm_path=model, **keep)


__all__ = ["ModelAdapter", "Output", "make_adapter"]
