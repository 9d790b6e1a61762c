"""The ``mimo-audio`` command line.

Every module in :mod:`apps.commands` contributes one subcommand group through a
``register(subparsers)`` function, so features are added without editing this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from apps import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimo-audio",
        description="Toolkit for MiMo-Audio-class audio language models (tokenizer, speech LM, tasks).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # A subcommand that sets ``passes_unknown_args`` parses its own options (e.g. the training recipes, whose
    # parsers import torch and are only built when they run).
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_unknown_args", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown_args = unknown
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        # User-facing errors (bad paths, bad audio, bad checkpoints) end with one clear line.
        logging.getLogger("mimo-audio").error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
