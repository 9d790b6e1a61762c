"""The training loss: shapes, masking, and that a few optimiser steps on the tiny model reduce it."""

from __future__ import annotations

import torch

from mimo_audio import SpeechLM
from mimo_audio.training import speech_lm_loss

from .conftest import random_codes


def _sequence(lm: SpeechLM) -> torch.Tensor:
    n_text, frames = 6, 16
    ids = torch.full((9, 4 * n_text + frames), -100, dtype=torch.long)
    ids[0, : 4 * n_text : 4] = torch.arange(70, 70 + n_text)
    ids[1:, : 4 * n_text] = lm.empty_ids[:, None]
    ids[0, 4 * n_text :: 4] = lm.empty_token_id
    ids[1:, 4 * n_text :] = random_codes(frames, seed=11)
    return ids[None]


def test_loss_is_finite_masked_and_decreases(tiny_dir):
    torch.set_num_threads(1)
    lm = SpeechLM.from_pretrained(tiny_dir)  # a private copy: it gets trained below
    ids = _sequence(lm)
    out = speech_lm_loss(lm, ids)
    assert out.text_tokens == 9 and out.speech_patches == 4 and torch.isfinite(out.loss)
    only_text = torch.zeros(1, 10, dtype=torch.bool)
    only_text[0, :6] = True
    assert speech_lm_loss(lm, ids, target_mask=only_text).speech_patches == 0
    lm.train()
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    first = None
    for _ in range(8):
        loss = speech_lm_loss(lm, ids).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.eval()
    assert speech_lm_loss(lm, ids).loss.item() < 0.5 * first
