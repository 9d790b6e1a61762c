"""Offline scorers for speech: ASR + WER, speaker similarity, DNSMOS and VAD.

Every model comes from a PyPI wheel that ships its weights (pocketsphinx, resemblyzer, speechmos,
silero-vad), so scoring runs with no network. Each scorer imports its package on first use and,
when it is missing, raises :class:`MissingScorerDependency` naming the package to install.

>>> from eval.scorers import PocketsphinxASR, word_error_rate
>>> hyp = PocketsphinxASR().transcribe("speech.wav")            # doctest: +SKIP
>>> word_error_rate(["The quick brown fox."], [hyp]).corpus     # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MissingScorerDependency": "eval.scorers._deps",
    "load_audio": "eval.scorers.audio",
    "PocketsphinxASR": "eval.scorers.asr",
    "WERResult": "eval.scorers.asr",
    "word_error_rate": "eval.scorers.asr",
    "ResemblyzerSimilarity": "eval.scorers.speaker",
    "DNSMOS": "eval.scorers.mos",
    "DNSMOSScore": "eval.scorers.mos",
    "SileroVAD": "eval.scorers.vad",
    "normalize_text": "eval.scorers.text_norm",
    "NORMALIZER_VERSION": "eval.scorers.text_norm",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eval.scorers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
