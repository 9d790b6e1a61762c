"""How far the text of a stream segment runs ahead of its speech, per stream chunk, on a corpus.

A TTS answer alternates chunks of 5 text tokens and 5 speech patches (0.8 s). While the model writes the speech
of chunk ``i`` it has read the text of chunks ``1..i``. If that text ends before the speech it describes, the
model can look the words up; if it ends earlier than the speech of the chunk (negative lead), the model has to
speak words it has not read yet, and learns to speak without reading. The official BPE vocabulary (~4
characters a token) keeps the text ahead; a byte vocabulary (1 character a token, ~15 characters a second of
speech) falls behind by more with every chunk.

Timing model: the speech of an utterance fills its duration minus the corpus' silence margins, and the
characters of its text are spread evenly over it (no forced alignment). Lead of chunk ``i`` = time at which
the text read so far has been spoken - end time of the chunk's speech; once all the text is read, the chunk
leads by definition.

    python -m apps.train.text_lead --corpus corpus-full --text-tokenizer runs/lm/model [--split train]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from mimo_audio import formats
from mimo_audio.prompts import STREAM_CHUNK

log = logging.getLogger("mimo-audio.train")

PATCH_SECONDS = 0.16  # 4 frames at 25 Hz
SILENCE_MARGIN = 0.15  # the corpus trims each utterance to this much silence at either end


def chunk_leads(token_pieces: list[str], duration: float, chunk: int = STREAM_CHUNK) -> list[float]:
    """Lead in seconds of each speech chunk of one utterance (``inf`` once all its text is read).

    ``token_pieces``: the decoded text of each token, in order; ``duration``: the audio length in seconds.
    """
    chars = np.cumsum([len(p) for p in token_pieces])
    total = float(chars[-1]) if len(chars) else 0.0
    speech = max(duration - 2 * SILENCE_MARGIN, 1e-3)
    n_chunks = int(np.ceil(duration / (chunk * PATCH_SECONDS)))
    leads = []
    for i in range(1, n_chunks + 1):
        read = float(chars[min(i * chunk, len(chars)) - 1]) if len(chars) else 0.0
        if read >= total:
            leads.append(float("inf"))
            continue
        spoken_at = SILENCE_MARGIN + speech * read / total
        leads.append(spoken_at - i * chunk * PATCH_SECONDS)
    return leads


def text_lead(rows: list[dict], durations: list[float], tokenizer, chunk: int = STREAM_CHUNK) -> dict:
    """Summary of :func:`chunk_leads` over corpus rows (their ``text``) read with ``tokenizer``."""
    per_chunk: list[list[float]] = []
    all_leads, tok_rate, char_per_tok = [], [], []
    for row, dur in zip(rows, durations):
        text = formats.normalize_case(row["text"])
        ids = tokenizer.encode(text, add_special_tokens=False)
        pieces = [tokenizer.decode([i]) for i in ids]
        leads = chunk_leads(pieces, dur, chunk)
        all_leads += leads
        for i, v in enumerate(leads):
            if len(per_chunk) <= i:
                per_chunk.append([])
            per_chunk[i].append(v)
        tok_rate.append(len(ids) / max(dur - 2 * SILENCE_MARGIN, 1e-3))
        char_per_tok.append(len(text) / max(1, len(ids)))
    finite = [v for v in all_leads if np.isfinite(v)]
    return {
        "utterances": len(rows),
        "chars_per_token": round(float(np.mean(char_per_tok)), 3),
        "text_tokens_per_speech_second": round(float(np.mean(tok_rate)), 2),
        "stream_text_tokens_per_second": round(chunk / (chunk * PATCH_SECONDS), 2),
        "chunks_leading": round(float(np.mean([v >= 0 for v in all_leads])), 4),
        "mean_lead_s_while_text_left": round(float(np.mean(finite)), 3) if finite else None,
        "median_lead_s_by_chunk": [
            (round(float(np.median(v)), 3) if np.isfinite(np.median(v)) else "all read") for v in per_chunk[:8]
        ],
    }


def _durations(corpus: Path, rows: list[dict]) -> list[float]:
    import soundfile as sf

    return [float(r["duration_s"]) if r.get("duration_s") else sf.info(str(corpus / r["path"])).duration
            for r in rows]


def main(argv: list[str] | None = None) -> int:
    from mimo_audio.corpus import split_rows
    from mimo_audio.text_tokenizer import load_text_tokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="corpus directory (mimo-audio corpus build)")
    p.add_argument("--text-tokenizer", required=True, action="append",
                   help="a folder with a text tokenizer (repeat to compare several)")
    p.add_argument("--split", default="train")
    p.add_argument("--max-rows", type=int, default=2000, help="plain-style rows to measure (default 2000)")
    args = p.parse_args(argv)
    corpus = Path(args.corpus)
    rows = split_rows(corpus, args.split, style="plain")[: args.max_rows]
    durations = _durations(corpus, rows)
    out = {}
    for folder in args.text_tokenizer:
        out[folder] = text_lead(rows, durations, load_text_tokenizer(folder))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
