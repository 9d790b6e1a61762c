"""A short healing fine-tune of a converted model's new parameters (CPU friendly).

Only the sinks, the gates and (optionally) the sparse layers' window projections train; every other weight
stays frozen. With a ``teacher`` (the original model) the loss is the KL divergence to its next-token
distribution, so healing pulls the converted model back towards the original rather than towards the
healing text; without one it is plain next-token cross-entropy.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .convert import new_parameters

log = logging.getLogger(__name__)


def heal(
    model: nn.Module,
    token_ids: torch.Tensor,
    *,
    teacher: nn.Module | None = None,
    steps: int = 20,
    seq_len: int = 512,
    lr: float = 2e-3,
    include_window_projections: bool = True,
    progress: bool = True,
    seed: int = 0,
) -> list[float]:
    """Fine-tune the new parameters of ``model`` (a converted ``*ForCausalLM``) on ``token_ids`` (1-D).

    Returns the loss of every step. ``steps`` random windows of ``seq_len`` tokens are drawn from the text.
    """
    if not hasattr(model, "lm_head"):
        raise ValueError("heal needs a causal LM with an lm_head (convert the *ForCausalLM, not the bare backbone)")
    token_ids = token_ids.flatten()
    if token_ids.numel() <= seq_len + 1:
        raise ValueError(f"healing text has {token_ids.numel()} tokens; need more than seq_len+1 = {seq_len + 1}")
    params = new_parameters(model, include_window_projections)
    if not params:
        raise ValueError("the model has no new attention parameters to heal (layout 'full'?)")
    trainable = {id(p) for _, p in params}
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses: list[float] = []
    bar = tqdm(range(steps), desc="healing", disable=not progress)
    try:
        for _ in bar:
            start = int(torch.randint(0, token_ids.numel() - seq_len - 1, (1,), generator=gen))
            x = token_ids[start : start + seq_len][None].to(device)
            logits = model(input_ids=x, use_cache=False).logits.float()
            if teacher is not None:
                with torch.no_grad():
                    target = torch.log_softmax(teacher(input_ids=x, use_cache=False).logits.float(), -1)
                loss = F.kl_div(torch.log_softmax(logits, -1), target, log_target=True, reduction="batchmean") / seq_len
            else:
                y = token_ids[start + 1 : start + seq_len + 1][None].to(device)
                loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])
    log.info("healing: %d steps, loss %.4f -> %.4f", steps, losses[0], losses[-1])
    return losses
