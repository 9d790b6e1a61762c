"""``mimo-audio eval``: the evaluation-suite runner (list | run | score | report); the library is :mod:`eval`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from eval.cli import add_commands

    parser = subparsers.add_parser("eval", help="run benchmark tasks on a model, score, report (resumable)")
    add_commands(parser.add_subparsers(dest="eval_command", metavar="ACTION", required=True))
