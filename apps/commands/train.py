"""``mimo-audio train tokenizer|lm``: the training recipes of the embedded default model (apps/train)."""

from __future__ import annotations

import argparse
import json
import logging

_RECIPES = {
    "tokenizer": ("apps.train.tokenizer", "train_tokenizer",
                  "train an audio tokenizer for reconstruction (resumable)"),
    "lm": ("apps.train.speech_lm", "train_lm",
           "train a speech LM on TTS/ASR/continuation/few-shot/text examples (resumable)"),
    "mtp": ("apps.train.mtp_speech", "train_mtp",
            "fit MTP draft heads on a frozen speech LM for its text outputs (resumable); writes mtp.safetensors"),
    "mtp-patch": ("apps.train.mtp_patch", "train_patch_head",
                  "fit a speech-patch MTP head on a frozen speech LM and measure its draft acceptance (resumable)"),
}


def _run(args: argparse.Namespace) -> int:
    # The recipes import torch and the models; build their full parser only when one is run, so that
    # `mimo-audio --help` and every other subcommand start fast.
    import importlib

    module_name, train_name, help_text = _RECIPES[args.train_command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"mimo-audio train {args.train_command}", description=help_text)
    module.add_arguments(parser)
    recipe_args = parser.parse_args(args.unknown_args)
    logging.getLogger("mimo-audio.train").setLevel(logging.INFO)
    state = getattr(module, train_name)(module.config_from_args(recipe_args))
    print(json.dumps({k: v for k, v in state.items() if k not in ("history", "config")}, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the small tokenizer / speech LM on an offline corpus")
    sub = p.add_subparsers(dest="train_command", required=True)
    for name, (_, _, help_text) in _RECIPES.items():
        # add_help=False: `--help` is passed on to the recipe's own parser, which lists every option
        r = sub.add_parser(name, help=help_text, add_help=False,
                           description=f"{help_text}. Run with --help for the recipe's options.")
        r.set_defaults(func=_run, passes_unknown_args=True)
