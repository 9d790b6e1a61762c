"""Efficiency backend: LUT low-bit kernels, hybrid sparse attention, MTP drafting, MoE offload.

Imports none of the project's other packages, so any transformers causal LM plugs in as the speech LM does."""
