"""``mimo-audio train tokenizer|lm``: the training recipes of the embedded default model (apps/train)."""

from __future__ import annotations

import argparse
import json
import logging


def _tokenizer(args: argparse.Namespace) -> int:
    from apps.train.tokenizer import config_from_args, train_tokenizer

    state = train_tokenizer(config_from_args(args))
    print(json.dumps({k: v for k, v in state.items() if k not in ("history", "config")}, indent=1))
    return 0


def _lm(args: argparse.Namespace) -> int:
    from apps.train.speech_lm import config_from_args, train_lm

    state = train_lm(config_from_args(args))
    print(json.dumps({k: v for k, v in state.items() if k not in ("history", "config")}, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from apps.train import speech_lm, tokenizer

    p = subparsers.add_parser("train", help="train the small tokenizer / speech LM on an offline corpus")
    sub = p.add_subparsers(dest="train_command", required=True)
    t = sub.add_parser("tokenizer", help="train an audio tokenizer for reconstruction (resumable)")
    tokenizer.add_arguments(t)
    t.set_defaults(func=_tokenizer)
    m = sub.add_parser("lm", help="train a speech LM on TTS/ASR/continuation/few-shot/text examples (resumable)")
    speech_lm.add_arguments(m)
    m.set_defaults(func=_lm)
    logging.getLogger("mimo-audio.train").setLevel(logging.INFO)
