"""Recipe: fit a patch MTP head (speech-patch drafting) on a frozen speech LM and measure its acceptance.

Data: TTS examples of the corpus (official instruct-TTS prompt -> stream of text chunks and speech
patches). The head (:class:`apps.train.patch_draft.PatchDraftHead`) learns to stand in for the backbone's
next hidden state: KL of the text head, and KL of the patch decoder teacher-forced with the true codes
of the patch it drafts (channel 0 weighted x2). Fixed seed, seeded batches, progress bar, resumable
(``mtp_patch.train.safetensors``), result ``mtp_patch.safetensors``. Before and after training, the
teacher-forced agreement on held-out TTS prompts (test split) is measured against two no-training
baselines (see :func:`apps.train.patch_draft.patch_draft_agreement`).

    PYTHONPATH=. python -m apps.train.mtp_patch --lm runs/lm/model --corpus corpus --tokenizer runs/tok/model
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from apps.train.lm_data import LMExamples
from apps.train.mtp_speech import MTPTrainConfig, load_codes, load_state, save_state
from apps.train.patch_draft import HiddenCapture, PatchDraftHead, patch_draft_agreement, patch_head_loss
from apps.train.state import progress, seed_step
from mimo_audio import formats
from mimo_audio.modeling import SpeechLM
from mimo_audio.prompts import PromptRenderer, Stream, Text
from mimo_audio.sampling import get_preset
from mimo_audio.text_tokenizer import SpecialTokens, load_text_tokenizer

log = logging.getLogger("mimo-audio.train")

STATE_FILENAME = "mtp_patch.train.safetensors"


@dataclass
class PatchTrainConfig:
    lm: str
    corpus: str
    tokenizer: str | None = None
    tokenizer_preset: str = "tiny"
    out: str | None = None
    codes: str | None = None
    steps: int = 200
    batch_size: int = 4
    max_patches: int = 256
    lr: float = 2e-3
    window: int = 64
    seed: int = 0
    save_every: int = 25
    stop_at: int | None = None
    eval_items: int = 16
    threads: int = 1
    progress: bool = True


def tts_examples(data: LMExamples, items: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rendered TTS examples ``(ids [9, T], learn [P])`` of the first ``items`` plain rows (spread)."""
    rows = data.plain[:: max(1, len(data.plain) // max(1, items))][:items]
    out = []
    for r in rows:
        prompt = formats.tts(r["text"])
        answer = [Stream(formats.normalize_case(r["text"]), data.codes[r["id"]]), Text(formats.IM_END)]
        out.append(data._render(prompt[:-1], answer))
    return out


def train_patch_head(tc: PatchTrainConfig) -> dict:
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out = Path(tc.out or tc.lm)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    lm = SpeechLM.from_pretrained(tc.lm, dtype=torch.float32)
    lm.speech_buffer_dtype = None
    for p in lm.parameters():
        p.requires_grad_(False)
    text_tok = load_text_tokenizer(tc.lm)
    special = SpecialTokens.from_tokenizer(text_tok)
    renderer = PromptRenderer(text_tok, special, lm.config.speech_zeroemb_idx, lm.config.group_size)
    codes_cfg = MTPTrainConfig(lm=tc.lm, corpus=tc.corpus, tokenizer=tc.tokenizer,
                               tokenizer_preset=tc.tokenizer_preset, out=str(out), codes=tc.codes, seed=tc.seed,
                               progress=tc.progress)
    train = LMExamples(tc.corpus, "train", load_codes(codes_cfg, lm, "train"), renderer, tc.max_patches,
                       {"tts": 1.0})
    test = LMExamples(tc.corpus, "test", load_codes(codes_cfg, lm, "test", limit=4 * tc.eval_items), renderer,
                      tc.max_patches, {"tts": 1.0}) if tc.eval_items else None
    audio_sampler = get_preset(formats.TASKS["tts"].preset).audio
    head = PatchDraftHead(lm, window=tc.window)
    cap = HiddenCapture(lm)
    with torch.no_grad():
        ids, _, mask, _ = train.batch(2, np.random.default_rng(tc.seed), special.eos)
        lm(ids, attention_mask=mask)
        rms = float(cap.h[mask.bool()].pow(2).mean(-1).sqrt().median())
    head.init_from(lm, rms)
    state: dict = {}
    if test is not None:
        state["before"] = patch_draft_agreement(lm, head, tts_examples(test, tc.eval_items), audio_sampler)
        log.info("patch drafting before training: %s", state["before"])
    opt = torch.optim.AdamW(head.parameters(), lr=tc.lr, weight_decay=0.0, betas=(0.9, 0.98))
    state_path = out / STATE_FILENAME
    step = load_state(state_path, head, opt) if state_path.is_file() else 0
    end = min(tc.steps, tc.stop_at or tc.steps)
    bar = progress(tc.steps, step, "patch MTP head", tc.progress)
    history, t0, run_steps = [], time.perf_counter(), 0
    try:
        while step < end:
            rng = np.random.default_rng(seed_step(tc.seed, step))
            ids, learn, mask, _ = train.batch(tc.batch_size, rng, special.eos)
            with torch.no_grad():
                res = lm(ids, attention_mask=mask)
                hidden = cap.h
            lr = tc.lr * min(1.0, (step + 1) / 10) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / tc.steps)))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = 0.0
            for b in range(ids.shape[0]):
                n = int(mask[b].sum())
                loss = loss + patch_head_loss(lm, head, ids[b, :, -4 * n :], learn[b, -n:], hidden[b, -n:],
                                              res.local_hidden[b, -n:], res.text_logits[b, -n:].float())
            loss = loss / ids.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            step += 1
            run_steps += 1
            value = float(loss.detach())
            history.append({"step": step, "loss": round(value, 4)})
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            if step % tc.save_every == 0 or step == end:
                save_state(state_path, head, opt, step)
    finally:
        bar.close()
        cap.close()
    path = head.save(out)
    state.update({"step": step, "mtp_patch": str(path), "history": history,
                  "seconds_per_step": round((time.perf_counter() - t0) / max(1, run_steps), 3)})
    if test is not None and step >= tc.steps:
        state["after"] = patch_draft_agreement(lm, head, tts_examples(test, tc.eval_items), audio_sampler)
        log.info("patch drafting after training: %s", state["after"])
    (out / "mtp_patch.train.json").write_text(json.dumps({**state, "config": asdict(tc)}))
    return state


