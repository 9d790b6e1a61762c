"""Does the speech LM hear and read? Teacher-forced loss with the right input vs another item's input.

A model that memorised its transcripts can reach a low ASR loss without listening: after the first token the
rest of a known sentence follows from the text alone. Teacher-forced cross-entropy on the *right* audio, set
against the same transcripts conditioned on *another* utterance's audio, tells how much the audio is used
(``asr`` gap, in nats per text token). The TTS mirror: the speech codes' cross-entropy after the right text
vs after another sentence, in the prompt and in the stream's text chunks (``tts`` gap, nats per channel-0 code).
A gap near 0 means the input is ignored. With ``--ctc RUN/ctc.safetensors`` (a run trained with
``--ctc-target chars``) it also prints the greedy character error rate of the training-only CTC head: whether
the backbone knows, at the speech positions, which sounds it heard.

    python -m apps.train.reliance --model runs/lm3/model --corpus corpus-full --split valid --items 32
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from apps.train.lm_data import corpus_rows, encode_corpus
from mimo_audio import formats
from mimo_audio.modeling import SpeechLM
from mimo_audio.prompts import PromptRenderer, Stream, Text
from mimo_audio.text_tokenizer import SpecialTokens, load_text_tokenizer
from mimo_audio.training import speech_lm_loss

log = logging.getLogger("mimo-audio.train")


def _loss(model: SpeechLM, renderer: PromptRenderer, prompt: list, answer: list, skip: int) -> tuple[float, float]:
    """(text CE, channel-0 CE) of ``answer`` after ``prompt``; ``skip`` answer patches are context."""
    G = renderer.group_size
    head, tail = renderer.render(prompt), renderer.render(answer)
    ids = torch.cat([head, tail], dim=1)
    target = torch.zeros(ids.shape[1] // G, dtype=torch.bool)
    target[head.shape[1] // G + skip:] = True
    res = speech_lm_loss(model, ids[None].to(model.device), target[None].to(model.device))
    return float(res.text), float(res.channels[0]) if res.speech_patches else float("nan")


def pick_items(rows: list[dict], items: int, seed: int) -> list[dict]:
    """The same ``items`` rows for every probe of one seed."""
    return [rows[i] for i in np.random.default_rng(seed).choice(len(rows), min(items, len(rows)), replace=False)]


@torch.no_grad()
def input_reliance(model: SpeechLM, renderer: PromptRenderer, rows: list[dict], codes: dict[str, torch.Tensor],
                   items: int = 24, seed: int = 0, shift: int = 1) -> dict:
    """ASR text CE with the right vs another utterance's audio, TTS code CE after the right vs another text.

    ``rows``: plain utterances with ``id`` (a key of ``codes``) and ``text``. The other input of item ``i`` is
    item ``i + shift``'s (``shift=0``: the same input, a gap of exactly 0)."""
    was_training = model.training
    model.eval()
    pick = pick_items(rows, items, seed)
    other = [pick[(k + shift) % len(pick)] for k in range(len(pick))]
    asr_right, asr_other, tts_right, tts_other = [], [], [], []
    for row, alt in zip(pick, other):
        answer = [Text(row["text"]), Text(formats.IM_END)]
        asr_right.append(_loss(model, renderer, formats.asr(codes[row["id"]]), answer, 0)[0])
        asr_other.append(_loss(model, renderer, formats.asr(codes[alt["id"]]), answer, 0)[0])
        # TTS reads its text twice: in the prompt and in the stream's text chunks; both are the other sentence's
        for text, out in ((row["text"], tts_right), (alt["text"], tts_other)):
            speech = [Stream(formats.normalize_case(text), codes[row["id"]]), Text(formats.IM_END)]
            out.append(_loss(model, renderer, formats.tts(text)[:-1], speech, 1)[1])
    model.train(was_training)
    mean = lambda xs: round(float(np.nanmean(xs)), 4)  # noqa: E731
    return {"items": len(pick),
            "asr": {"text_ce": mean(asr_right), "text_ce_other_audio": mean(asr_other),
                    "gap": mean(np.subtract(asr_other, asr_right))},
            "tts": {"audio0_ce": mean(tts_right), "audio0_ce_other_text": mean(tts_other),
                    "gap": mean(np.subtract(tts_other, tts_right))}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m apps.train.reliance", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="speech-LM folder (official layout + text tokenizer)")
    p.add_argument("--corpus", required=True, help="corpus directory")
    p.add_argument("--split", default="valid", help="train, valid or test (default valid)")
    p.add_argument("--codes", default=None, help="codes cache (safetensors keyed by row id); made when missing")
    p.add_argument("--tokenizer", default=None, help="audio tokenizer for missing codes (default: the embedded one)")
    p.add_argument("--items", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ctc", default=None, help="a character CTC head (RUN/ctc.safetensors): also its greedy CER")
    p.add_argument("--ctc-lookahead", type=int, default=0, help="the --ctc-lookahead the head was trained with")
    args = p.parse_args(argv)
    if args.ctc and not Path(args.ctc).is_file():  # before the model runs, not after
        p.exit(2, f"{p.prog}: error: CTC head not found: {args.ctc}\n")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = _run(args)
    except (FileNotFoundError, ValueError, KeyError) as e:  # a wrong folder, a bad checkpoint or corpus
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(json.dumps(result, indent=1))
    return 0


def _run(args: argparse.Namespace) -> dict:
    from tokenizer import AudioTokenizer, default_tokenizer_dir

    text_tok = load_text_tokenizer(args.model)
    special = SpecialTokens.from_tokenizer(text_tok)
    model = SpeechLM.from_pretrained(args.model, device="cpu", empty_token_id=special.empty)
    renderer = PromptRenderer(text_tok, special, model.config.speech_zeroemb_idx, model.config.group_size)
    cache = Path(args.codes) if args.codes else None
    if cache is not None and cache.is_file():
        from safetensors.torch import load_file

        codes = load_file(str(cache))
    else:
        audio_tok = AudioTokenizer.from_pretrained(args.tokenizer or default_tokenizer_dir(), device="cpu")
        codes = encode_corpus(audio_tok, args.corpus, args.split,
                              cache, model.config.audio_channels, progress=False)
    rows = [r for r in corpus_rows(args.corpus, args.split) if r["style"] == "plain" and r["id"] in codes]
    if not rows:
        raise ValueError(f"no plain {args.split} utterance of {args.corpus} has codes")
    result = input_reliance(model, renderer, rows, codes, args.items, args.seed)
    if args.ctc:
        result["ctc_cer"] = round(_ctc_cer(model, renderer, rows, codes, args), 4)
    return result


def _ctc_cer(model: SpeechLM, renderer: PromptRenderer, rows: list[dict], codes: dict, args) -> float:
    from apps.train.ctc import CHAR_ALPHABET, CTCHead, ctc_char_error_rate

    cfg = model.config
    head = CTCHead.from_file(args.ctc, cfg.local_dim, cfg.input_local_dim, len(CHAR_ALPHABET))
    return ctc_char_error_rate(model, head, renderer, pick_items(rows, args.items, args.seed), codes,
                               args.ctc_lookahead)


if __name__ == "__main__":
    raise SystemExit(main())
