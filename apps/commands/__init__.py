"""Subcommands of the ``mimo-audio`` CLI: each module defines ``register(subparsers)``."""