_INT = ("steps", "batch_size", "max_patches", "window", "seed", "save_every", "eval_items", "threads")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = PatchTrainConfig(lm="", corpus="")
    p.add_argument("--lm", required=True, help="trained speech LM directory (frozen)")
    p.add_argument("--corpus", required=True, help="corpus directory")
    p.add_argument("--tokenizer", default=None, help="the audio tokenizer the LM was trained with")
    p.add_argument("--tokenizer-size", "--tokenizer-preset", dest="tokenizer_preset", default=d.tokenizer_preset,
                   choices=["tiny", "small"], help="random tokenizer of this size when --tokenizer is not given "
                   "(smoke tests only; --tokenizer-preset is the old spelling)")
    p.add_argument("--out", default=None, help="where mtp_patch.safetensors goes (default: the LM directory)")
    p.add_argument("--codes", default=None, help="directory with cached codes-train/test.safetensors")
    for name in _INT:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--stop-at", type=int, default=None, help="stop at this step (resumable)")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> PatchTrainConfig:
    names = ("lm", "corpus", "tokenizer", "tokenizer_preset", "out", "codes", "lr", "stop_at", *_INT)
    return PatchTrainConfig(**{n: getattr(args, n) for n in names}, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = train_patch_head(config_from_args(p.parse_args(argv)))
    print(json.dumps({k: v for k, v in state.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
