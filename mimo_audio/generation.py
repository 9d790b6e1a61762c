"""The generation loop: prefill, then one patch per step with the KV cache; batch >= 1 with left padding.

Each step samples the next text token from the backbone's last position. ``<|empty|>`` means "this patch
is speech": the patch decoder then samples its 4x8 codes; any other token makes a text patch whose audio
rows are the per-channel empty ids. The new patch (text id repeated over its 4 columns) is fed back.
Lengths are counted in patches; the stop patch is kept. Rows of a batch are independent: prompts are left
padded, padding is masked and positions restart at 0 for each row, so under greedy decoding every row
equals running it alone; with a seed, every row draws from its own identically seeded random stream, so
sampled rows also match their single runs (up to float noise in the logits).

The loop is ``prefill`` -> (``sample_patch`` -> ``decode_one``) per patch. ``iter_patches`` is the
streaming primitive (one :class:`PatchStep` per generated patch; the caller may stop iterating at any
time); ``generate`` collects it into :class:`GenerationOutput` per row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from .modeling import SpeechLM
from .sampling import Sampler, code_chooser, get_preset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    """Lengths in patches (1 patch = 4 audio frames = 160 ms, or one text token)."""

    max_new_patches: int = 1024
    min_new_patches: int = 0
    # Until the output holds this many speech patches (counted as the output parser keeps them: SpeechTally), a
    # sampled stop token is replaced by <|empty|>, a speech patch: a TTS request cannot end before it has
    # spoken (speak_instead_of_stopping). max_new_patches still ends it.
    min_speech_patches: int = 0
    # (<|sostm|>, <|eostm|>) ids: speech counts toward min_speech_patches only inside the stream, as the parser
    # keeps it; None counts every speech patch.
    stream_marks: tuple[int, int] | None = None
    stop_tokens: tuple[int, ...] = ()
    text_sampler: Sampler = field(default_factory=Sampler.greedy)
    audio_sampler: Sampler = field(default_factory=Sampler.greedy)
    suppress_tokens: tuple[int, ...] = ()  # never sampled on the text channel (e.g. <|empty|> for text output)
    seed: int | None = None
    # MTP speculative decoding of text-only outputs: draft this many tokens per backbone forward (0 = off).
    # Run by MimoAudio with the heads in mtp.safetensors beside the LM (see mimo_audio.speculative).
    speculative: int = 0
    adaptive_draft: bool = False  # let the decoder shorten or switch off drafting when it does not pay
    # max_new_patches is the task's default, not the caller's request: capping it to the context is silent
    length_is_default: bool = False

    def __post_init__(self) -> None:
        if self.speculative is True:
            object.__setattr__(self, "speculative", 3)
        if self.speculative is False or self.speculative is None:
            object.__setattr__(self, "speculative", 0)
        if int(self.speculative) < 0:
            raise ValueError(f"speculative (draft tokens) must be >= 0, got {self.speculative}")
        if self.max_new_patches < 1:
            raise ValueError(f"max_new_patches must be >= 1, got {self.max_new_patches}")
        if not 0 <= self.min_new_patches <= self.max_new_patches:
            raise ValueError(
                f"min_new_patches must be in [0, max_new_patches={self.max_new_patches}], got {self.min_new_patches}"
            )
        if self.min_speech_patches < 0:
            raise ValueError(f"min_speech_patches must be >= 0, got {self.min_speech_patches}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GenerationConfig:
        preset = get_preset(name)
        return cls(text_sampler=preset.text, audio_sampler=preset.audio, **overrides)

    def with_(self, **changes) -> GenerationConfig:
        return replace(self, **changes)


@dataclass
class SpeechTally:
    """The speech patches of one output row that the output parser will keep (mimo_audio.postprocess).

    A speech patch counts until ``<|eostm|>``; a generated ``<|sostm|>`` opening the stream (when the prompt
    did not) drops the speech before it, as the parser does.
    """

    empty: int  # the <|empty|> id: a speech patch
    marks: tuple[int, int] | None = None  # (<|sostm|>, <|eostm|>), or None: every speech patch counts
    started: bool = False  # the speech stream is open (the prompt ended with <|sostm|>, or one was generated)
    ended: bool = False
    count: int = 0

    @classmethod
    def for_prompt(cls, prompt: torch.Tensor, empty: int, marks: tuple[int, int] | None) -> SpeechTally:
        """A tally for the ``[9, T]`` prompt (open stream if its last text token is ``<|sostm|>``)."""
        return cls(empty, marks, started=marks is not None and int(prompt[0, -1]) == marks[0])

    @property
    def toward_floor(self) -> int:
        """The count that ``min_speech_patches`` compares: once the stream has ended no later speech is kept,
        so the floor no longer applies (a huge count), else the speech kept so far."""
        return 1 << 30 if self.ended else self.count

    def push(self, token: int) -> None:
        if token == self.empty:
            self.count += not self.ended
        elif self.marks is not None and token == self.marks[0] and not self.started:
            self.started, self.count = True, 0
        elif self.marks is not None and token == self.marks[1]:
            self.ended = True


def removed_tokens(config: GenerationConfig, step: int) -> tuple[int, ...]:
    """Text tokens no row may sample at ``step``: the suppressed tokens, plus the stop tokens before
    ``min_new_patches`` (the official rule)."""
    if step < config.min_new_patches:
        return tuple(config.suppress_tokens) + tuple(config.stop_tokens)
    return tuple(config.suppress_tokens)


def speak_instead_of_stopping(config: GenerationConfig, text: torch.Tensor, speech: Sequence[int],
                              empty: int) -> torch.Tensor:
    """Rows whose sampled token ``text [B]`` is a stop token while they hold fewer than ``min_speech_patches``
    kept speech patches (``speech``, per row) get ``<|empty|>`` instead: they speak a patch rather than end.

    The draw is the same as without the floor, so a row differs from its unfloored run only from the step where
    it would have ended too early. Each replaced stop adds a kept speech patch, so a speech stream sees at most
    ``min_speech_patches`` replaced stops; the stop tokens are never taken out of the draw (removing them let
    the embedded model write text up to the length limit), and after a replaced stop the run goes on as the
    model chooses.
    """
    if not config.min_speech_patches or not config.stop_tokens:
        return text
    short = torch.tensor([n < config.min_speech_patches for n in speech], device=text.device)
    stop = torch.isin(text, torch.tensor(config.stop_tokens, device=text.device))
    return torch.where(short & stop, torch.full_like(text, empty), text)


@dataclass
class PatchStep:
    """One generated patch for every row of the batch."""

    index: int  # 0-based index of the new patch
    text: torch.Tensor  # [B] text token of the patch (<|empty|> for speech patches)
    codes: torch.Tensor  # [B, 4, 8] codes (per-channel empty ids for text patches)
    active: torch.Tensor  # [B] bool: the row was still generating at this step (its patch is part of the output)
    stopped: torch.Tensor  # [B] bool: the row emitted a stop token at this step


@dataclass
class GenerationOutput:
    """The new patches of one row."""

    text_ids: list[int]  # text token of each new patch, stop patch included
    codes: torch.Tensor  # [n_patches, 4, 8]
    stop_reason: str  # "stop_token" or "max_length"

    @property
    def num_patches(self) -> int:
        return len(self.text_ids)

    def to_layout(self) -> torch.Tensor:
        """The new patches in the model's ``[9, 4 * n]`` layout (text id repeated over the 4 frames)."""
        n, G, C = self.codes.shape
        text = torch.tensor(self.text_ids, dtype=torch.long).repeat_interleave(G)
        return torch.cat([text[None], self.codes.reshape(n * G, C).T.cpu()], dim=0)


