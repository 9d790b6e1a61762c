"""Heal converted models by distillation from the unconverted one (on-policy, MOPD-style).

- :class:`Distiller` / :class:`DistillConfig`: per-token reverse KL on the student's own samples (batched,
  KV cache), optionally mixed with forward KL on teacher-forced text; one teacher or one per domain;
  resumable (safetensors + JSON), seeded, progress bar with the running KL.
- What trains (:mod:`.params`): sparse layers' sinks, gates and projections (:func:`attention_parameters`);
  group scales or LoRA over frozen low-bit codes (:func:`attach_quant_adapters`, re-packed by
  :func:`repack` so the healed model runs on the same LUT kernels).
- :class:`MTPSelfDistiller`: MTP heads trained on the target's own rollouts (:func:`target_rollouts`).
- :class:`CachedMTPTrainer`: MTP heads trained on cached hidden states of batched greedy rollouts
  (:func:`generate_rollout_shards`, :func:`load_rollout_shards`), no backbone forward per step.
- :mod:`.losses`: :func:`reverse_kl`, :func:`forward_kl`, :func:`token_kl`.
"""

from .losses import forward_kl, reverse_kl, token_kl
from .mtp import MTPSelfDistiller, head_losses, hidden_and_logits, target_rollouts
from .mtp_cached import CachedMTPTrainer, cached_head_losses
from .mtp_data import generate_rollout_shards, load_rollout_shards, rollouts_with_hidden
from .params import (
    HealableQuantLinear,
    attach_quant_adapters,
    attention_parameters,
    freeze_all_but,
    repack,
    restore_grad_flags,
)
from .sampling import sample_continuations
from .state import has_state, load_state, save_state
from .trainer import DistillConfig, Distiller, causal_lm_logits, kl_report

__all__ = [
    "CachedMTPTrainer", "cached_head_losses", "generate_rollout_shards", "load_rollout_shards",
    "rollouts_with_hidden",
    "DistillConfig", "Distiller", "HealableQuantLinear", "MTPSelfDistiller", "attach_quant_adapters",
    "attention_parameters", "causal_lm_logits", "forward_kl", "freeze_all_but", "has_state", "head_losses",
    "hidden_and_logits", "kl_report", "load_state", "repack", "restore_grad_flags", "reverse_kl",
    "sample_continuations", "save_state", "target_rollouts", "token_kl",
]
