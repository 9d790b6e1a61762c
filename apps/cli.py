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

# Errors that describe the user's input or environment: mimo_audio.errors.UserError (the typed one, a
# ValueError), the ValueErrors the libraries raise for bad input, and OSErrors (missing file, permission,
# full disk). Not imported here so that `mimo-audio --help` stays light.
USER_ERRORS = (ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimo-audio",
        description="Toolkit for MiMo-Audio-class audio language models (tokenizer, speech LM, tasks).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error (by default: one line, exit code 1 for user "
                        "errors, 3 for internal errors)")
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
    from apps import checks

    checks.reset_notes()
    log = logging.getLogger("mimo-audio")
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except USER_ERRORS as exc:
        # What the user can fix (bad paths, bad audio, bad arguments, unreadable checkpoints): one line.
        if args.debug:
            raise
        log.error("%s", exc)
        return 1
    except Exception as exc:  # a bug: one line unless --debug asks for the traceback
        if args.debug:
            raise
        log.error("internal error: %s: %s (rerun with --debug for the traceback, and please report it)",
                  type(exc).__name__, exc)
        return 3


if __name__ == "__main__":
    sys.exit(main())
