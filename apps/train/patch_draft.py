"""Drafting speech patches: an MTP head in patch space, and how often its drafts would be accepted.

Design. At backbone position ``i`` the plain loop has just sampled patch ``i+1`` (from the patch
decoder on ``local_hidden[i]``). A *patch MTP head* reads the backbone's pre-norm hidden state ``H[i]``
and the backbone's input embedding of patch ``i+1`` (the patch encoder's output for a speech patch, the
text embedding for a text patch), runs one MTP block (:class:`efficient.spec.MTPHead`), and its output
``h'`` stands in for ``H[i+1]``: the shared final norm and text head give the draft text token, and the
shared ``hidden_states_downcast`` + patch decoder give the draft patch ``i+2`` (all 4 x 8 codes).
Verification is the backbone on [patch i+1, draft] in one forward plus the patch decoder at ``i+1``,
which must reproduce the draft exactly (greedy) or accept it by rejection sampling over the patch's 32
codes (``p/q`` of the product distribution along the delay pattern).

What decides acceptance is the patch decoder's distribution over 32 codes, so
:func:`patch_draft_agreement` measures it teacher-forced on held-out speech: for every speech patch
``i+2`` of the answer, the greedy patch under the true prefix (the target) against (a) the head's draft,
(b) ``stale``: the greedy patch predicted one step earlier (no head at all), (c) ``repeat``: a copy of
patch ``i+1``. Reported: channel-0 code agreement, whole-patch match (= greedy acceptance of a one-patch
draft) and the probability that rejection sampling at the audio preset's temperature would accept the
head's draft (``p_target(draft)`` for a greedy drafter).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mimo_audio.modeling import SpeechLM
from mimo_audio.sampling import Sampler

PATCH_MTP_FILENAME = "mtp_patch.safetensors"


class PatchDraftHead(nn.Module):
    """One MTP block over [enorm(input embedding of patch i+1); hnorm(H[i])] -> stand-in for H[i+1]."""

    def __init__(self, lm: SpeechLM, window: int = 64) -> None:
        super().__init__()
        from efficient.spec import MTPConfig, MTPHead

        self.cfg = MTPConfig.from_target(lm.config.backbone_config(), num_heads=1, sliding_window=window)
        self.block = MTPHead(self.cfg)

    def forward(self, next_embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """next_embeds, hidden ``[1, n, d]`` for positions 0..n-1 of one sequence -> ``h'`` ``[1, n, d]``."""
        return self.block(next_embeds, hidden, torch.arange(hidden.shape[1], device=hidden.device))

    @torch.no_grad()
    def init_from(self, lm: SpeechLM, hidden_rms: float) -> None:
        from efficient.spec import MTPDrafter

        drafter = MTPDrafter(self.cfg, lm.model.embed_tokens, lm.model.norm, lm.lm_head)
        drafter.init_from_target(lm.model.layers[-1], hidden_rms)
        self.block.load_state_dict(drafter.heads[0].state_dict())

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(directory) / PATCH_MTP_FILENAME
        save_file({k: v.detach().contiguous() for k, v in self.block.state_dict().items()}, str(path),
                  metadata={"mtp_config": json.dumps(asdict(self.cfg)), "format": "mimo-audio-patch-mtp-v1"})
        return path

    @classmethod
    def load(cls, lm: SpeechLM, path: str | Path) -> PatchDraftHead:
        from safetensors import safe_open

        path = Path(path)
        file = path if path.suffix == ".safetensors" else path / PATCH_MTP_FILENAME
        if not file.is_file():
            raise FileNotFoundError(f"no patch MTP head at {file} (train one with `mimo-audio train mtp-patch`)")
        with safe_open(str(file), framework="pt") as fh:
            cfg = json.loads((fh.metadata() or {}).get("mtp_config", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        head = cls(lm, window=int(cfg.get("sliding_window", 64)))
        head.block.load_state_dict(tensors, strict=True)
        return head


class HiddenCapture:
    """The backbone's pre-norm hidden state of the last forward (a hook on its final norm)."""

    def __init__(self, lm: SpeechLM) -> None:
        self.h: torch.Tensor | None = None
        self._handle = lm.model.norm.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.h = inputs[0]

    def close(self) -> None:
        self._handle.remove()


def draft_positions(ids: torch.Tensor, learn: torch.Tensor, empty_id: int) -> torch.Tensor:
    """Positions ``i`` whose patch ``i+2`` is a learned speech patch (``ids [9, T]``, ``learn [P]``)."""
    speech = ids[0, ::4] == empty_id
    ok = learn & speech
    i = torch.arange(ok.numel() - 2)
    return i[ok[2:]]


def head_local_hidden(lm: SpeechLM, head: PatchDraftHead, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """For one sequence (``embeds``, ``hidden`` ``[P, d]``): the head's h' for positions 0..P-2 -> patch-decoder
    inputs ``[P-1, local_dim]`` (row i drafts patch i+2) and the draft text logits."""
    out = head(embeds[None, 1:], hidden[None, :-1])[0]
    normed = lm.model.norm(out)
    return lm.hidden_states_downcast(normed), lm.lm_head(normed)


def _patch_logprob(lm: SpeechLM, local_hidden: torch.Tensor, codes: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """log p(codes) of whole patches under the patch decoder with ``sampler``'s filters: ``[N]``."""
    logits = lm.patch_decoder_logits(local_hidden, codes)
    total = torch.zeros(codes.shape[0])
    for c, lg in enumerate(logits):
        removed = (lm.config.speech_zeroemb_idx[c],)
        scores = sampler.filter_logits(lg, removed) if sampler.do_sample else lg.float()
        lp = F.log_softmax(scores, -1).gather(-1, codes[:, :, c].unsqueeze(-1)).squeeze(-1)  # [N, 4]
        total += lp.sum(-1)
    return total


@torch.no_grad()
def patch_draft_agreement(
    lm: SpeechLM, head: PatchDraftHead | None, examples: Iterable[tuple[torch.Tensor, torch.Tensor]],
    audio_sampler: Sampler | None = None,
) -> dict[str, dict[str, float]]:
    """Teacher-forced agreement of patch drafts with the greedy target patch, over ``(ids [9, T], learn [P])``.

    Returns per method (``head`` if given, ``stale``, ``repeat``): ``ch0_code`` (share of channel-0 codes
    equal), ``ch0_patch`` (all 4 channel-0 codes equal), ``patch`` (all 32 codes equal: greedy acceptance),
    and for the head ``p_accept_sampled`` (mean acceptance probability under ``audio_sampler``),
    ``log10_p_accept_median`` (the median log10 over drafts), ``p_accept_sampling_drafter`` (a drafter that
    samples its patch from its own patch-decoder distribution q: ``E_{x~q} min(1, p(x)/q(x))``, one draw
    per patch) and
    ``ch0_entropy`` (mean entropy in nats of the target's first channel-0 code, temperature 1).
    """
    greedy = Sampler.greedy()
    cap = HiddenCapture(lm)
    sums: dict[str, dict[str, float]] = {}
    log10s: list[float] = []
    n_total = 0
    try:
        for ids, learn in examples:
            pos = draft_positions(ids, learn, lm.empty_token_id)
            if pos.numel() == 0:
                continue
            out = lm(ids[None])
            hidden, local = cap.h[0], out.local_hidden[0]
            embeds = lm.embed(ids[None])[0]
            true = ids[1:].reshape(lm.config.audio_channels, -1, 4).permute(1, 2, 0)  # [P, 4, 8]
            target = lm.decode_patch(local[pos + 1], greedy)  # [N, 4, 8]: greedy patch i+2 under the true prefix
            drafts = {"stale": lm.decode_patch(local[pos], greedy), "repeat": true[pos + 1]}
            if head is not None:
                head_local, _ = head_local_hidden(lm, head, embeds, hidden)
                drafts["head"] = lm.decode_patch(head_local[pos], greedy)
            for name, d in drafts.items():
                s = sums.setdefault(name, {"ch0_code": 0.0, "ch0_patch": 0.0, "patch": 0.0})
                s["ch0_code"] += float((d[:, :, 0] == target[:, :, 0]).float().mean(-1).sum())
                s["ch0_patch"] += float((d[:, :, 0] == target[:, :, 0]).all(-1).float().sum())
                s["patch"] += float((d == target).flatten(1).all(-1).float().sum())
            if head is not None:
                s = sums["head"]
                sampler = audio_sampler or greedy
                lp = _patch_logprob(lm, local[pos + 1], drafts["head"], sampler)
                s["p_accept_sampled"] = s.get("p_accept_sampled", 0.0) + float(lp.exp().sum())
                log10s.extend((lp / math.log(10)).tolist())
                if sampler.do_sample:  # a sampling drafter: E_{x~q} min(1, p(x)/q(x)), one draw per patch
                    for name, q_local in (("head", head_local[pos]), ("stale", local[pos])):
                        gen = torch.Generator().manual_seed(n_total)
                        x = lm.decode_patch(q_local, sampler, gen)
                        lp_x = _patch_logprob(lm, local[pos + 1], x, sampler)
                        lq_x = _patch_logprob(lm, q_local, x, sampler)
                        acc = float((lp_x - lq_x).clamp(max=0.0).exp().sum())
                        sums[name]["p_accept_sampling_drafter"] = sums[name].get("p_accept_sampling_drafter", 0.0) + acc
                first = lm.patch_decoder_logits(local[pos + 1], target)[0][:, 0].float()
                first[:, lm.config.speech_zeroemb_idx[0]] = float("-inf")
                p = first.softmax(-1)
                ent = -(p * p.clamp_min(1e-12).log()).sum(-1)
                s["ch0_entropy"] = s.get("ch0_entropy", 0.0) + float(ent.sum())
            n_total += pos.numel()
    finally:
        cap.close()
    if not n_total:
        raise ValueError("no speech patches to draft in the examples")
    out = {name: {k: float(f"{v / n_total:.4g}") for k, v in s.items()} | {"patches": n_total}
           for name, s in sums.items()}
    if log10s:  # median: drafts outside the sampler's top-k/top-p have probability 0 (log = -inf)
        out["head"]["log10_p_accept_median"] = float(f"{sorted(log10s)[len(log10s) // 2]:.4g}")
    return out


def patch_head_loss(
    lm: SpeechLM, head: PatchDraftHead, ids: torch.Tensor, learn: torch.Tensor, hidden: torch.Tensor,
    local: torch.Tensor, text_logits: torch.Tensor, channel0_weight: float = 2.0,
) -> torch.Tensor:
    """Distillation loss of one sequence: the head's h' must make the patch decoder (teacher-forced with the
    true codes of patch i+2) and the text head behave as the backbone's real H[i+1] does."""
    embeds = lm.embed(ids[None])[0]
    head_local, head_text = head_local_hidden(lm, head, embeds, hidden)
    P = hidden.shape[0]
    text_w = learn[2:].float()  # row i drafts patch i+2
    kl_text = F.kl_div(F.log_softmax(head_text[: P - 2], -1), F.log_softmax(text_logits[1 : P - 1], -1),
                       log_target=True, reduction="none").sum(-1)
    loss = (kl_text * text_w).sum() / text_w.sum().clamp_min(1.0)
    pos = draft_positions(ids, learn, lm.empty_token_id)
    if pos.numel():
        true = ids[1:].reshape(lm.config.audio_channels, -1, 4).permute(1, 2, 0)[pos + 2]
        student = lm.patch_decoder_logits(head_local[pos], true)
        with torch.no_grad():
            teacher = lm.patch_decoder_logits(local[pos + 1], true)
        for c, (s, t) in enumerate(zip(student, teacher)):
            kl = F.kl_div(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1), log_target=True,
                          reduction="none").sum(-1).mean()
            loss = loss + (channel0_weight if c == 0 else 1.0) * kl / lm.config.audio_channels
    return loss
