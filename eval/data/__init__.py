"""Dataset readers for the benchmarks' own local layouts (nothing is downloaded).

>>> from eval.data import get_reader
>>> samples = list(get_reader("librispeech")("LibriSpeech", "test-clean").samples())   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import pkgutil

from eval.data.base import DatasetReader, Sample, get_reader, read_json_items, read_jsonl

__all__ = ["DatasetReader", "Sample", "discover", "get_reader", "read_json_items", "read_jsonl", "readers"]

_DISCOVERED = False


def discover() -> None:
    """Import every module of this package once, so each reader class registers itself."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    _DISCOVERED = True


def readers() -> dict[str, type[DatasetReader]]:
    discover()
    return dict(sorted(DatasetReader.registry.items()))
