"""MTP heads trained on the target's own outputs (self-distillation), which is what acceptance measures.

Speculative decoding accepts a draft when it equals what the target would write. So the heads are fitted
on *rollouts of the target itself* (greedy continuations of prompts, batched with the KV cache), and
head ``k`` at position ``i`` is trained to reproduce the target's next-token distribution at ``i + k``
(KL over the union of the target's top candidates in the batch and the tokens, which keeps a 49k-wide
LM head affordable on a CPU). On the target's greedy rollouts the target's top-1 at every generated
position is exactly the next token, so the heads learn the sequences they will be asked to draft.

Resumable like :class:`~efficient.distill.trainer.Distiller` (``save``/``load``), seeded per step.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .sampling import sample_continuations
from .state import load_state, save_state

log = logging.getLogger(__name__)


@torch.no_grad()
def target_rollouts(model: nn.Module, prompts: torch.Tensor, new_tokens: int, batch: int = 8,
                    progress: bool = False) -> torch.Tensor:
    """Greedy continuations of every prompt row, ``[n, P + new_tokens]`` (the target's own outputs)."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, prompts.shape[0], batch), desc="target rollouts", disable=not progress):
        out.append(sample_continuations(model, prompts[i : i + batch], new_tokens, temperature=0.0).cpu())
    return torch.cat(out)


def final_norm(model: nn.Module) -> nn.Module:
    """The target's final norm module: MTP heads read its input (the pre-norm hidden state)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise ValueError(f"{type(model).__name__}: cannot find the final norm (expected `.model.norm`)")
    return norm


@torch.no_grad()
def hidden_and_logits(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's pre-final-norm hidden states ``[B, L, d]`` (what MTP heads read) and logits."""
    captured = {}
    hook = final_norm(model).register_forward_hook(lambda _m, inp, _o: captured.__setitem__("h", inp[0]))
    try:
        logits = model(input_ids=ids, use_cache=False).logits
    finally:
        hook.remove()
    return captured["h"], logits


def head_losses(drafter, hidden: torch.Tensor, target_logits: torch.Tensor, tokens: torch.Tensor,
                top: int = 32) -> tuple[list[torch.Tensor], list[float]]:
    """Per-head KL to the target's distribution ``k`` positions ahead, and teacher-forced top-1 agreement."""
    cand = torch.unique(torch.cat([target_logits.topk(top, dim=-1).indices.flatten(), tokens.flatten()]))
    lm = drafter._shared["lm_head"].weight[cand]
    tc = target_logits[..., cand].float()
    losses, agree = [], []
    for k, n, logits in chained_head_logits(drafter, tokens, hidden, lm):
        target = tc[:, k : k + n]
        kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target, -1), log_target=True, reduction="none")
        losses.append(kl.sum(-1).mean())
        agree.append(float((logits.argmax(-1) == target.argmax(-1)).float().mean()))
    return losses, agree


def chained_head_logits(drafter, tokens: torch.Tensor, hidden: torch.Tensor, lm: torch.Tensor):
    """Teacher-forced heads over a batch: yields ``(k, n, logits [B, n, V'])`` for head k = 1.., where head k at
    position i reads head k-1's output at i (head 1: the target's ``hidden``) and the embedding of token i + k,
    and ``lm`` holds the output rows (the full head or a draft vocabulary's)."""
    L = hidden.shape[1]
    prev = hidden
    for k in range(1, len(drafter.heads) + 1):
        n = L - k
        if n < 1:
            return
        head = drafter.heads[k - 1]
        out = head(drafter.embed(tokens[:, k : k + n]), prev[:, :n], torch.arange(n, device=hidden.device))
        norm = head.final_norm if head.final_norm is not None else drafter._shared["final_norm"]
        yield k, n, F.linear(norm(out), lm).float()
        prev = out


