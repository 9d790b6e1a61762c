"""Auxiliary CTC head for speech-LM training: transcript tokens from the 25 Hz frames of the speech patches.

Training only; the inference formats and the official weights are unchanged. For every frame of a speech patch
the head reads the patch encoder's output for that frame (local acoustics) and the backbone's output at the
patch (context, causal), and predicts the transcript with a blank, aligned by CTC. The gradient
teaches the backbone to know, at each speech position, which words are being spoken: what ASR reads from
and what TTS has to track. Its greedy output also gives the number of transcript tokens of an utterance.

Targets: the text vocabulary's tokens, or characters (``CHAR_ALPHABET``): a BPE token spans ~0.17 s, too coarse
and too many classes (2k) for a small patch encoder to learn from acoustics, while characters are close to what
one frame hears. ``upsample`` R emits R outputs per 25 Hz frame, so fast speech (more than 25 characters per
second, or doubled letters that need a blank between them) still fits the CTC alignment.

``context`` R > 0 puts a small bidirectional GRU (R units each way) over the utterance's frames before the
projection. A causal reader must name a sound before hearing its end and learns character CTC far more slowly than
a bidirectional one (measured with GRUs on these codes); the LM reads a transcript only after the whole utterance,
so a training-only bidirectional adapter asks of the patch encoder and backbone just the features that reading
needs, with a gradient that arrives early in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mimo_audio.modeling import SpeechLM

CHAR_ALPHABET = " abcdefghijklmnopqrstuvwxyz'0123456789"
_CHAR_INDEX = {c: i for i, c in enumerate(CHAR_ALPHABET)}


def char_labels(text: str) -> list[int]:
    """Character CTC targets: lower case, runs of anything outside the alphabet become one space."""
    out: list[int] = []
    for c in text.lower():
        i = _CHAR_INDEX.get(c, 0)
        if i or (out and out[-1]):  # no leading or repeated spaces
            out.append(i)
    while out and not out[-1]:
        out.pop()
    return out


class CTCHead(nn.Module):
    def __init__(self, local_dim: int, frame_dim: int, vocab_size: int, upsample: int = 1, context: int = 0):
        super().__init__()
        self.blank = vocab_size
        self.upsample = upsample
        self.context = context
        self.rnn = nn.GRU(local_dim + frame_dim, context, batch_first=True, bidirectional=True) if context else None
        self.proj = nn.Linear(2 * context if context else local_dim + frame_dim, (vocab_size + 1) * upsample)

    @classmethod
    def from_file(cls, path: str | Path, local_dim: int, frame_dim: int, vocab_size: int) -> CTCHead:
        """A saved head, its upsampling and context read from the tensor shapes."""
        tensors = load_file(str(path))
        if "proj.weight" not in tensors:
            raise ValueError(f"{path} is not a CTC head (no proj.weight)")
        rows, classes = tensors["proj.weight"].shape[0], vocab_size + 1
        if rows % classes:
            raise ValueError(f"{path} is not a CTC head over {vocab_size} classes ({rows} outputs)")
        context = tensors["rnn.weight_hh_l0"].shape[1] if "rnn.weight_hh_l0" in tensors else 0
        head = cls(local_dim, frame_dim, vocab_size, rows // classes, context)
        head.load_state_dict(tensors, strict=True)
        return head

    def forward(self, local_hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``local_hidden [N, local_dim]`` (one per patch), ``frames [N, G, frame_dim]`` -> log-probs
        ``[N*G*upsample, V+1]`` in time order (one utterance)."""
        ctx = local_hidden[:, None, :].expand(-1, frames.shape[1], -1)
        x = torch.cat([ctx, frames.to(ctx.dtype)], dim=-1)
        if self.rnn is not None:
            x = self.rnn(x.reshape(1, -1, x.shape[-1]).float())[0][0]  # [N*G, 2*context]: the whole utterance
        logits = self.proj(x).float().reshape(-1, self.blank + 1)  # [N*G*R, V+1]: R outputs per frame
        return F.log_softmax(logits, dim=-1)

    def save(self, path: str | Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path))

    def load(self, path: str | Path) -> None:
        self.load_state_dict(load_file(str(path)), strict=True)


