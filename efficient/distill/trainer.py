"""On-policy distillation (MOPD-style) of a converted student towards its unconverted teacher(s).

Each step, for one domain (round robin over the teachers, as in multi-teacher on-policy distillation):

1. on-policy: the student samples continuations of ``batch`` prompts (batched, with the KV cache); both
   models score every position the student wrote; the loss is the per-token reverse KL
   ``KL(student || teacher)`` (a dense, token-level reward with no reward model);
2. off-policy (``mix > 0``): a window of text, teacher forced; the loss is the forward KL
   ``KL(teacher || student)``.

The step's loss is ``(1 - mix) * reverse_on_policy + mix * forward_off_policy``. Both divergences are
measured at every step on what was computed (reverse and forward KL on the student's samples, and on
the text when it is used), so a run shows whether one loss improves at the other's cost.

Every step draws from its own generator seeded by ``(seed, step)``: a resumed run (``save``/``load``)
reproduces the uninterrupted one. The same code runs on a GPU when the models are there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .losses import forward_kl, reverse_kl
from .params import freeze_all_but, restore_grad_flags
from .sampling import sample_continuations
from .state import load_state, save_state

log = logging.getLogger(__name__)

LogitsFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
# (student, teacher, batch) -> (forward KL to minimise, reverse KL measured): models with several heads
OffPolicyFn = Callable[[nn.Module, nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def causal_lm_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[B, T, V]`` of a transformers causal LM, no cache."""
    return model(input_ids=ids, use_cache=False).logits


