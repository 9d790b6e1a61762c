"""Offline ASR with pocketsphinx (its packaged en-us acoustic model and trigram LM) and WER.

WER here is computed after :func:`~eval.scorers.text_norm.normalize_text` on both sides and is
reported two ways, because the literature uses both: ``corpus`` (sum of errors / sum of reference
words) and ``mean_utterance`` (mean of per-utterance WER, as seed-tts-eval and MiMo-Audio-Eval do).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eval.scorers._deps import require
from eval.scorers.audio import AudioInput, load_audio
from eval.scorers.text_norm import NORMALIZER_VERSION, normalize_text

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16000


class PocketsphinxASR:
    """English speech to text with pocketsphinx; the decoder loads once, on first use."""

    def __init__(self) -> None:
        self._decoder = None

    def _load(self):
        if self._decoder is None:
            ps = require("pocketsphinx", "pocketsphinx", "ASR")
            log.debug("loading pocketsphinx %s en-us model", getattr(ps, "__version__", "?"))
            self._decoder = ps.Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL")
        return self._decoder

    def transcribe(self, audio: AudioInput, sample_rate: int | None = None) -> str:
        """Transcript of one utterance (lowercase words, no punctuation; empty if nothing decoded)."""
        samples = load_audio(audio, ASR_SAMPLE_RATE, sample_rate)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        decoder = self._load()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return "" if hyp is None else hyp.hypstr


@dataclass(frozen=True)
class WERResult:
    """Word error rates over a set of utterances (both aggregations) and the edit counts."""

    corpus: float
    mean_utterance: float
    per_utterance: tuple[float, ...]
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    normalizer: str = NORMALIZER_VERSION


def _edit_counts(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum-cost alignment (Levenshtein on words)."""
    n, m = len(ref), len(hyp)
    # cost[i][j] = (total, subs, dels, ins) for ref[:i] vs hyp[:j]
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            same = ref[i - 1] == hyp[j - 1]
            d = prev[j - 1]
            sub = (d[0] + (0 if same else 1), d[1] + (0 if same else 1), d[2], d[3])
            u = prev[j]
            dele = (u[0] + 1, u[1], u[2] + 1, u[3])
            left = cur[j - 1]
            ins = (left[0] + 1, left[1], left[2], left[3] + 1)
            cur.append(min(sub, dele, ins))
        prev = cur
    _, s, d, i = prev[m]
    return s, d, i


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> WERResult:
    """WER of hypotheses against references, both normalised with the pinned normaliser."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("WER needs at least one utterance")
    subs = dels = ins = words = 0
    per: list[float] = []
    for ref_text, hyp_text in zip(references, hypotheses):
        ref, hyp = normalize_text(ref_text).split(), normalize_text(hyp_text).split()
        if not ref:
            raise ValueError(f"reference normalises to no words: {ref_text!r}")
        s, d, i = _edit_counts(ref, hyp)
        subs, dels, ins, words = subs + s, dels + d, ins + i, words + len(ref)
        per.append((s + d + i) / len(ref))
    return WERResult(
        corpus=(subs + dels + ins) / words,
        mean_utterance=float(np.mean(per)),
        per_utterance=tuple(per),
        substitutions=subs,
        deletions=dels,
        insertions=ins,
        reference_words=words,
    )