def left_pad(
    prompts: Sequence[torch.Tensor], pad_text_id: int, empty_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[9, T_i]`` prompts into ``ids [B, 9, T_max]`` (left padded) and a patch mask ``[B, T_max/4]``."""
    if not prompts:
        raise ValueError("no prompts given")
    G = 4
    for i, p in enumerate(prompts):
        if p.dim() != 2 or p.shape[0] != empty_ids.numel() + 1 or p.shape[1] % G or p.shape[1] == 0:
            raise ValueError(f"prompt {i} must be a non-empty [9, T] tensor with T % 4 == 0, got {tuple(p.shape)}")
    T = max(p.shape[1] for p in prompts)
    B = len(prompts)
    ids = torch.empty(B, empty_ids.numel() + 1, T, dtype=torch.long)
    ids[:, 0] = pad_text_id
    ids[:, 1:] = empty_ids.cpu()[None, :, None]
    mask = torch.zeros(B, T // G, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, :, T - p.shape[1] :] = p.cpu()
        mask[i, (T - p.shape[1]) // G :] = 1
    return ids, mask


@dataclass
class DecodeState:
    """What the loop carries between patches: the KV cache, the patch mask and the last model output."""

    cache: object  # transformers DynamicCache
    mask: torch.Tensor  # [B, patches so far]: 1 = real patch, 0 = left padding
    text_logits: torch.Tensor  # [B, vocab] for the next text token
    local_hidden: torch.Tensor  # [B, local_dim] for the next patch decoder call


@torch.no_grad()
def prefill(model: SpeechLM, ids: torch.Tensor, mask: torch.Tensor) -> DecodeState:
    """Run the (left-padded) prompts ``ids [B, 9, T]`` through the model, filling a fresh KV cache."""
    out = model(ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    return DecodeState(out.past_key_values, mask, out.text_logits[:, -1], out.local_hidden[:, -1])


@torch.no_grad()
def decode_one(model: SpeechLM, state: DecodeState, text: torch.Tensor, codes: torch.Tensor) -> DecodeState:
    """Feed one patch per row (``text [B]``, ``codes [B, 4, 8]``) through the model with the KV cache."""
    B, G, _ = codes.shape
    patch = torch.cat([text.view(B, 1, 1).expand(B, 1, G), codes.transpose(1, 2)], dim=1)  # [B, 9, 4]
    mask = torch.cat([state.mask, torch.ones(B, 1, dtype=state.mask.dtype, device=state.mask.device)], dim=1)
    out = model(patch, attention_mask=mask, past_key_values=state.cache, use_cache=True, logits_to_keep=1)
    return DecodeState(state.cache, mask, out.text_logits[:, -1], out.local_hidden[:, -1])


@torch.no_grad()
def sample_patch(
    model: SpeechLM, state: DecodeState, config: GenerationConfig, step: int, finished: torch.Tensor,
    generators: list[torch.Generator] | None, kept_speech: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the next patch: the text token, then (for rows whose token is ``<|empty|>``) its codes.

    ``kept_speech``: each row's kept speech patches so far (:class:`SpeechTally`), for ``min_speech_patches``.
    """
    B = state.text_logits.shape[0]
    G, C = model.config.group_size, model.config.audio_channels
    text = config.text_sampler(state.text_logits, removed=list(removed_tokens(config, step)), generator=generators)
    if kept_speech is not None:
        text = speak_instead_of_stopping(config, text, kept_speech, model.empty_token_id)
    text = text.to(state.mask.device)
    codes = model.empty_ids.to(text.device).view(1, 1, C).expand(B, G, C).clone()
    speech = (text == model.empty_token_id) & ~finished
    if bool(speech.any()):
        rows = speech.nonzero().squeeze(-1)
        gens = [generators[int(r)] for r in rows] if generators is not None else None
        choose = code_chooser(config.audio_sampler, model.config.speech_zeroemb_idx, gens)
        codes[rows] = model.decode_patch(state.local_hidden[rows], choose)
    return text, codes


@torch.no_grad()
def iter_patches(model: SpeechLM, prompts: Sequence[torch.Tensor], config: GenerationConfig) -> Iterator[PatchStep]:
    """Yield one :class:`PatchStep` per generated patch until every row stopped or hit the length limit.

    prefill -> (sample_patch -> decode_one) per patch. Closing the iterator stops generation.
    """
    if config.speculative:
        raise ValueError(
            "speculative decoding needs MTP heads: run it through MimoAudio (speculative=...) or "
            "mimo_audio.speculative.SpeculativeText"
        )
    device = model.device
    stop = torch.tensor(config.stop_tokens, dtype=torch.long, device=device)
    pad = config.stop_tokens[0] if config.stop_tokens else 0
    ids, mask = left_pad(prompts, pad_text_id=pad, empty_ids=model.empty_ids)
    B, prompt_patches = mask.shape
    room = model.max_patches - prompt_patches
    if room <= 0:
        raise ValueError(
            f"prompt of {prompt_patches} patches leaves no room in the model's context of {model.max_patches} "
            "patches; shorten the prompt (audio costs 6.25 patches per second)"
        )
    max_new = config.max_new_patches
    if max_new > room:
        if not config.length_is_default:  # only a length the caller asked for deserves a warning
            logger.warning("max_new_patches=%d exceeds the remaining context; capped at %d", max_new, room)
        max_new = room
    # One random stream per row, all seeded alike: a row samples the same with or without other rows.
    generators = [torch.Generator().manual_seed(config.seed) for _ in range(B)] if config.seed is not None else None

    tallies = [SpeechTally.for_prompt(p, model.empty_token_id, config.stream_marks) for p in prompts]

    state = prefill(model, ids.to(device), mask.to(device))
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new):
        text, codes = sample_patch(model, state, config, step, finished, generators,
                                   [t.toward_floor for t in tallies])
        for t, tok in zip(tallies, text.tolist()):
            t.push(tok)
        stopped = torch.isin(text, stop) & ~finished
        yield PatchStep(index=step, text=text, codes=codes, active=~finished, stopped=stopped)
        finished = finished | stopped
        if bool(finished.all()) or step + 1 == max_new:
            return
        state = decode_one(model, state, text, codes)


def generate(model: SpeechLM, prompts: Sequence[torch.Tensor], config: GenerationConfig) -> list[GenerationOutput]:
    """Generate for each ``[9, T]`` prompt; returns one :class:`GenerationOutput` per prompt."""
    B = len(prompts)
    texts: list[list[int]] = [[] for _ in range(B)]
    codes: list[list[torch.Tensor]] = [[] for _ in range(B)]
    reasons = ["max_length"] * B
    for step in iter_patches(model, prompts, config):
        for b in range(B):
            if step.active[b]:
                texts[b].append(int(step.text[b]))
                codes[b].append(step.codes[b].cpu())
                if step.stopped[b]:
                    reasons[b] = "stop_token"
    G, C = model.config.group_size, model.config.audio_channels
    return [
        GenerationOutput(
            text_ids=texts[b],
            codes=torch.stack(codes[b]) if codes[b] else torch.empty(0, G, C, dtype=torch.long),
            stop_reason=reasons[b],
        )
        for b in range(B)
    ]