class HeadTrainer:
    """The loop, saving and loading shared by the MTP head trainers: a subclass sets ``kind`` and ``desc`` and
    has ``train_step()`` (and, for ``eval_every``, ``evaluate()``), ``params``, ``opt``, ``step``, ``history``,
    ``seconds``, ``lr``, ``batch``, ``steps`` and ``seed``."""

    kind = "mtp"
    desc = "MTP heads"

    def run(self, steps: int | None = None, *, save_dir: str | Path | None = None, save_every: int = 0,
            progress: bool = True, max_seconds: float = 0.0, eval_every: int = 0) -> list[dict[str, float]]:
        from tqdm.auto import tqdm

        total = self.steps if steps is None else steps
        start, t0 = len(self.history), time.perf_counter()
        bar = tqdm(total=total, initial=self.step, desc=self.desc, unit="step", disable=not progress)
        try:
            while self.step < total:
                m = self.train_step()
                bar.set_postfix(loss=f"{m['loss']:.3f}",
                                agree="/".join(f"{v:.2f}" for k, v in m.items() if k.startswith("agree")))
                bar.update(1)
                if eval_every and self.step % eval_every == 0:
                    m["heldout"] = self.evaluate()
                    log.info("step %d held-out %s", self.step, m["heldout"])
                if save_dir and save_every and self.step % save_every == 0:
                    self.save(save_dir)
                if max_seconds and time.perf_counter() - t0 > max_seconds:
                    break
        finally:
            bar.close()
        if save_dir:
            self.save(save_dir)
        return self.history[start:]

    def save(self, directory: str | Path) -> Path:
        meta = {"step": self.step, "kind": self.kind, "lr": self.lr, "batch": self.batch, "steps": self.steps,
                "seed": self.seed, "seconds": self.seconds, "history": self.history}
        return save_state(directory, self.params, self.opt, meta)

    def load(self, directory: str | Path) -> int:
        meta = load_state(directory, self.params, self.opt)
        self.step, self.history = int(meta["step"]), list(meta.get("history", []))
        self.seconds = float(meta.get("seconds", 0.0))
        return self.step


class MTPSelfDistiller(HeadTrainer):
    """Train ``drafter``'s heads on ``sequences`` (rows of the target's own rollouts) against ``model``."""

    kind = "mtp"
    desc = "MTP self-distillation"

    def __init__(self, model: nn.Module, drafter, sequences: torch.Tensor, *, lr: float = 1e-3, batch: int = 4,
                 steps: int = 200, seed: int = 0, warmup: int = 10, top: int = 32) -> None:
        if sequences.dim() != 2 or sequences.shape[1] < len(drafter.heads) + 2:
            raise ValueError(f"sequences must be [n, L > heads + 1], got {tuple(sequences.shape)}")
        self.model, self.drafter, self.sequences = model, drafter, sequences
        self.lr, self.batch, self.steps, self.seed, self.warmup, self.top = lr, batch, steps, seed, warmup, top
        for p in model.parameters():
            p.requires_grad_(False)
        self.params = [(f"heads.{n}", p) for n, p in drafter.heads.named_parameters()]
        for _, p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW([p for _, p in self.params], lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        rows = torch.randint(0, self.sequences.shape[0], (self.batch,), generator=gen)
        device = next(self.model.parameters()).device
        tokens = self.sequences[rows].to(device)
        hidden, logits = hidden_and_logits(self.model, tokens)
        warm = min(1.0, (self.step + 1) / max(1, self.warmup))
        lr = self.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, self.step / max(1, self.steps)))))
        for g in self.opt.param_groups:
            g["lr"] = lr
        losses, agree = head_losses(self.drafter, hidden, logits, tokens, self.top)
        loss = sum(losses)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.params], 1.0)
        self.opt.step()
        m = {"step": self.step, "loss": float(loss.detach()), **{f"agree{k + 1}": a for k, a in enumerate(agree)}}
        self.step += 1
        self.seconds += time.perf_counter() - t0
        self.history.append(m)
        return m
