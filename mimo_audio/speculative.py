"""MTP speculative decoding for the speech LM's text-only outputs (ASR, understanding, thinking, text dialogue).

The backbone is the target: :class:`SpeechLMTarget` adapts :class:`~mimo_audio.modeling.SpeechLM` to the
``TargetStep`` interface of :mod:`efficient.spec` (imported lazily: speculative decoding is opt-in and
``mimo_audio`` runs without it). The multimodal prompt ``[9, T]`` is bound to the target before each
generation; the decoder sees only the text row (one id per patch, ``<|empty|>`` for speech patches), and
every id it feeds afterwards becomes a text patch whose audio rows are the per-channel empty ids, exactly
what plain generation feeds for a text patch.

MTP heads read the backbone's pre-norm hidden state and the backbone's *text* embedding of the next id,
and predict through the shared final norm and text head. They live in ``mtp.safetensors`` beside the LM
(train them with ``mimo-audio train mtp``). Greedy output equals plain greedy generation token for token:
the backbone verifies every draft, and the same token filters (suppressed ids, stop tokens blocked before
``min_new_patches``) are applied to the verify logits as plain generation applies to its logits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .generation import GenerationConfig, GenerationOutput
from .modeling import SpeechLM

logger = logging.getLogger(__name__)

MTP_FILENAME = "mtp.safetensors"


def _backend():
    try:
        import efficient.spec as backend
    except ImportError as err:  # pragma: no cover - efficient ships with the project
        raise ImportError("speculative decoding needs the project's `efficient` package") from err
    return backend


class SpeechLMTarget:
    """``efficient.spec.TargetStep`` over a :class:`SpeechLM` backbone (batch 1).

    ``bind(prompt)`` sets the multimodal prompt that the first forward of each generation (the decoder's
    prefill) runs; ``forward(ids, cache)`` returns the text logits and the backbone's pre-norm hidden state
    for those positions. Composition: a backbone quantized with ``efficient.quant`` and/or converted by
    ``efficient.attention`` works unchanged (``SpeechLM.new_cache`` gives the cache it needs).
    """

    def __init__(self, lm: SpeechLM) -> None:
        self.lm = lm
        self.config = lm.config.backbone_config()
        self.embed = lm.model.embed_tokens
        self.final_norm = lm.model.norm
        self.lm_head = lm.lm_head
        self._prompt: torch.Tensor | None = None
        self._suppress: list[int] = []
        self._stop: list[int] = []
        self._min_new = 0
        self._captured: torch.Tensor | None = None
        self._hook = self.final_norm.register_forward_hook(self._capture)

    def _capture(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._captured = inputs[0]

    def close(self) -> None:
        """Remove the hook this adapter put on the backbone's final norm."""
        self._hook.remove()

    def bind(
        self, prompt: torch.Tensor, suppress: Sequence[int] = (), stop_tokens: Sequence[int] = (),
        min_new_patches: int = 0,
    ) -> list[int]:
        """Set the prompt ``[9, T]`` and the text filters of one generation; returns its text row."""
        G = self.lm.config.group_size
        if prompt.dim() != 2 or prompt.shape[0] != self.lm.config.audio_channels + 1 or prompt.shape[1] % G:
            raise ValueError(f"prompt must be [9, T] with T % {G} == 0, got {tuple(prompt.shape)}")
        self._prompt = prompt.long()
        self._suppress, self._stop, self._min_new = list(suppress), list(stop_tokens), int(min_new_patches)
        return self._prompt[0, ::G].tolist()

    @property
    def prompt_patches(self) -> int:
        if self._prompt is None:
            raise RuntimeError("no prompt bound: call bind(prompt) first")
        return self._prompt.shape[1] // self.lm.config.group_size

    def new_cache(self):
        return self.lm.new_cache()

    def text_patches(self, ids: torch.Tensor) -> torch.Tensor:
        """Text ids ``[n]`` -> text patches ``[9, 4n]`` (audio rows = per-channel empty ids)."""
        G = self.lm.config.group_size
        audio = self.lm.empty_ids.to(ids.device)[:, None].expand(-1, ids.numel() * G)
        return torch.cat([ids.repeat_interleave(G)[None], audio], dim=0)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids ``[1, n]`` -> (text logits ``[n, vocab]`` float32, pre-norm hidden ``[n, d]``)."""
        start = cache.get_seq_length()
        ids = input_ids[0].long()
        if start == 0:  # prefill: the decoder passes the prompt's text row; run the whole multimodal prompt
            P = self.prompt_patches
            text_row = self._prompt[0, :: self.lm.config.group_size]
            if ids.numel() != P or not torch.equal(ids.cpu(), text_row.cpu()):
                raise ValueError("the first forward must be the bound prompt's text row (bind() the prompt first)")
            x = self._prompt
        else:
            x = self.text_patches(ids)
        n = ids.numel()
        mask = torch.ones(1, start + n, dtype=torch.long, device=self.lm.device)
        out = self.lm(x[None].to(self.lm.device), attention_mask=mask, past_key_values=cache, use_cache=True)
        hidden, self._captured = self._captured, None
        logits = out.text_logits[0].float()
        if self._suppress:
            logits[:, self._suppress] = float("-inf")
        if self._stop and self._min_new:
            # row i predicts new patch number (start + i) - (P - 1); stop tokens are blocked before min_new
            step = torch.arange(start, start + n, device=logits.device) - (self.prompt_patches - 1)
            blocked = (step < self._min_new).nonzero().squeeze(-1)
            if blocked.numel():
                logits[blocked[:, None], torch.tensor(self._stop, device=logits.device)[None]] = float("-inf")
        return logits, hidden[0]


def load_speech_mtp(lm_or_target: SpeechLM | SpeechLMTarget, path: str | Path):
    """MTP heads for the speech LM from ``path`` (an LM directory holding ``mtp.safetensors``, or the file).

    Raises FileNotFoundError with the training command when there are none.
    """
    backend = _backend()
    target = lm_or_target if isinstance(lm_or_target, SpeechLMTarget) else SpeechLMTarget(lm_or_target)
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / MTP_FILENAME
    if not file.is_file():
        raise FileNotFoundError(
            f"no MTP heads at {file}: speculative decoding needs them. Train them with "
            f"`mimo-audio train mtp --lm {path if path.is_dir() else path.parent} --corpus CORPUS --tokenizer TOK`"
        )
    try:
        return backend.load_mtp(file, target)
    except (ValueError, OSError):
        raise
    except Exception as exc:  # safetensors raises SafetensorError for a truncated or corrupt file
        raise UserError(f"could not read the MTP heads {file} as safetensors ({exc}): the file is truncated or "
                        "corrupt; copy it again or retrain them with `mimo-audio train mtp`") from exc


def sampling_params(config: GenerationConfig):
    """The text sampler of ``config`` as ``efficient.backend.SamplingParams``: the same knobs, filtered by the same
    :func:`efficient.sampling.filter_logits`."""
    backend = _backend()
    s = config.text_sampler
    if not s.do_sample:
        return backend.SamplingParams()
    return backend.SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)


@dataclass
class SpeculativeText:
    """The speculative decoder bound to one speech LM (reused across prompts)."""

    target: SpeechLMTarget
    drafter: Any  # efficient.spec.MTPDrafter
    max_draft: int = 3
    adaptive: bool = False

    @classmethod
    def from_lm(cls, lm: SpeechLM, path: str | Path, max_draft: int = 3, adaptive: bool = False) -> SpeculativeText:
        target = SpeechLMTarget(lm)
        return cls(target, load_speech_mtp(target, path), max_draft, adaptive)

    def decoder(self, max_draft: int | None = None, adaptive: bool | None = None):
        backend = _backend()
        return backend.SpeculativeDecoder(
            self.target, self.drafter, self.max_draft if max_draft is None else max_draft,
            adaptive=self.adaptive if adaptive is None else adaptive,
        )

    def generate(
        self, prompt: torch.Tensor, config: GenerationConfig, max_draft: int | None = None,
        adaptive: bool | None = None,
    ) -> tuple[GenerationOutput, Any]:
        """Text-only generation for one ``[9, T]`` prompt; returns the output and ``SpecStats``."""
        prompt_ids = self.target.bind(prompt, config.suppress_tokens, config.stop_tokens, config.min_new_patches)
        max_new = _capped_length(self.target.lm, len(prompt_ids), config.max_new_patches)
        gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        out, stats = self.decoder(max_draft, adaptive).generate(
            prompt_ids, max_new, sampling_params(config), generator=gen, eos_token_id=config.stop_tokens or None,
        )
        return _as_output(self.target.lm, out, config), stats

    def generate_plain(self, prompt: torch.Tensor, config: GenerationConfig) -> tuple[GenerationOutput, Any]:
        """The reference: one backbone forward per token through the same target step."""
        backend = _backend()
        prompt_ids = self.target.bind(prompt, config.suppress_tokens, config.stop_tokens, config.min_new_patches)
        max_new = _capped_length(self.target.lm, len(prompt_ids), config.max_new_patches)
        gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        out, stats = backend.generate_plain(self.target, prompt_ids, max_new, sampling_params(config), gen,
                                         eos_token_id=config.stop_tokens or None)
        return _as_output(self.target.lm, out, config), stats


def _capped_length(lm: SpeechLM, prompt_patches: int, max_new: int) -> int:
    room = lm.max_patches - prompt_patches
    if room <= 0:
        raise ValueError(f"prompt of {prompt_patches} patches leaves no room in the context of {lm.max_patches}")
    # the decoder never drafts past max_new - 1 new tokens, so verify passes stay inside the context
    return min(max_new, room)


def _as_output(lm: SpeechLM, tokens: list[int], config: GenerationConfig) -> GenerationOutput:
    G, C = lm.config.group_size, lm.config.audio_channels
    codes = lm.empty_ids.cpu().view(1, 1, C).expand(len(tokens), G, C).clone()
    stopped = bool(tokens) and tokens[-1] in config.stop_tokens
    return GenerationOutput(text_ids=list(tokens), codes=codes, stop_reason="stop_token" if stopped else "max_length")
