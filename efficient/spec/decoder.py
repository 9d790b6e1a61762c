"""Speculative decoding with chained MTP heads: draft K, verify K+1 in one target forward, roll back.

Round structure (committed tokens x_0..x_m; the target has processed x_0..x_{m-1}):

1. draft: head d (d = 1..K) at position m-1 reads the target's (or head d-1's) hidden state there and
   the embedding of x_{m-1+d} (x_m, then the drafts) and proposes x_{m+d};
2. verify: the target runs [x_m, draft_1..draft_K] in one forward pass (query length K+1);
3. accept the longest valid prefix (greedy match or rejection sampling) plus one bonus token;
4. roll back: the target cache is cropped to the accepted length with ``cache.crop`` (the same call for
   every cache type), each head cache is cropped to the positions whose inputs are all committed, so
   no speculative state survives a round.

Heads catch up lazily: at the next round head d processes every position from its committed length
to m-1 in one small forward, reusing head d-1's stored outputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from .mtp import HeadKVCache, MTPDrafter
from .sampling import SamplingParams, probs, sample, verify_greedy, verify_sampling
from .target import TargetStep, rollback

log = logging.getLogger(__name__)


@dataclass
class SpecStats:
    """Counters of one generation. Acceptance length counts the bonus token (range 1..K+1)."""

    max_draft: int = 0
    proposed: list[int] = field(default_factory=list)  # per draft position
    accepted: list[int] = field(default_factory=list)
    draft_rounds: int = 0
    draft_round_tokens: int = 0  # tokens committed by drafting rounds (accepted + bonus)
    plain_steps: int = 0
    target_forwards: int = 0
    new_tokens: int = 0
    time_draft: float = 0.0
    time_verify: float = 0.0
    time_total: float = 0.0
    time_prefill: float = 0.0

    def __post_init__(self) -> None:
        if not self.proposed:
            self.proposed = [0] * self.max_draft
            self.accepted = [0] * self.max_draft

    @property
    def acceptance_per_position(self) -> list[float]:
        """P(draft i accepted | drafts before it accepted), per position."""
        return [a / p if p else float("nan") for a, p in zip(self.accepted, self.proposed)]

    @property
    def acceptance_rate(self) -> float:
        p = sum(self.proposed)
        return sum(self.accepted) / p if p else float("nan")

    @property
    def acceptance_length(self) -> float:
        """Mean tokens committed per drafting round (accepted drafts + bonus)."""
        return self.draft_round_tokens / self.draft_rounds if self.draft_rounds else float("nan")

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the prompt (excludes prefill)."""
        t = self.time_total - self.time_prefill
        return (self.new_tokens - 1) / t if t > 0 and self.new_tokens > 1 else float("nan")

    def summary(self) -> str:
        per = " ".join(f"{a:.2f}" for a in self.acceptance_per_position)
        return (f"accept/pos [{per}] accept_len {self.acceptance_length:.2f} tok/fwd {self.tokens_per_forward:.2f} "
                f"decode {self.decode_tokens_per_s:.1f} tok/s (draft {self.time_draft:.2f}s verify "
                f"{self.time_verify:.2f}s, {self.plain_steps} plain steps)")


class AdaptiveDraftLength:
    """Picks the draft length k that maximises expected tokens per second; k = 0 turns drafting off.

    Expected tokens of a round: 1 + sum_i prod_{j<=i} alpha_j with alpha the measured conditional
    acceptance per position; cost: measured time of a round that verifies k+1 tokens (the forward and the
    bookkeeping after it) plus k draft steps. While off, it probes with the full length so that it can turn
    drafting back on: first after ``probe_every`` plain rounds, and each probe that finds drafting still
    off doubles the wait (up to ``max_probe_every``), so a run where drafting never pays spends only a
    handful of rounds on it (a probe costs about K plain steps when verifying is compute bound).
    """

    def __init__(
        self, max_draft: int, enabled: bool = True, probe_every: int = 16, ema: float = 0.15,
        max_probe_every: int = 256,
    ) -> None:
        self.max_draft, self.enabled, self.probe_every, self.ema = max_draft, enabled, probe_every, ema
        self.max_probe_every = max_probe_every
        self.alpha = [0.7] * max_draft
        self.t_fwd: dict[int, float] = {}
        self.t_draft_step: float | None = None
        self.rounds = 0
        self.off_rounds = 0  # plain rounds since drafting was last chosen or probed
        self.wait = probe_every  # plain rounds before the next probe
        self.probes = 0

    def _avg(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.ema) * old + self.ema * new

    def _t(self, n: int) -> float:
        if n in self.t_fwd:
            return self.t_fwd[n]
        xs = sorted(self.t_fwd)
        lo = max((x for x in xs if x < n), default=xs[0])
        hi = min((x for x in xs if x > n), default=xs[-1])
        if lo == hi:
            return self.t_fwd[lo] * (1 + 0.1 * (n - lo))
        return self.t_fwd[lo] + (self.t_fwd[hi] - self.t_fwd[lo]) * (n - lo) / (hi - lo)

    def expected_tokens(self, k: int) -> float:
        e, run = 1.0, 1.0
        for i in range(k):
            run *= self.alpha[i]
            e += run
        return e

    def choose(self) -> int:
        self.rounds += 1
        if not self.enabled or self.max_draft == 0:
            return self.max_draft
        if 1 not in self.t_fwd:
            return 0  # measure a plain step first
        if self.max_draft + 1 not in self.t_fwd or self.t_draft_step is None:
            return self.max_draft
        rate = {0: 1.0 / self._t(1)}
        for k in range(1, self.max_draft + 1):
            rate[k] = self.expected_tokens(k) / (self._t(k + 1) + k * self.t_draft_step)
        best = max(rate, key=rate.get)
        if best == 0:
            self.off_rounds += 1
            if self.off_rounds >= self.wait:  # probe: measure acceptance and cost again
                self.off_rounds, self.probes = 0, self.probes + 1
                self.wait = min(2 * self.wait, self.max_probe_every)
                return self.max_draft
        else:
            self.off_rounds, self.wait = 0, self.probe_every  # drafting pays: probe promptly if it stops
        return best

    def update_forward(self, n: int, seconds: float) -> None:
        self.t_fwd[n] = self._avg(self.t_fwd.get(n), seconds)

    def update_round(self, k: int, accepted: int, draft_seconds: float) -> None:
        for i in range(min(accepted + 1, k)):
            self.alpha[i] = self._avg(self.alpha[i], 1.0 if i < accepted else 0.0)
        if k:
            self.t_draft_step = self._avg(self.t_draft_step, draft_seconds / k)


