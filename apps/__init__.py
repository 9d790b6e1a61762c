"""Command-line interface, demo and scripts built on :mod:`mimo_audio`."""
