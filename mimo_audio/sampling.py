"""Token samplers (text channel and audio channels) and the official per-task sampler presets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from efficient.sampling import filter_logits


@dataclass(frozen=True)
class Sampler:
    """Temperature, then top-k, then top-p, then removed tokens; multinomial draw or argmax.

    Same order and tie rules as the official ``MiMoSampler``: top-k keeps every logit >= the k-th largest;
    top-p sorts ascending and drops tokens whose cumulative probability is <= 1 - p (the largest always
    survives). Removed tokens (e.g. the empty audio id, or stop tokens before ``min_new_patches``) get -inf.
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def greedy(cls) -> Sampler:
        return cls(do_sample=False)

    def with_overrides(self, temperature: float | None = None, top_k: int | None = None,
                       top_p: float | None = None) -> Sampler:
        """This sampler with some knobs replaced (None keeps one). ``temperature=0`` means greedy, a positive
        one turns sampling on; ``top_k=0`` and ``top_p=1`` switch those filters off."""
        if temperature is None and top_k is None and top_p is None:
            return self
        do_sample, temp = self.do_sample, self.temperature
        if temperature is not None:
            do_sample, temp = temperature > 0, (temperature if temperature > 0 else self.temperature)
        k = self.top_k if top_k is None else (top_k or None)
        p = self.top_p if top_p is None else (None if top_p >= 1 else top_p)
        return Sampler(do_sample=do_sample, temperature=temp, top_k=k, top_p=p)

    def filter_logits(self, logits: torch.Tensor, removed: Sequence[int] = ()) -> torch.Tensor:
        """Temperature, top-k and top-p (when sampling; :func:`efficient.sampling.filter_logits`), then the
        removed tokens at -inf."""
        if self.do_sample:
            scores = filter_logits(logits, self.temperature, self.top_k, self.top_p)
        else:
            scores = logits.float()
        if len(removed):
            filtered = scores.clone()
            filtered[..., list(removed)] = float("-inf")
            dead = torch.isinf(filtered).all(dim=-1)
            if bool(dead.any()):
                # Top-k/p kept only removed tokens (the official code yields NaN here): drop the removed
                # tokens first, then filter again, for the affected rows only.
                first = logits.float().clone()
                first[..., list(removed)] = float("-inf")
                filtered[dead] = self.filter_logits(first[dead])
            scores = filtered
        return scores

    def __call__(
        self,
        logits: torch.Tensor,
        removed: Sequence[int] = (),
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """``logits [..., V]`` -> token ids ``[...]``.

        ``generator`` may be one generator, or one per row of a 2-D ``logits`` (each row then draws from
        its own stream, so a row's samples do not depend on the other rows of the batch).
        """
        scores = self.filter_logits(logits, removed)
        if not self.do_sample:
            return scores.argmax(dim=-1)
        probs = scores.softmax(dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        if generator is None or isinstance(generator, torch.Generator):
            ids = _multinomial(flat, generator)
        else:
            if len(generator) != flat.shape[0]:
                raise ValueError(f"{len(generator)} generators for {flat.shape[0]} rows")
            ids = torch.cat([_multinomial(flat[i : i + 1], g) for i, g in enumerate(generator)])
        return ids.reshape(probs.shape[:-1])


def _multinomial(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device != probs.device:
        # A CPU generator drives sampling on any device: draw on CPU, move the ids back.
        return torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)


# Picks one code per row from one channel's logits: (logits [B, vocab_c], channel c) -> ids [B].
CodeChooser = Callable[[torch.Tensor, int], torch.Tensor]


def code_chooser(sampler: Sampler, empty_ids: Sequence[int],
                 generator: torch.Generator | Sequence[torch.Generator] | None = None) -> CodeChooser:
    """The patch decoder's choice rule: ``sampler`` on channel ``c``'s logits, never its empty id."""

    def choose(logits: torch.Tensor, c: int) -> torch.Tensor:
        return sampler(logits, removed=(empty_ids[c],), generator=generator)

    return choose


@dataclass(frozen=True)
class SamplerPreset:
    text: Sampler
    audio: Sampler


_AUDIO = Sampler(do_sample=True, temperature=0.9, top_k=None, top_p=0.95)

# The official demo wrapper's settings per task (global sampler = text, local sampler = audio).
PRESETS: dict[str, SamplerPreset] = {
    "default": SamplerPreset(Sampler(True, 0.6, 50, 0.95), Sampler(True, 0.9, 50, 0.95)),
    "asr": SamplerPreset(Sampler.greedy(), _AUDIO),
    "tts": SamplerPreset(Sampler(True, 0.6, None, 1.0), _AUDIO),
    "spoken_dialogue": SamplerPreset(Sampler(True, 0.6, None, 0.95), _AUDIO),
    "audio_understanding": SamplerPreset(Sampler(True, 0.3, None, 0.95), _AUDIO),
    "text_chat": SamplerPreset(Sampler(True, 0.4, None, 0.95), _AUDIO),
    "in_context_learning_s2s": SamplerPreset(Sampler.greedy(), _AUDIO),
    "qa": SamplerPreset(Sampler.greedy(), _AUDIO),
    # The eval wrapper's spoken-dialogue settings.
    "spoken_dialogue_eval": SamplerPreset(Sampler(True, 0.3, None, 0.95), Sampler(True, 0.7, None, 0.95)),
    # Fully deterministic: handy for tests and reproducible demos.
    "greedy": SamplerPreset(Sampler.greedy(), Sampler.greedy()),
}


def get_preset(name: str) -> SamplerPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown sampler preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
