"""Measurement helpers shared by the bench scripts: timing and perplexity (reference models: ``eval``).

Run the scripts from the repository root as modules (``python -m bench.bench_lm``) so ``bench.common``
imports without editing ``sys.path``.
"""