def _token_list(ids: list[int] | torch.Tensor) -> list[int]:
    """A prompt as plain ints, from a list or a tensor of any shape."""
    return [int(t) for t in (ids.flatten().tolist() if torch.is_tensor(ids) else ids)]


def _stop_set(eos_token_id: int | Collection[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset((eos_token_id,))
    return frozenset(int(t) for t in eos_token_id)


def trim_head_caches(caches: list[HeadKVCache], committed: int) -> None:
    """Keep in head d's cache only positions whose inputs are all committed tokens (the first ``committed - d``)."""
    for d, c in enumerate(caches):
        keep = max(committed - d, 0)
        if keep < c.offset:
            c.reset(keep)
        else:
            c.crop(keep)


class _History:
    """The target's pre-norm hidden states for the last ``keep`` positions."""

    def __init__(self, keep: int) -> None:
        self.keep, self.offset, self.h = keep, 0, None

    def append(self, h: torch.Tensor) -> None:  # h [n, d]
        self.h = h if self.h is None else torch.cat([self.h, h])
        excess = self.h.shape[0] - self.keep
        if excess > 0:
            self.h, self.offset = self.h[excess:], self.offset + excess

    def slice(self, start: int, end: int) -> torch.Tensor:
        return self.h[start - self.offset : end - self.offset][None]


class SpeculativeDecoder:
    """Lossless speculative decoding of a :class:`TargetStep` with an :class:`MTPDrafter`.

    ``before_verify(input_ids)`` is called with [x_m, drafts...] before each verify pass (the MoE
    offload uses it to prefetch the union of the experts the draft tokens need).
    """

    def __init__(
        self,
        target: TargetStep,
        drafter: MTPDrafter,
        max_draft: int = 3,
        adaptive: bool = True,
        draft_sampling: str = "greedy",
        before_verify: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        if max_draft < 0:
            raise ValueError(f"max_draft must be >= 0, got {max_draft}")
        if draft_sampling not in ("greedy", "sample"):
            raise ValueError(f"draft_sampling must be 'greedy' or 'sample', got {draft_sampling!r}")
        if max_draft > len(drafter.heads):
            log.info("drafting %d tokens with %d heads: the last head is reused", max_draft, len(drafter.heads))
        self.target, self.drafter, self.max_draft = target, drafter, max_draft
        self.adaptive, self.draft_sampling, self.before_verify = adaptive, draft_sampling, before_verify

    # -- drafting ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _draft(
        self, k: int, toks: list[int], hist: _History, caches: list[HeadKVCache], params: SamplingParams,
        gen: torch.Generator | None,
    ) -> tuple[list[int], torch.Tensor | None]:
        m = len(toks) - 1
        window = self.drafter.cfg.sliding_window
        ext = list(toks)
        qs = []
        for d in range(k):
            cache = caches[d]
            src_offset = hist.offset if d == 0 else caches[d - 1].offset
            lo = max(cache.get_seq_length(), src_offset, m - window)
            if lo > cache.get_seq_length():
                cache.reset(lo)  # a skipped or new depth restarts inside the window
            hidden = hist.slice(lo, m) if d == 0 else caches[d - 1].output_at(lo, m)
            ids = torch.tensor([ext[j + d + 1] for j in range(lo, m)])
            out = self.drafter.head_for_depth(d)(self.drafter.embed(ids)[None], hidden, torch.arange(lo, m), cache)
            logits = self.drafter.logits(d, out[0, -1])
            if params.greedy or self.draft_sampling == "greedy":
                x = int(logits.argmax())
            else:
                q = probs(logits, params)
                x = sample(q, gen)
                qs.append(q)
            ext.append(x)
        trim_head_caches(caches[:k], m)
        return ext[m + 1 :], (torch.stack(qs) if qs else None)

    # -- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[int] | torch.Tensor,
        max_new_tokens: int,
        sampling: SamplingParams | None = None,
        generator: torch.Generator | None = None,
        eos_token_id: int | Collection[int] | None = None,
    ) -> tuple[list[int], SpecStats]:
        """Decode up to ``max_new_tokens``; ``eos_token_id`` may be one id or several (any of them stops)."""
        params = sampling or SamplingParams()
        stops = _stop_set(eos_token_id)
        K = self.max_draft
        ctl = AdaptiveDraftLength(K, enabled=self.adaptive)
        t_start = time.perf_counter()
        prompt, stats, cache, hist, logits = self._prefill(prompt_ids, K)
        tok = self._pick(logits[-1], params, generator)
        toks, out = prompt + [tok], [tok]
        stats.time_prefill = time.perf_counter() - t_start
        caches = self.drafter.new_caches(max(K, 1))
        while len(out) < max_new_tokens and tok not in stops:
            k = min(ctl.choose(), max_new_tokens - len(out) - 1)
            n0 = cache.get_seq_length()
            t0 = time.perf_counter()
            drafts, q = self._draft(k, toks, hist, caches, params, generator) if k > 0 else ([], None)
            t1 = time.perf_counter()
            ids = torch.tensor([[tok] + drafts])
            if self.before_verify is not None and drafts:
                self.before_verify(ids)
            logits, h = self.target.forward(ids, cache)
            t2 = time.perf_counter()
            stats.target_forwards += 1
            if params.greedy:
                a, nxt = verify_greedy(logits, drafts)
            else:
                a, nxt = verify_sampling(probs(logits, params), drafts, q, generator)
            if a < len(drafts):
                rollback(cache, n0 + a + 1)
            hist.append(h[: a + 1])
            new = drafts[:a] + [nxt]
            # A stop token anywhere in the committed tokens ends decoding there: what follows it is dropped
            # (checking only the round's last token decoded on to the length limit).
            hit = next((i for i, t in enumerate(new) if t in stops), None)
            if hit is not None:
                new = new[: hit + 1]
            toks.extend(new)
            out.extend(new)
            tok = new[-1]
            # the round's cost after drafting: verify forward plus acceptance, rollback and bookkeeping
            ctl.update_forward(k + 1, time.perf_counter() - t1)
            stats.time_draft += t1 - t0
            stats.time_verify += t2 - t1
            if k:
                ctl.update_round(k, a, t1 - t0)
                stats.draft_rounds += 1
                stats.draft_round_tokens += a + 1
                for i in range(min(a + 1, k)):
                    stats.proposed[i] += 1
                    stats.accepted[i] += int(i < a)
            else:
                stats.plain_steps += 1
        out = out[:max_new_tokens]
        stats.new_tokens = len(out)
        stats.time_total = time.perf_counter() - t_start
        return out, stats

    def _prefill(
        self, prompt_ids: list[int] | torch.Tensor, K: int
    ) -> tuple[list[int], SpecStats, object, _History, torch.Tensor]:
        """Run the target over the prompt: the prompt ids, fresh stats, the target cache, the hidden-state
        history the heads read (long enough for ``K`` drafts) and the prompt's logits."""
        prompt = _token_list(prompt_ids)
        if not prompt:
            raise ValueError("empty prompt")
        stats = SpecStats(max_draft=K)
        cache = self.target.new_cache()
        logits, h = self.target.forward(torch.tensor([prompt]), cache)
        stats.target_forwards += 1
        hist = _History(self.drafter.cfg.sliding_window + self.drafter.cfg.draft_slack + K + 1)
        hist.append(h)
        return prompt, stats, cache, hist, logits

    @staticmethod
    def _pick(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
        return int(logits.argmax()) if params.greedy else sample(probs(logits, params), gen)


@torch.no_grad()
def generate_plain(
    target: TargetStep,
    prompt_ids: list[int] | torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingParams | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | Collection[int] | None = None,
) -> tuple[list[int], SpecStats]:
    """Plain one-token-per-forward decoding through the same target step (the reference)."""
    params = sampling or SamplingParams()
    stops = _stop_set(eos_token_id)
    prompt = _token_list(prompt_ids)
    stats = SpecStats(max_draft=0)
    t_start = time.perf_counter()
    cache = target.new_cache()
    logits, _ = target.forward(torch.tensor([prompt]), cache)
    tok = SpeculativeDecoder._pick(logits[-1], params, generator)
    out = [tok]
    stats.time_prefill = time.perf_counter() - t_start
    while len(out) < max_new_tokens and tok not in stops:
        logits, _ = target.forward(torch.tensor([[tok]]), cache)
        tok = SpeculativeDecoder._pick(logits[-1], params, generator)
        out.append(tok)
        stats.plain_steps += 1
    stats.target_forwards = stats.plain_steps + 1
    stats.new_tokens = len(out)
    stats.time_total = time.perf_counter() - t_start
    return out, stats
