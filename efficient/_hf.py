"""What differs between transformers 4.x and 5.x where the backend drives a model's forward.

transformers 5 renamed the forward argument ``past_key_values`` to ``cache`` (the old name is deprecated,
then removed), returns the cache as ``output.cache`` and no longer takes ``cache_position``. These helpers
pick the form the installed model takes, so one call site works with both majors.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


@functools.cache
def _forward_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def cache_kwargs(model: torch.nn.Module, cache: Any, cache_position: torch.Tensor | None = None) -> dict[str, Any]:
    """``{"cache": cache}`` (5.x) or ``{"past_key_values": cache, "cache_position": ...}`` (4.x) for ``model``."""
    params = _forward_params(type(model))
    if "cache" in params:
        return {"cache": cache}
    out: dict[str, Any] = {"past_key_values": cache}
    if cache_position is not None and "cache_position" in params:
        out["cache_position"] = cache_position
    return out


def output_cache(output: Any) -> Any:
    """The cache a forward returned: ``output.cache`` (5.x) or ``output.past_key_values`` (4.x)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
