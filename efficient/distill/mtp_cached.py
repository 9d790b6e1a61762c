"""MTP heads trained on cached target hidden states: no backbone forward per step.

Data (from :mod:`.mtp_data`): per row, tokens ``x``, the target's pre-norm hidden states ``h`` and the
target's top-1 ``a`` at every position. Head ``k`` (1-based) at position ``i`` reads head ``k-1``'s output at
``i`` (head 1: ``h_i``) and the embedding of ``x_{i+k}``, and is trained to output ``a_{i+k}``: the token the
target writes after ``x_{..i+k}``, which is what the speculative decoder checks a draft against. On the
generated part of a rollout that is the next token; on the prompt part it is the target's greedy choice on
text. A step costs the K small heads plus an output layer restricted to a draft vocabulary (the tokens the
target actually writes, most frequent first), so thousands of steps fit in minutes where a backbone pass per
step would take hours.

The drafter keeps the restricted vocabulary (``draft_vocab``, saved with the heads): drafting then also
computes only those logits. Verification uses the target's full vocabulary, so output is unchanged.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F

from .mtp import HeadTrainer, chained_head_logits

log = logging.getLogger(__name__)


def frequent_vocab(labels: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """The ``size`` most frequent ids of ``labels`` (sorted ids) and the fraction of labels they cover."""
    ids, counts = torch.unique(labels.flatten().long(), return_counts=True)
    order = counts.argsort(descending=True)[:size]
    cover = float(counts[order].sum()) / labels.numel()
    return ids[order].sort().values, cover


def cached_head_losses(drafter, tokens: torch.Tensor, hidden: torch.Tensor, labels: torch.Tensor,
                       vocab: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[float]]:
    """Per-head cross-entropy to the target's top-1 ``k`` positions ahead and top-1 agreement.

    ``tokens``/``labels [B, L]`` (int), ``hidden [B, L, d]``. With ``vocab`` (sorted ids), logits are
    computed for those ids only and positions whose label lies outside are left out of the loss (they count
    as misses in the agreement).
    """
    lm = drafter._shared["lm_head"].weight
    if vocab is not None:
        lm = lm[vocab]
        pos = torch.searchsorted(vocab, labels.long()).clamp_max(vocab.numel() - 1)
        target = torch.where(vocab[pos] == labels.long(), pos, torch.full_like(pos, -100))
    else:
        target = labels.long()
    tokens = tokens.long()
    losses, agree = [], []
    for k, n, logits in chained_head_logits(drafter, tokens, hidden, lm):
        t = target[:, k : k + n]
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=-100))
        agree.append(float((logits.argmax(-1) == t).float().mean()))
    return losses, agree


class CachedMTPTrainer(HeadTrainer):
    """Train ``drafter``'s heads on cached rollouts ``data`` (``tokens``, ``labels``, ``hidden``).

    ``vocab_size`` > 0 restricts the output layer to that many of the most frequent labels and stores them as
    the drafter's ``draft_vocab``. ``bf16`` runs the heads under bfloat16 autocast (CPU matrix units).
    Resumable (``save``/``load``), seeded per step, cosine learning rate after a linear warm-up.
    """

    kind = "mtp-cached"
    desc = "MTP heads on cached states"

    def __init__(self, drafter, data: dict[str, torch.Tensor], *, lr: float = 2e-3, batch: int = 16,
                 steps: int = 1000, seed: int = 0, warmup: int = 20, vocab_size: int = 8192,
                 window: int = 0, bf16: bool = False, holdout: int = 0) -> None:
        tokens = data["tokens"]
        if tokens.dim() != 2 or tokens.shape[1] < len(drafter.heads) + 2:
            raise ValueError(f"tokens must be [n, L > heads + 1], got {tuple(tokens.shape)}")
        if data["hidden"].shape[:2] != tokens.shape or data["labels"].shape != tokens.shape:
            raise ValueError("tokens, labels and hidden must cover the same [rows, positions]")
        self.drafter, self.data = drafter, data
        self.lr, self.batch, self.steps, self.seed, self.warmup = lr, batch, steps, seed, warmup
        self.window = window or tokens.shape[1]
        self.bf16 = bf16
        n = tokens.shape[0]
        self.holdout = min(holdout, n // 2)  # the last rows: teacher-forced agreement not trained on
        self.train_rows = n - self.holdout
        if vocab_size:
            vocab, cover = frequent_vocab(data["labels"][: self.train_rows], vocab_size)
            drafter.draft_vocab = vocab
            log.info("draft vocabulary: %d ids cover %.1f%% of the training labels", vocab.numel(), 100 * cover)
        self.vocab = drafter.draft_vocab
        self.params = [(f"heads.{n}", p) for n, p in drafter.heads.named_parameters()]
        for _, p in self.params:
            p.requires_grad_(True)
        for mod in drafter._shared.values():
            for p in mod.parameters():
                p.requires_grad_(False)
        self.opt = torch.optim.AdamW([p for _, p in self.params], lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0

    def _batch(self, gen: torch.Generator, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        L, w = self.data["tokens"].shape[1], self.window
        start = int(torch.randint(0, L - w + 1, (1,), generator=gen)) if w < L else 0
        sl = slice(start, start + w)
        return (self.data["tokens"][rows, sl], self.data["hidden"][rows, sl].float(), self.data["labels"][rows, sl])

    def _losses(self, tokens, hidden, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return cached_head_losses(self.drafter, tokens, hidden, labels, self.vocab)

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        rows = torch.randint(0, self.train_rows, (self.batch,), generator=gen)
        warm = min(1.0, (self.step + 1) / max(1, self.warmup))
        lr = self.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, self.step / max(1, self.steps)))))
        for g in self.opt.param_groups:
            g["lr"] = lr
        losses, agree = self._losses(*self._batch(gen, rows))
        loss = sum(losses)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.params], 1.0)
        self.opt.step()
        m = {"step": self.step, "loss": float(loss.detach()), "lr": lr,
             **{f"agree{k + 1}": a for k, a in enumerate(agree)}}
        self.step += 1
        self.seconds += time.perf_counter() - t0
        self.history.append(m)
        return m

    @torch.no_grad()
    def evaluate(self, rows: int = 64) -> dict[str, float]:
        """Teacher-forced loss and per-head agreement on the held-out rows (or the first training rows)."""
        idx = (torch.arange(self.train_rows, self.train_rows + self.holdout) if self.holdout
               else torch.arange(min(rows, self.train_rows)))[:rows]
        tokens, hidden, labels = (self.data["tokens"][idx], self.data["hidden"][idx].float(), self.data["labels"][idx])
        losses, agree = self._losses(tokens, hidden, labels)
        return {"loss": float(sum(losses)), **{f"agree{k + 1}": a for k, a in enumerate(agree)}}
