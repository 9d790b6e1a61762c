"""The toolkit's own model: :class:`mimo_audio.MimoAudio`, any checkpoint, with the efficiency backends.

``quant`` (an ``efficient.quant`` scheme such as ``w4g64``) and ``sparse`` (an ``efficient.attention``
layout such as ``hysparse-1:3``) convert the backbone with :func:`mimo_audio.compose.compose_backbone`;
``speculative=K`` drafts K tokens with the MTP heads for text outputs (acceptance counters land in each
record's ``extra.spec``). Only the public task methods of ``MimoAudio`` are called.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from eval.models.base import ModelAdapter, Output

log = logging.getLogger(__name__)


def weights_digest(directory: Path) -> str:
    """A cheap identity of a checkpoint folder: names, sizes and the first MiB of each weight file."""
    h = hashlib.sha256()
    for p in sorted(directory.glob("*.safetensors")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _describe(segments: list) -> str:
    """The rendered prompt as text: text segments verbatim, each speech segment as ``<speech>``."""
    out = []
    for seg in segments:
        codes = getattr(seg, "codes", None)
        text = getattr(seg, "text", None)
        if text:
            out.append(text)
        if codes is not None:
            out.append("<speech>")
    return "".join(out)


def _spec_counters(stats: list) -> list[dict[str, Any]]:
    keys = ("max_draft", "proposed", "accepted", "draft_rounds", "draft_round_tokens", "plain_steps",
            "target_forwards", "new_tokens", "time_total")
    return [{k: getattr(s, k) for k in keys} for s in stats]


class MimoAdapter(ModelAdapter):
    name = "mimo"

    def __init__(self, lm_path: str | None = None, tokenizer_path: str | None = None, device: str | None = None,
                 quant: str | None = None, sparse: str | None = None, speculative: int = 0,
                 random_init: bool = False, seed: int = 0, model: Any = None) -> None:
        from mimo_audio import MimoAudio

        self.quant, self.sparse, self.speculative = quant, sparse, int(speculative or 0)
        self.random_init = random_init
        self.m = model if model is not None else MimoAudio.from_pretrained(lm_path, tokenizer_path, device=device)
        if random_init:  # the same architectures with seeded random weights: the floor a trained model must beat
            self._randomize(seed)
        if quant or sparse:
            from mimo_audio.compose import compose_backbone

            compose_backbone(self.m.lm, quant=quant, attention=sparse)
        self.lm_dir = Path(self.m.lm_path) if self.m.lm_path else None
        self._digest = weights_digest(self.lm_dir) if self.lm_dir else "in-memory"
        self._label = "embedded-default" if lm_path is None and model is None else (
            self.lm_dir.name if self.lm_dir else "mimo")
        if random_init:
            self._label += "+random-init"
        if quant:
            self._label += f"+{quant}"
        if sparse:
            self._label += f"+{sparse}"
        if self.speculative:
            self._label += f"+mtp{self.speculative}"

    def _randomize(self, seed: int) -> None:
        self.m.lm.init_weights(seed=seed)
        tok = self.m.audio_tokenizer
        if tok is not None:
            from tokenizer import AudioTokenizer

            fresh = AudioTokenizer.from_config(tok.config, seed=seed, device=next(tok.model.parameters()).device)
            tok.model.load_state_dict(fresh.model.state_dict())
            tok.model.eval()

    def label(self) -> str:
        return self._label

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": "mimo", "lm": str(self.lm_dir), "weights": self._digest, "quant": self.quant,
                "sparse": self.sparse, "speculative": self.speculative, "random_init": self.random_init}

    # ------------------------------------------------------------------ helpers
    def _gen(self, gen: dict[str, Any], text_output: bool) -> dict[str, Any]:
        g = dict(gen)
        if text_output and self.speculative and "speculative" not in g:
            g["speculative"] = self.speculative
        if not text_output:
            g.pop("speculative", None)
        return g

    def _audio_out(self, res, prompt: str) -> Output:
        audio = res.audio.float().cpu().numpy() if res.audio is not None else None
        return Output(text=res.text, thinking=res.thinking, audio=audio, sample_rate=res.sample_rate, prompt=prompt,
                      extra={"stop": res.stop_reason, "patches": res.num_patches})

    def _text_out(self, text: str, thinking: str | None, prompt: str, extra: dict | None = None) -> Output:
        extra = dict(extra or {})
        if self.m.last_draft_stats:
            extra["spec"] = _spec_counters(self.m.last_draft_stats)
            self.m.last_draft_stats = []
        return Output(text=text, thinking=thinking, prompt=prompt, extra=extra)

    def _prompt(self, builder: str, *args: Any, **kwargs: Any) -> str:
        import torch

        from mimo_audio import formats

        dummy = torch.zeros(8, 1, dtype=torch.long)
        args = tuple(dummy if a == "<audio>" else a for a in args)
        try:
            return _describe(getattr(formats, builder)(*args, **kwargs))
        except Exception as exc:  # a description only: never fail a sample over it
            return f"formats.{builder} ({exc})"

    # ------------------------------------------------------------------ kinds
    def asr(self, audio: str, language: str, gen: dict[str, Any]) -> Output:
        text = self.m.asr(audio, language=language, **self._gen(gen, True))
        return self._text_out(text, None, self._prompt("asr", "<audio>", language=language))

    def tts(self, text: str, voice: str | None, instruct: str | None, gen: dict[str, Any]) -> Output:
        res = self.m.tts(text, instruct=instruct, voice=voice, **self._gen(gen, False))
        return self._audio_out(res, self._prompt("tts", text, instruct=instruct) + (" +voice prompt" if voice else ""))

    def understand(self, audio: str, question: str, thinking: bool, gen: dict[str, Any]) -> Output:
        res = self.m.understand(audio, question, thinking=thinking, **self._gen(gen, True))
        return self._text_out(res.text, res.thinking,
                              self._prompt("audio_understanding", "<audio>", question, thinking),
                              {"stop": res.stop_reason})

    def chat(self, messages: list[dict], output: str, thinking: bool, gen: dict[str, Any]) -> Output:
        wire = []
        for m in messages:  # {"role", "audio"?, "content"?} -> OpenAI-like parts, audio first
            parts = ([{"type": "audio", "audio": m["audio"]}] if m.get("audio") else []) + (
                [{"type": "text", "text": m["content"]}] if m.get("content") else [])
            wire.append({"role": m["role"], "content": parts})
        res = self.m.chat(wire, output=output, thinking=thinking, **self._gen(gen, output == "text"))
        prompt = " | ".join(f"{m['role']}: {'<speech> ' if m.get('audio') else ''}{m.get('content', '')}"
                            for m in messages)
        if output == "text":
            return self._text_out(res.text, res.thinking, prompt, {"stop": res.stop_reason})
        return self._audio_out(res, prompt)

    def few_shot(self, examples: list[dict], query: str, instruction: str | None, gen: dict[str, Any]) -> Output:
        pairs = [(e["input"], e["output"], e.get("output_text", "")) for e in examples]
        res = self.m.few_shot(pairs, query, instruction=instruction, **self._gen(gen, False))
        return self._audio_out(res, f"formats.in_context_s2s: {len(pairs)} example pair(s), instruction "
                                    f"{instruction!r}, query <speech>")

    def continue_speech(self, audio: str, gen: dict[str, Any]) -> Output:
        res = self.m.continue_speech(audio, **self._gen(gen, False))
        return self._audio_out(res, self._prompt("speech_continuation", "<audio>"))

    def resynthesize(self, audio: str) -> Output:
        codes = self.m.encode_audio(audio)
        wav = self.m.decode_codes(codes).float().cpu().numpy()
        return Output(audio=np.asarray(wav, dtype=np.float32), sample_rate=self.m.sample_rate,
                      prompt="audio tokenizer encode -> decode", extra={"frames": int(codes.shape[1])})
