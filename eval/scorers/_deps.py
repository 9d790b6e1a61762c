"""Lazy imports of the optional scorer packages, with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingScorerDependency(ImportError):
    """An offline scorer needs a package that is not installed."""


def require(module: str, package: str, scorer: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingScorerDependency` naming the PyPI ``package`` to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingScorerDependency(
            f"the {scorer} scorer needs the '{package}' package ({exc}); "
            f"install the evaluation extra: pip install 'mimo-audio[eval]' (or: pip install {package})"
        ) from exc
