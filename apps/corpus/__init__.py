"""A reproducible offline English speech corpus from real TTS engines (flite, festival, espeak-ng).

>>> from apps.corpus import SIZES, build_corpus, corpus_stats
>>> build_corpus("corpus-small", SIZES["small"], jobs=2)   # doctest: +SKIP
>>> corpus_stats("corpus-small")["splits"]["test"]          # doctest: +SKIP
"""

from __future__ import annotations

from apps.corpus.build import BuildReport, build_corpus
from apps.corpus.manifest import check_splits, corpus_stats, format_stats, load_manifest, parallel_pairs
from apps.corpus.plan import SIZES, CorpusConfig, Utterance, plan_corpus

__all__ = [
    "SIZES", "BuildReport", "CorpusConfig", "Utterance", "build_corpus", "check_splits", "corpus_stats",
    "format_stats", "load_manifest", "parallel_pairs", "plan_corpus",
]
