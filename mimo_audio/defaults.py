"""The embedded default speech LM: a small trained checkpoint shipped as package data.

It lives in ``mimo_audio/assets/default/`` in the official layout: ``config.json``, ``model.safetensors``,
the text-tokenizer files :func:`mimo_audio.text_tokenizer.load_text_tokenizer` reads, optionally
``mtp.safetensors`` (MTP draft heads), and a ``provenance.json`` (training run, corpus, date, sha256 of the
weights, and the sha256 of the audio tokenizer whose codes it was trained on). It pairs with the embedded
tokenizer of :mod:`tokenizer.defaults`.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parent / "assets" / "default"
REQUIRED_FILES = ("config.json", "model.safetensors")
TEXT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")  # any one of these


def default_model_dir() -> Path:
    """The directory of the embedded default speech LM; FileNotFoundError (with the fix) when it is absent."""
    from tokenizer.defaults import EXPORT_HINT, missing_files  # lazy: importing mimo_audio stays light

    directory = Path(DEFAULT_DIR)
    missing = missing_files(directory, REQUIRED_FILES)
    if directory.is_dir() and not any((directory / n).is_file() for n in TEXT_TOKENIZER_FILES):
        missing.append("the text tokenizer (tokenizer.json)")
    if missing:
        raise FileNotFoundError(
            f"the embedded default speech LM is not installed: {', '.join(missing)} missing in {directory}; "
            + EXPORT_HINT
        )
    return directory


def check_pairing(lm_dir: str | Path, tokenizer_dir: str | Path) -> bool:
    """Warn when the LM's provenance names a different audio tokenizer than the one being loaded with it."""
    from tokenizer.defaults import read_provenance

    want = read_provenance(lm_dir).get("audio_tokenizer_sha256")
    have = read_provenance(tokenizer_dir).get("files", {}).get("model.safetensors", {}).get("sha256")
    if want and have and want != have:
        log.warning("the speech LM in %s was trained on the codes of another audio tokenizer (sha256 %s...) than "
                    "the one in %s (%s...): expect garbled speech", lm_dir, want[:12], tokenizer_dir, have[:12])
        return False
    return True
