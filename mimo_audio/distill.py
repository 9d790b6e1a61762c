"""Heal a converted speech LM (LUT low-bit + sparse attention backbone) by distillation from the float one.

The speech LM has two outputs per patch: the text head and the patch decoder (8 RVQ channels). The
off-policy loss here is the forward KL on both, teacher forced on the same ``ids [B, 9, T]``: the text
head at every position, the patch decoder on every speech patch (each model's decoder fed by its own
backbone state and the true codes), channels weighted like :func:`~mimo_audio.training.speech_lm_loss`.
It plugs into :class:`efficient.distill.Distiller` as ``offpolicy_fn`` (``mix=1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .modeling import SpeechLM
from .training import PAPER_CHANNEL_WEIGHTS


def speech_kl(
    student: SpeechLM,
    teacher: SpeechLM,
    ids: torch.Tensor,
    text_weight: float = 1.0,
    channel_weights: Sequence[float] = PAPER_CHANNEL_WEIGHTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forward KL, reverse KL)`` of ``student`` to ``teacher`` on ``ids [B, 9, T]``; text and speech heads
    combined as ``(text_weight * text + speech) / (text_weight + 1)`` (speech = weighted channel mean)."""
    from efficient.distill import forward_kl, reverse_kl

    G = student.config.group_size
    s_out = student(ids)
    with torch.no_grad():
        t_out = teacher(ids)
    s_text, t_text = s_out.text_logits[:, :-1], t_out.text_logits[:, :-1]
    fwd_text, rev_text = forward_kl(s_text, t_text), reverse_kl(s_text.detach(), t_text)
    text = ids[:, 0, ::G]
    B, Tg = text.shape
    speech = text[:, 1:] == student.empty_token_id
    if not bool(speech.any()):
        return fwd_text, rev_text
    codes = ids[:, 1:, G:].reshape(B, -1, Tg - 1, G).permute(0, 2, 3, 1)[speech]  # [N, 4, 8]
    s_pd = student.patch_decoder_logits(s_out.local_hidden[:, :-1][speech], codes)
    with torch.no_grad():
        t_pd = teacher.patch_decoder_logits(t_out.local_hidden[:, :-1][speech], codes)
    w = torch.tensor(list(channel_weights), dtype=torch.float32)
    w = (w / w.sum()).tolist()
    fwd_sp = sum(wc * forward_kl(a, b) for wc, a, b in zip(w, s_pd, t_pd))
    rev_sp = sum(wc * reverse_kl(a.detach(), b) for wc, a, b in zip(w, s_pd, t_pd))
    norm = text_weight + 1.0
    return (text_weight * fwd_text + fwd_sp) / norm, (text_weight * rev_text + rev_sp) / norm


def composed_student(teacher: SpeechLM, quant: str = "w4g64", attention: str = "hysparse-1:3",
                     train_attention: str = "sparse", **attention_options):
    """A copy of ``teacher`` with the composed LUT + sparse backbone, and the parameters healing trains
    (the sparse layers' sinks, gates and projections; the backbone's low-bit group scales)."""
    import copy

    from efficient.distill import attach_quant_adapters, attention_parameters

    from .compose import compose_backbone

    student = copy.deepcopy(teacher)
    compose_backbone(student, quant=quant, attention=attention, **attention_options)
    params = attention_parameters(student, train_attention) if attention else []
    if quant:
        params += attach_quant_adapters(student, "scales")
    return student.eval(), params
