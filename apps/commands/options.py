"""Command-line vocabulary shared by every subcommand (one spelling, one parser per option)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

# --dtype: short names are canonical; the torch names are accepted as aliases everywhere.
DTYPE_ALIASES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16",
                 "float16": "fp16", "auto": "auto"}


def dtype_option(allowed: Sequence[str] = ("fp32", "bf16", "fp16")) -> Callable[[str], str]:
    """An argparse ``type=`` that maps any spelling of a dtype to its canonical short name (in ``allowed``)."""

    def parse(value: str) -> str:
        name = DTYPE_ALIASES.get(value.strip().lower())
        if name not in allowed:
            raise argparse.ArgumentTypeError(f"unknown dtype {value!r}; choose from {', '.join(allowed)}")
        return name

    parse.__name__ = "dtype"  # argparse names the type in its error message
    return parse


def torch_dtype(name: str) -> Any:
    """The torch dtype of a canonical name (``auto``: None, i.e. keep the checkpoint's)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": None}[name]


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0 lets the system pick a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value