@dataclass
class DistillConfig:
    """Settings of a healing run (saved with its state)."""

    steps: int = 100
    lr: float = 1e-3
    batch: int = 4  # sequences per step (on-policy samples, and text windows when mix > 0)
    prompt_len: int = 64  # prompt tokens before the student's own continuation
    gen_len: int = 32  # tokens the student writes per prompt
    temperature: float = 1.0  # student sampling temperature (1 = its own distribution)
    top_p: float = 1.0
    mix: float = 0.0  # weight of the off-policy forward KL (0: on-policy only, 1: off-policy only)
    text_len: int = 256  # tokens per teacher-forced text window
    warmup: int = 5  # linear learning-rate warmup steps, then cosine to 10%
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    # learning-rate multipliers by parameter-name substring (first match wins), e.g. {"_proj.weight": 0.01} trains
    # whole projections gently while sinks and gates move at the full rate
    lr_multipliers: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1] (weight of the off-policy loss), got {self.mix}")
        for name in ("steps", "batch", "prompt_len", "text_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gen_len < 1 and self.mix < 1:
            raise ValueError("gen_len must be >= 1 for on-policy distillation (mix < 1)")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _per_domain(x: Any, domains: list[str], what: str) -> dict[str, Any]:
    if isinstance(x, dict):
        missing = [d for d in domains if d not in x]
        if missing:
            raise ValueError(f"no {what} for domain(s) {missing}; give one per teacher")
        return {d: x[d] for d in domains}
    return {d: x for d in domains}


class Distiller:
    """Heal ``student`` towards ``teachers`` by training only ``params``.

    ``teachers``: one model, or ``{domain: model}`` (MOPD). ``prompts``: ``[n, >= prompt_len]`` token ids
    (or ``{domain: tensor}``), needed when ``mix < 1``. ``text``: 1-D token ids (or per domain), needed when
    ``mix > 0``; or a list of ready items (e.g. speech-LM id tensors ``[9, T]``), of which ``batch`` are
    stacked per step. ``logits_fn(model, ids)`` adapts other model interfaces (default: a causal LM's
    logits); ``offpolicy_fn(student, teacher, batch)`` replaces the off-policy loss for models with
    several output heads (e.g. the speech LM's text head and patch decoder).
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: nn.Module | dict[str, nn.Module],
        params: list[tuple[str, nn.Parameter]],
        *,
        prompts: torch.Tensor | dict[str, torch.Tensor] | None = None,
        text: torch.Tensor | dict[str, torch.Tensor] | None = None,
        config: DistillConfig | None = None,
        logits_fn: LogitsFn = causal_lm_logits,
        offpolicy_fn: OffPolicyFn | None = None,
    ) -> None:
        self.cfg = config or DistillConfig()
        if not params:
            raise ValueError("nothing to train: the parameter selection is empty")
        self.student, self.params, self.logits_fn, self.offpolicy_fn = student, params, logits_fn, offpolicy_fn
        self.teachers = teachers if isinstance(teachers, dict) else {"default": teachers}
        self.domains = sorted(self.teachers)
        cfg = self.cfg
        self.prompts = self.text = None
        if cfg.mix < 1:
            if prompts is None:
                raise ValueError("on-policy distillation (mix < 1) needs prompts")
            self.prompts = _per_domain(prompts, self.domains, "prompts")
            for d, p in self.prompts.items():
                if p.dim() != 2 or p.shape[1] < cfg.prompt_len:
                    raise ValueError(f"prompts for {d!r} must be [n, >= {cfg.prompt_len}] token ids, "
                                     f"got {tuple(p.shape)}")
        if cfg.mix > 0:
            if text is None:
                raise ValueError("off-policy distillation (mix > 0) needs text token ids")
            self.text = _per_domain(text, self.domains, "text")
            for d, t in self.text.items():
                if isinstance(t, (list, tuple)):
                    if not t:
                        raise ValueError(f"no text items for {d!r}")
                elif t.dim() != 1 or t.numel() <= cfg.text_len + 1:
                    raise ValueError(f"text for {d!r} must be 1-D with more than {cfg.text_len + 1} tokens")
        for t in self.teachers.values():
            for p in t.parameters():
                p.requires_grad_(False)
        self._saved_flags = freeze_all_but(student, params)
        groups: dict[float, list[nn.Parameter]] = {}
        for name, p in params:
            mult = next((v for k, v in cfg.lr_multipliers.items() if k in name), 1.0)
            groups.setdefault(float(mult), []).append(p)
        self.opt = torch.optim.AdamW([{"params": ps, "lr_mult": m} for m, ps in groups.items()], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0
        self.device = next(student.parameters()).device

    # -- one step -------------------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        cfg = self.cfg
        warm = min(1.0, (step + 1) / max(1, cfg.warmup))
        progress = min(1.0, step / max(1, cfg.steps))
        return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        gen = self._generator(self.step)
        domain = self.domains[self.step % len(self.domains)]
        teacher = self.teachers[domain]
        self.student.eval()  # no dropout: the student samples and is scored as it will run
        t0 = time.perf_counter()
        loss = torch.zeros((), device=self.device)
        m: dict[str, float] = {"step": self.step, "domain": self.domains.index(domain)}
        if cfg.mix < 1:
            pool = self.prompts[domain]
            rows = torch.randint(0, pool.shape[0], (cfg.batch,), generator=gen)
            prompts = pool[rows, : cfg.prompt_len]
            seq = sample_continuations(self.student, prompts, cfg.gen_len, temperature=cfg.temperature,
                                       top_p=cfg.top_p, generator=gen).to(self.device)
            p = cfg.prompt_len
            s = self.logits_fn(self.student, seq)[:, p - 1 : -1]
            with torch.no_grad():
                t = self.logits_fn(teacher, seq)[:, p - 1 : -1]
            rev = reverse_kl(s, t)
            with torch.no_grad():
                m["fwd_kl_on_policy"] = float(forward_kl(s, t))
            m["rev_kl_on_policy"] = float(rev.detach())
            loss = loss + (1 - cfg.mix) * rev
        if cfg.mix > 0:
            text = self.text[domain]
            if isinstance(text, (list, tuple)):
                rows = torch.randint(0, len(text), (cfg.batch,), generator=gen)
                x = torch.stack([text[i] for i in rows.tolist()]).to(self.device)
            else:
                starts = torch.randint(0, text.numel() - cfg.text_len, (cfg.batch,), generator=gen)
                x = torch.stack([text[i : i + cfg.text_len] for i in starts.tolist()]).to(self.device)
            if self.offpolicy_fn is not None:
                fwd, rev_text = self.offpolicy_fn(self.student, teacher, x)
                m["rev_kl_text"] = float(rev_text.detach())
            else:
                s = self.logits_fn(self.student, x)
                with torch.no_grad():
                    t = self.logits_fn(teacher, x)
                fwd = forward_kl(s, t)
                with torch.no_grad():
                    m["rev_kl_text"] = float(reverse_kl(s, t))
            m["fwd_kl_text"] = float(fwd.detach())
            loss = loss + cfg.mix * fwd
        for g in self.opt.param_groups:
            g["lr"] = self._lr(self.step) * g["lr_mult"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_([q for _, q in self.params], cfg.grad_clip))
        self.opt.step()
        m["loss"] = float(loss.detach())
        self.seconds += time.perf_counter() - t0
        self.step += 1
        self.history.append(m)
        return m

    # -- loop, state ----------------------------------------------------------------------------------
    def run(self, steps: int | None = None, *, save_dir: str | Path | None = None, save_every: int = 0,
            progress: bool = True, max_seconds: float = 0.0) -> list[dict[str, float]]:
        """Train until ``steps`` (default ``config.steps``) steps are done in total; returns the new history.

        ``save_dir`` + ``save_every``: write the state every N steps and at the end. ``max_seconds``: stop
        early (and save) after this much wall time.
        """
        from tqdm.auto import tqdm

        total = self.cfg.steps if steps is None else steps
        start = len(self.history)
        t0 = time.perf_counter()
        bar = tqdm(total=total, initial=self.step, desc="healing", unit="step", disable=not progress)
        running = None
        try:
            while self.step < total:
                m = self.train_step()
                key = "rev_kl_on_policy" if "rev_kl_on_policy" in m else "fwd_kl_text"
                running = m[key] if running is None else 0.9 * running + 0.1 * m[key]
                post = {"kl": f"{running:.4f}"}
                if "fwd_kl_text" in m and key != "fwd_kl_text":
                    post["text_kl"] = f"{m['fwd_kl_text']:.4f}"
                bar.set_postfix(post)
                bar.update(1)
                if save_dir and save_every and self.step % save_every == 0:
                    self.save(save_dir)
                if max_seconds and time.perf_counter() - t0 > max_seconds:
                    log.info("time budget reached after step %d", self.step)
                    break
        finally:
            bar.close()
        if save_dir:
            self.save(save_dir)
        return self.history[start:]

    def save(self, directory: str | Path) -> Path:
        meta = {"step": self.step, "config": asdict(self.cfg), "domains": self.domains, "seconds": self.seconds,
                "history": self.history}
        return save_state(directory, self.params, self.opt, meta)

    def load(self, directory: str | Path) -> int:
        """Restore a saved state; returns the step it continues from."""
        meta = load_state(directory, self.params, self.opt)
        saved = DistillConfig.from_dict(meta.get("config", {}))
        for key in ("mix", "batch", "prompt_len", "gen_len", "seed", "text_len"):
            if getattr(saved, key) != getattr(self.cfg, key):
                log.warning("resuming with %s=%s (the state was written with %s)", key, getattr(self.cfg, key),
                            getattr(saved, key))
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        self.seconds = float(meta.get("seconds", 0.0))
        return self.step

    def close(self) -> None:
        """Give the student its previous ``requires_grad`` flags back."""
        restore_grad_flags(self.student, self._saved_flags)


@torch.no_grad()
def kl_report(student: nn.Module, teacher: nn.Module, text: torch.Tensor, seq_len: int = 256, windows: int = 4,
              logits_fn: LogitsFn = causal_lm_logits) -> dict[str, float]:
    """Teacher-forced forward and reverse KL over the first ``windows`` windows of ``text`` (held-out check)."""
    fwd, rev = [], []
    device = next(student.parameters()).device
    for i in range(windows):
        x = text[i * seq_len : (i + 1) * seq_len]
        if x.numel() < seq_len:
            break
        s = logits_fn(student, x[None].to(device))
        t = logits_fn(teacher, x[None].to(device))
        fwd.append(float(forward_kl(s, t)))
        rev.append(float(reverse_kl(s, t)))
    if not fwd:
        raise ValueError(f"text has fewer than {seq_len} tokens")
    return {"fwd_kl": sum(fwd) / len(fwd), "rev_kl": sum(rev) / len(rev)}
