"""MiMo-Audio-compatible patch-based speech LM, prompt rendering and the task API."""
