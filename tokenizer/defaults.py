"""The embedded default tokenizer: a small trained checkpoint shipped as package data.

It lives in ``tokenizer/assets/default/`` in the official layout (``config.json`` + ``model.safetensors``)
with a ``provenance.json`` that says what it is (training run, corpus, date, sha256 of the weights).
``AudioTokenizer.from_pretrained()`` without a path loads it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Module attribute (not a constant baked into functions) so that tests and tools can point it elsewhere.
DEFAULT_DIR = Path(__file__).resolve().parent / "assets" / "default"
PROVENANCE = "provenance.json"
REQUIRED_FILES = ("config.json", "model.safetensors")
EXPORT_HINT = (
    "export one with `python -m apps.scripts.export_default_model --tokenizer RUN/model --lm RUN/model` "
    "(or `--random` for placeholder weights), reinstall the package, or pass a checkpoint directory explicitly"
)


def missing_files(directory: Path, required: tuple[str, ...]) -> list[str]:
    return [name for name in required if not (directory / name).is_file()]


def default_tokenizer_dir() -> Path:
    """The directory of the embedded default tokenizer; FileNotFoundError (with the fix) when it is absent."""
    directory = Path(DEFAULT_DIR)
    missing = missing_files(directory, REQUIRED_FILES)
    if missing:
        raise FileNotFoundError(
            f"the embedded default audio tokenizer is not installed: {', '.join(missing)} missing in {directory}; "
            + EXPORT_HINT
        )
    return directory


def read_provenance(directory: str | Path) -> dict[str, Any]:
    """``provenance.json`` of an asset directory ({} when there is none or it is unreadable)."""
    path = Path(directory) / PROVENANCE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def describe(directory: str | Path, what: str) -> str:
    """One log line about an embedded asset: its name and training, or a loud note for placeholders."""
    prov = read_provenance(directory)
    if prov.get("placeholder"):
        log.warning("the embedded default %s in %s has RANDOM placeholder weights: its output is noise. Export the "
                    "trained model with apps/scripts/export_default_model.py", what, directory)
    name = prov.get("name", f"embedded default {what}")
    steps = prov.get("training", {}).get("steps") if isinstance(prov.get("training"), dict) else None
    return f"{name} ({directory}" + (f", {steps} training steps)" if steps is not None else ")")
