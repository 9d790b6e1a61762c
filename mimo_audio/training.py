"""Training loss of the speech LM (next-patch prediction), through the same modules as generation.

For a sequence of patches ``p_0 .. p_{n-1}``, position ``t`` predicts patch ``t + 1``: its text token
from ``text_logits[t]`` and, when that patch is speech, its 4x8 codes from the patch decoder fed with
``local_hidden[t]`` (teacher forced, :meth:`SpeechLM.patch_decoder_logits`). Weights default to the
paper's: text 100, RVQ channels 12-8-6-4-2-2-1-1 (the paper reports them; how they were normalised is not
stated, so the default here divides by their sum; ``audio_weight`` scales that normalised speech loss against
the text's, e.g. 36 = the channel weights unnormalised).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .modeling import SpeechLM

PAPER_TEXT_WEIGHT = 100.0
PAPER_CHANNEL_WEIGHTS = (12.0, 8.0, 6.0, 4.0, 2.0, 2.0, 1.0, 1.0)


@dataclass
class LossOutput:
    loss: torch.Tensor  # weighted total
    text: torch.Tensor  # mean cross-entropy of the text tokens
    channels: list[torch.Tensor]  # mean cross-entropy per RVQ channel (0 when no speech target)
    text_tokens: int
    speech_patches: int
    local_hidden: torch.Tensor | None = None  # [B, T/4, local_dim]: the backbone's output (for auxiliary losses)


def speech_lm_loss(
    model: SpeechLM,
    ids: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    text_weight: float = PAPER_TEXT_WEIGHT,
    channel_weights: Sequence[float] = PAPER_CHANNEL_WEIGHTS,
    inputs: torch.Tensor | None = None,
    audio_weight: float = 1.0,
) -> LossOutput:
    """``ids [B, 9, T]``; ``target_mask [B, T/4]`` marks the patches to learn (default: all but the first).

    ``attention_mask [B, T/4]`` marks real patches (left padding = 0), as in :meth:`SpeechLM.forward`.
    ``inputs`` (same shape as ``ids``): what the model reads when it differs from the targets ``ids``, e.g. with
    some teacher-forced speech patches blanked (patch dropout).
    """
    G = model.config.group_size
    out = model(ids if inputs is None else inputs, attention_mask=attention_mask)
    text = ids[:, 0, ::G]  # [B, Tg]
    B, Tg = text.shape
    if target_mask is None:
        target_mask = torch.ones(B, Tg, dtype=torch.bool, device=ids.device)
    target = target_mask.bool().clone()
    target[:, 0] = False  # nothing predicts the first patch
    if attention_mask is not None:
        target &= attention_mask.bool()
    tgt = target[:, 1:]  # position t predicts patch t + 1
    logits = out.text_logits[:, :-1][tgt]
    text_loss = F.cross_entropy(logits.float(), text[:, 1:][tgt]) if logits.numel() else logits.sum() * 0

    speech = tgt & (text[:, 1:] == model.empty_token_id)
    channels: list[torch.Tensor] = []
    n_speech = int(speech.sum())
    if n_speech:
        codes = ids[:, 1:, G:].reshape(B, -1, Tg - 1, G).permute(0, 2, 3, 1)[speech]  # [N, 4, 8]
        per_channel = model.patch_decoder_logits(out.local_hidden[:, :-1][speech], codes)
        for c, lg in enumerate(per_channel):
            channels.append(F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), codes[:, :, c].reshape(-1)))
    else:
        channels = [text_loss * 0 for _ in range(model.config.audio_channels)]
    w = torch.tensor(list(channel_weights), dtype=torch.float32)
    audio = sum(wc * lc for wc, lc in zip((w / w.sum()).tolist(), channels))
    total = (text_weight * text_loss + audio_weight * audio) / (text_weight + audio_weight)
    return LossOutput(total, text_loss, channels, int(tgt.sum()), n_speech, out.local_hidden)
