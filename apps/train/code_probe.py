"""Do the audio tokenizer's codes carry the words? A small GRU learns character CTC from the codes alone.

A probe of the codes, not of the LM: if a 2-layer GRU reads the transcript's characters out of the 25 Hz codes
within a few minutes, the codes are not what stops the speech LM from hearing. ``--direction uni`` makes the GRU
causal, like the LM's speech positions: it shows how much harder character CTC is without lookahead.

    python -m apps.train.code_probe --corpus corpus-wide --codes runs/lm4/codes-train.safetensors --steps 1500
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from apps.train.ctc import CHAR_ALPHABET, char_labels, char_text, collapse
from apps.train.lm_data import corpus_rows
from mimo_audio import formats

log = logging.getLogger("mimo-audio.train")


class CodeGRU(nn.Module):
    """Summed code embeddings of the channels -> GRU -> ``upsample`` character outputs (+ blank) per frame."""

    def __init__(self, vocab_sizes: list[int], dim: int = 128, bidirectional: bool = True, upsample: int = 2):
        super().__init__()
        self.blank, self.upsample = len(CHAR_ALPHABET), upsample
        self.emb = nn.ModuleList(nn.Embedding(v + 1, dim) for v in vocab_sizes)  # +1: the padding code
        self.rnn = nn.GRU(dim, dim, 2, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(dim * (2 if bidirectional else 1), (self.blank + 1) * upsample)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, C, T]`` -> log-probs ``[B, T * upsample, classes + 1]``."""
        x = sum(emb(codes[:, c]) for c, emb in enumerate(self.emb))
        h, _ = self.rnn(x)
        return F.log_softmax(self.out(h).reshape(codes.shape[0], -1, self.blank + 1), dim=-1)


def _batch(rows: list[dict], codes: dict[str, torch.Tensor], pad: list[int]) -> tuple[torch.Tensor, list[int]]:
    T = max(codes[r["id"]].shape[1] for r in rows)
    out = torch.tensor(pad)[None, :, None].repeat(len(rows), 1, T)
    for b, r in enumerate(rows):
        x = codes[r["id"]]
        out[b, :, : x.shape[1]] = x[: len(pad)]
    return out, [codes[r["id"]].shape[1] for r in rows]


def _reference(row: dict) -> list[int]:
    return char_labels(formats.normalize_case(row["text"]))


@torch.no_grad()
def greedy_cer(model: CodeGRU, rows: list[dict], codes: dict[str, torch.Tensor], pad: list[int]) -> float:
    from jiwer import cer

    model.eval()
    x, lens = _batch(rows, codes, pad)
    best = model(x).argmax(-1)
    hyps = [char_text(collapse(best[b, : n * model.upsample].tolist(), model.blank)) for b, n in enumerate(lens)]
    model.train()
    return float(cer([char_text(_reference(r)) for r in rows], hyps))


def probe_codes(rows: list[dict], codes: dict[str, torch.Tensor], vocab_sizes: list[int], steps: int,
                bidirectional: bool = True, batch_size: int = 16, lr: float = 2e-3, eval_every: int = 250,
                eval_rows: list[dict] | None = None, seed: int = 0) -> list[dict]:
    """Train the GRU for ``steps``; the greedy CER on ``eval_rows`` (default: the first 8 rows) every
    ``eval_every`` steps and at the end."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CodeGRU(vocab_sizes, bidirectional=bidirectional)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    pad, eval_rows = list(vocab_sizes), eval_rows or rows[:8]
    curve, t0 = [], time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "seconds": round(time.perf_counter() - t0, 1),
                          "cer": round(greedy_cer(model, eval_rows, codes, pad), 4)})
            log.info("step %d cer %.3f", step, curve[-1]["cer"])
            if step == steps:
                break
        pick = [rows[int(i)] for i in rng.integers(0, len(rows), batch_size)]
        x, lens = _batch(pick, codes, pad)
        labels = [_reference(r) for r in pick]
        lp = model(x).transpose(0, 1)
        loss = F.ctc_loss(lp, torch.tensor(sum(labels, [])), torch.tensor([n * model.upsample for n in lens]),
                          torch.tensor([len(t) for t in labels]), blank=model.blank, zero_infinity=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m apps.train.code_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="corpus directory")
    p.add_argument("--codes", required=True, help="codes cache of the corpus (safetensors keyed by row id)")
    p.add_argument("--split", default="train")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--direction", choices=["bi", "uni"], default="bi", help="bidirectional or causal GRU")
    p.add_argument("--max-seconds", type=float, default=5.0, help="only utterances up to this long")
    p.add_argument("--eval-every", type=int, default=250)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from safetensors.torch import load_file

        codes = load_file(args.codes)
        rows = [r for r in corpus_rows(args.corpus, args.split) if r["style"] == "plain" and r["id"] in codes
                and codes[r["id"]].shape[1] <= args.max_seconds * 25]
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    if not rows:
        p.exit(2, f"{p.prog}: error: no plain {args.split} utterance of {args.corpus} has codes in {args.codes}\n")
    first = codes[rows[0]["id"]]
    vocab = [int(max(int(codes[r["id"]][c].max()) for r in rows)) + 1 for c in range(first.shape[0])]
    curve = probe_codes(rows, codes, vocab, args.steps, args.direction == "bi", eval_every=args.eval_every)
    print(json.dumps({"rows": len(rows), "direction": args.direction, "curve": curve}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
