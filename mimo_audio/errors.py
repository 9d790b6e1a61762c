"""Typed user errors: what the caller can fix (a bad path, a bad argument, an unreadable checkpoint).

The command line prints a :class:`UserError` as one line and exits non-zero; any other exception is an
internal error (a bug), shown with its traceback only under ``--debug``. ``UserError`` subclasses
``ValueError`` so existing ``except ValueError`` handlers keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class UserError(ValueError):
    """A problem with the caller's input, worded so that it says what to fix."""


class SilentAudioError(UserError):
    """The audio input holds no signal (all samples below the silence threshold)."""


def check_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine; UserError naming the fix otherwise.

    ``None`` picks CUDA when available, else the CPU.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but this torch has no usable CUDA: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {device!r} is not available on this machine: use --device cpu")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    return dev
