"""Typed prompt segments and their rendering to the model's ``[9, T]`` layout (spec §2.3).

Three segment kinds cover every official prompt:

* :class:`Text` — each token becomes one text patch: text row ``[tok, -100, -100, -100]``, audio rows
  the per-channel empty ids. Special-token strings inside the text are recognised.
* :class:`Speech` — a speech *input*: ``<|sosp|>``, one ``<|empty|>`` patch per 4 frames, ``<|eosp|>``;
  audio rows hold 4 empty frames, the codes, 4 empty frames.
* :class:`Stream` — interleaved text and speech (assistant speech, few-shot targets): ``<|sostm|>``, then
  alternately 5 text patches and 5 speech patches, ``<|eot|>`` appended to the last text chunk, leftovers
  in order, ``<|eostm|>``.

Each :class:`Text` segment is tokenised on its own (as the official builders do), so where a prompt is
split into segments matters; the official formats in :mod:`mimo_audio.formats` keep the official splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .text_tokenizer import SpecialTokens

IGNORE = -100  # filler of the 3 unread text-row columns of a patch
STREAM_CHUNK = 5  # text tokens / speech patches per chunk of a stream segment


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Speech:
    codes: torch.Tensor  # [8, T] audio codes (any T >= 1; padded to a multiple of 4 by repeating the last frame)


@dataclass(frozen=True)
class Stream:
    text: str
    codes: torch.Tensor  # [8, T]


Segment = Text | Speech | Stream


def pad_codes(codes: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """``[C, T]`` -> ``[C, ceil(T/G)*G]`` by repeating the last frame (official front-end rule)."""
    if codes.dim() != 2 or codes.shape[1] == 0:
        raise ValueError(f"audio codes must be a non-empty [channels, frames] tensor, got {tuple(codes.shape)}")
    rest = (-codes.shape[1]) % group_size
    if rest:
        codes = torch.cat([codes, codes[:, -1:].expand(-1, rest)], dim=1)
    return codes.long()


class PromptRenderer:
    """Turns segments into ``LongTensor[9, T]`` with a given text tokenizer and special tokens."""

    def __init__(self, tokenizer, special: SpecialTokens, empty_ids: Sequence[int], group_size: int = 4):
        self.tokenizer = tokenizer
        self.special = special
        self.empty_ids = torch.tensor(list(empty_ids), dtype=torch.long)
        self.group_size = group_size

    @property
    def channels(self) -> int:
        return self.empty_ids.numel()

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def text_patches(self, token_ids: Sequence[int]) -> torch.Tensor:
        n, G = len(token_ids), self.group_size
        out = torch.empty(self.channels + 1, n * G, dtype=torch.long)
        out[0] = IGNORE
        out[0, ::G] = torch.tensor(list(token_ids), dtype=torch.long)
        out[1:] = self.empty_ids[:, None]
        return out

    def speech_patches(self, codes: torch.Tensor) -> torch.Tensor:
        """Bare speech patches (no sosp/eosp): text row ``<|empty|>``, audio rows the codes."""
        codes = self._check_codes(codes)
        G = self.group_size
        out = torch.empty(self.channels + 1, codes.shape[1], dtype=torch.long)
        out[0] = IGNORE
        out[0, ::G] = self.special.empty
        out[1:] = codes
        return out

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = pad_codes(torch.as_tensor(codes), self.group_size)
        if codes.shape[0] != self.channels:
            raise ValueError(f"audio codes must have {self.channels} channels, got {codes.shape[0]}")
        bad = (codes < 0) | (codes >= self.empty_ids[:, None])
        if bool(bad.any()):
            c = int(bad.any(dim=1).nonzero()[0])
            raise ValueError(f"audio codes of channel {c} are outside [0, {int(self.empty_ids[c])})")
        return codes

    def render_segment(self, seg: Segment) -> torch.Tensor:
        sp = self.special
        if isinstance(seg, Text):
            return self.text_patches(self.tokenize(seg.text))
        if isinstance(seg, Speech):
            body = self.speech_patches(seg.codes)
            # 4 empty frames under <|sosp|> and under <|eosp|>, the codes in between.
            return torch.cat([self.text_patches([sp.sosp]), body, self.text_patches([sp.eosp])], dim=1)
        if isinstance(seg, Stream):
            return self._render_stream(seg)
        raise TypeError(f"not a prompt segment: {seg!r}")

    def _render_stream(self, seg: Stream) -> torch.Tensor:
        sp, G, K = self.special, self.group_size, STREAM_CHUNK
        tokens = self.tokenize(seg.text)
        text_chunks = [tokens[i : i + K] for i in range(0, len(tokens), K)] or [[]]
        text_chunks[-1] = text_chunks[-1] + [sp.eot]
        speech = self.speech_patches(seg.codes)
        n_patches = speech.shape[1] // G
        speech_chunks = [speech[:, i * G : min(i + K, n_patches) * G] for i in range(0, n_patches, K)]
        parts = [self.text_patches([sp.sostm])]
        for i in range(max(len(text_chunks), len(speech_chunks))):
            if i < len(text_chunks):
                parts.append(self.text_patches(text_chunks[i]))
            if i < len(speech_chunks):
                parts.append(speech_chunks[i])
        parts.append(self.text_patches([sp.eostm]))
        return torch.cat(parts, dim=1)

    def render(self, segments: Sequence[Segment]) -> torch.Tensor:
        """Concatenate the renderings of ``segments`` into ``[9, T]``."""
        if not segments:
            raise ValueError("empty prompt: no segments to render")
        return torch.cat([self.render_segment(s) for s in segments], dim=1)

    def pieces(self, ids: torch.Tensor) -> list[str]:
        """Readable view of a rendered prompt: runs of ordinary text decoded together, special tokens
        as their strings, runs of speech patches as ``[N speech]``. Used by the golden prompt tests."""
        specials = {v for v in vars(self.special).values()}
        out: list[str] = []
        text_run: list[int] = []
        speech_run = 0

        def flush() -> None:
            nonlocal speech_run
            if text_run:
                out.append(self.tokenizer.decode(text_run, clean_up_tokenization_spaces=False))
                text_run.clear()
            if speech_run:
                out.append(f"[{speech_run} speech]")
                speech_run = 0

        for tok in ids[0, :: self.group_size].tolist():
            if tok == self.special.empty:
                if text_run:
                    flush()
                speech_run += 1
            elif tok in specials:
                flush()
                out.append(self.tokenizer.decode([tok]))
            else:
                if speech_run:
                    flush()
                text_run.append(tok)
        flush()
        return out

    def describe(self, ids: torch.Tensor) -> str:
        return " ".join(repr(p) if p.strip() != p or not p else p for p in self.pieces(ids))
