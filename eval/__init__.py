"""Evaluation-suite runner for speech LMs (tasks, scorers, result tables)."""