class FrameCapture:
    """Keeps the patch encoder's per-frame output of the last forward (``[N_speech_patches, G, D]``, patches in
    row-major ``[B, T/4]`` order, as :meth:`SpeechLM.embed` runs them)."""

    def __init__(self, model: SpeechLM):
        self.frames: torch.Tensor | None = None
        self._handle = model.input_local_transformer.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.frames = output.last_hidden_state

    def remove(self) -> None:
        self._handle.remove()


def ctc_loss(head: CTCHead, local_hidden: torch.Tensor, frames: torch.Tensor, is_speech: torch.Tensor,
             labels: Sequence[Sequence[int] | None], lookahead: int = 0) -> torch.Tensor | None:
    """Mean CTC loss over the batch items that have ``labels``; ``is_speech [B, T/4]`` marks the speech patches of
    the inputs (those the patch encoder ran on, in that order). None when no item has labels.

    ``lookahead`` k: the frames of patch p are read with the backbone's output at position p + k (clamped to the
    sequence), which has heard k more patches. A causal model that must name a sound before hearing its end
    learns character CTC far more slowly than one that may look ahead (measured with GRUs on these codes); the
    LM itself reads the transcript after the whole utterance, so it never needs the causal version."""
    index = torch.nonzero(is_speech)  # [(b, p)] in the order of `frames`
    log_probs, targets, in_lens, tgt_lens = [], [], [], []
    for b, lab in enumerate(labels):
        if not lab:
            continue
        rows = torch.nonzero(index[:, 0] == b).flatten()
        if rows.numel() == 0:
            continue
        patches = index[rows, 1]
        ctx = (patches + lookahead).clamp(max=local_hidden.shape[1] - 1)
        lp = head(local_hidden[b, ctx], frames[rows])
        if lp.shape[0] < len(lab):
            continue
        log_probs.append(lp)
        targets += list(lab)
        in_lens.append(lp.shape[0])
        tgt_lens.append(len(lab))
    if not log_probs:
        return None
    T = max(in_lens)
    padded = torch.stack([F.pad(lp, (0, 0, 0, T - lp.shape[0])) for lp in log_probs], dim=1)  # [T, N, V+1]
    return F.ctc_loss(padded, torch.tensor(targets), torch.tensor(in_lens), torch.tensor(tgt_lens),
                      blank=head.blank, reduction="mean", zero_infinity=True)


@torch.no_grad()
def ctc_greedy(head: CTCHead, local_hidden: torch.Tensor, frames: torch.Tensor) -> list[int]:
    """Best-path decoding of one utterance: ``local_hidden [N, D]``, ``frames [N, G, Df]`` -> token ids."""
    return collapse(head(local_hidden, frames).argmax(-1).tolist(), head.blank)


def collapse(best: Sequence[int], blank: int) -> list[int]:
    """CTC best path -> labels: repeats merged, blanks dropped."""
    out, prev = [], blank
    for t in best:
        if t != prev and t != blank:
            out.append(t)
        prev = t
    return out


def char_text(labels: Sequence[int]) -> str:
    """Character labels (:func:`char_labels`) back to text."""
    return "".join(CHAR_ALPHABET[i] for i in labels)


@torch.no_grad()
def ctc_char_error_rate(model: SpeechLM, head: CTCHead, renderer, rows: Sequence[dict],
                        codes: dict[str, torch.Tensor], lookahead: int = 0) -> float:
    """Greedy character error rate of a character CTC head on ``rows`` (ASR prompts): does the backbone know,
    at the speech positions, which sounds it heard? (A probe of training, not an inference path.)"""
    from jiwer import cer

    from mimo_audio import formats

    capture = FrameCapture(model)
    was_training = model.training
    model.eval()
    refs, hyps = [], []
    try:
        for row in rows:
            ids = renderer.render(formats.asr(codes[row["id"]]))[None].to(model.device)
            hidden = model(ids).local_hidden[0]
            is_speech = ids[0, 0, :: renderer.group_size] == renderer.special.empty
            ctx = (torch.nonzero(is_speech).flatten() + lookahead).clamp(max=hidden.shape[0] - 1)
            hyps.append(char_text(ctc_greedy(head, hidden[ctx], capture.frames)))
            refs.append(char_text(char_labels(formats.normalize_case(row["text"]))))
    finally:
        capture.remove()
        model.train(was_training)
    return float(cer(refs, hyps))
