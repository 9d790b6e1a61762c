"""From generated patches to text, thinking text and audio codes (spec §2.8), offline and incrementally.

Rules:
* text: the text channel of the new patches, without the stop patch; ``<|empty|>``, ``<|eot|>``,
  ``<|sostm|>``, ``<|eostm|>`` removed; ids beyond the tokenizer's vocabulary (padding rows) dropped.
* thinking: when the prompt left a think block open (``<think>\\n``), everything up to the first
  generated ``</think>`` is the thinking text and the rest the answer; without ``</think>`` it is all
  thinking, and ``thinking_unclosed`` is set (the API then returns that thinking as the text, marked).
* audio: the speech patches after the start of the speech stream (the prompt's trailing ``<|sostm|>`` or
  the first generated one) and before the first generated ``<|eostm|>``; if there is no stream start at
  all, every speech patch (the official fallback).

:class:`OutputParser` applies these rules one patch at a time; the offline path feeds it every patch, so
streaming and non-streaming outputs agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .text_tokenizer import SpecialTokens


@dataclass
class ParsedOutput:
    text: str
    thinking: str | None
    codes: torch.Tensor  # [8, frames]
    thinking_unclosed: bool = False  # a think block was open and no </think> was generated


@dataclass
class Delta:
    """What one patch added."""

    text: str = ""
    thinking: str = ""
    codes: torch.Tensor | None = None  # [8, frames] newly released speech frames


@dataclass
class OutputParser:
    tokenizer: object
    special: SpecialTokens
    thinking_open: bool  # the prompt ends inside an open think block
    stream_open: bool  # the prompt ends with <|sostm|>
    _answer_ids: list[int] = field(default_factory=list)
    _thinking_ids: list[int] = field(default_factory=list)
    _in_thinking: bool = False
    _text_sent: str = ""
    _thinking_sent: str = ""
    _audio_started: bool = False
    _audio_ended: bool = False
    _pending: list[torch.Tensor] = field(default_factory=list)  # speech before any stream start
    _codes: list[torch.Tensor] = field(default_factory=list)
    _channels: int = 0  # audio channels of the patches pushed (their codes are [group, channels])

    def __post_init__(self) -> None:
        self._in_thinking = self.thinking_open
        self._audio_started = self.stream_open
        sp = self.special
        self._hidden = {sp.empty, sp.eot, sp.sostm, sp.eostm}
        self._vocab_len = len(self.tokenizer)

    def push(self, text_id: int, codes: torch.Tensor, is_stop: bool) -> Delta:
        """Consume one patch (``codes [group, channels]``); ``is_stop`` marks the stop patch (its token is
        dropped)."""
        sp = self.special
        self._channels = codes.shape[-1]
        delta = Delta()
        if text_id == sp.empty:
            if not self._audio_ended:
                frames = codes.T.contiguous()  # [channels, group]
                if self._audio_started:
                    self._codes.append(frames)
                    delta.codes = frames
                else:
                    self._pending.append(frames)
        elif text_id == sp.sostm and not self._audio_started:
            self._audio_started = True
            self._pending.clear()
        elif text_id == sp.eostm and not self._audio_ended:
            self._audio_ended = True
        if is_stop:
            return delta
        if self._in_thinking and text_id == sp.think_end:
            self._in_thinking = False
            return delta
        if text_id in self._hidden or text_id >= self._vocab_len:
            return delta
        if self._in_thinking:
            self._thinking_ids.append(text_id)
            delta.thinking = self._advance("thinking")
        else:
            self._answer_ids.append(text_id)
            delta.text = self._advance("text")
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _advance(self, which: str, final: bool = False) -> str:
        ids = self._thinking_ids if which == "thinking" else self._answer_ids
        full = self._decode(ids)
        if full.endswith("\ufffd") and not final:
            return ""  # an incomplete UTF-8 sequence: wait for its next byte
        sent = self._thinking_sent if which == "thinking" else self._text_sent
        new = full[len(sent) :] if full.startswith(sent) else ""
        if which == "thinking":
            self._thinking_sent = full
        else:
            self._text_sent = full
        return new

    def finish(self) -> Delta:
        """End of generation: release speech held back while no stream start had been seen."""
        delta = Delta(text=self._advance("text", final=True), thinking=self._advance("thinking", final=True))
        if not self._audio_started and self._pending:
            self._codes = list(self._pending)
            delta.codes = torch.cat(self._pending, dim=1)
            self._pending.clear()
        return delta

    def result(self, channels: int | None = None) -> ParsedOutput:
        """Everything parsed so far; ``channels`` sizes the empty code tensor when no speech came (default: the
        width of the patches fed)."""
        channels = channels if channels is not None else self._channels
        text = self._decode(self._answer_ids).strip()
        thinking = None
        if self.thinking_open:
            thinking = self._decode(self._thinking_ids).strip()
        codes = torch.cat(self._codes, dim=1) if self._codes else torch.empty(channels, 0, dtype=torch.long)
        unclosed = self.thinking_open and self._in_thinking
        return ParsedOutput(text=text, thinking=thinking, codes=codes, thinking_unclosed=unclosed)
