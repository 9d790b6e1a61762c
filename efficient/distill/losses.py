"""Per-token divergences between a student's and a teacher's next-token distributions.

Both are exact over the vocabulary (not single-sample estimates), so every position the student wrote
gets a dense signal: the teacher scores the whole distribution the student sampled from.

- :func:`reverse_kl` ``KL(student || teacher)``: mode seeking; the on-policy loss of MOPD (the student's
  own samples, the teacher's scores). Zero, with zero gradient, when the two distributions are equal.
- :func:`forward_kl` ``KL(teacher || student)``: mass covering; the cheap off-policy loss on
  teacher-forced text (classic distillation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def token_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per position: logits ``[..., V]`` -> ``[...]`` (computed in float32)."""
    logp = F.log_softmax(p_logits.float(), dim=-1)
    logq = F.log_softmax(q_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (masked) positions of ``KL(student || teacher)``; the teacher's logits are not differentiated."""
    return _masked_mean(token_kl(student_logits, teacher_logits.detach()), mask)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (masked) positions of ``KL(teacher || student)``."""
    return _masked_mean(token_kl(teacher_logits.detach(), student_logits), mask)
