"""Training data from the offline corpus (``mimo-audio corpus build``): waveform crops for the tokenizer and
prompts in the official formats for the speech LM."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mimo_audio.corpus import read_wav, split_rows

log = logging.getLogger("mimo-audio.train")


def corpus_rows(corpus: str | Path, split: str) -> list[dict]:
    return split_rows(corpus, split, style=None)


class WavCrops:
    """Random fixed-length crops of the corpus wavs (zero-padded when shorter), read lazily from disk."""

    def __init__(self, corpus: str | Path, split: str, sample_rate: int, crop_samples: int):
        self.corpus, self.rows = Path(corpus), corpus_rows(corpus, split)
        self.sample_rate, self.crop = sample_rate, crop_samples

    def batch(self, batch_size: int, gen: np.random.Generator) -> torch.Tensor:
        out = torch.zeros(batch_size, self.crop)
        for b, i in enumerate(gen.integers(0, len(self.rows), batch_size)):
            wav = read_wav(self.corpus, self.rows[int(i)], self.sample_rate)
            if wav.shape[0] > self.crop:
                s = int(gen.integers(0, wav.shape[0] - self.crop + 1))
                wav = wav[s : s + self.crop]
            out[b, : wav.shape[0]] = wav
        return out
