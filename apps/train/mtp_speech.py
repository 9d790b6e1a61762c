"""Recipe: fit K MTP heads on a frozen speech LM for its text outputs (ASR and text), and measure acceptance.

Data: the corpus' text-output examples of :mod:`apps.train.lm_data` (``asr``: speech + instruction ->
transcript; ``text``: plain transcripts), rendered in the official prompt formats, codes from the audio
tokenizer the LM was trained with. Objective: self-distillation, as in :mod:`apps.train.mtp_text`:
head k at position i reads the backbone's (or head k-1's) pre-norm hidden state and the text embedding
of the id at i+k, and learns the frozen LM's next-token distribution at i+k (full-vocabulary KL: the
speech LM's text vocabulary is small), on the positions whose next patch is a learned answer token.
Heads start from the backbone's last block. Fixed seed, per-step seeded batches, progress bar,
resumable (``mtp.train.safetensors`` in ``--out``), result ``mtp.safetensors`` beside the model (or in
``--out``). At the end: acceptance per draft position and acceptance length of greedy speculative ASR
on held-out prompts (test split), with the equality to plain greedy checked on each.

    PYTHONPATH=. python -m apps.train.mtp_speech --lm runs/lm/model --corpus corpus --tokenizer runs/tok/model
    mimo-audio train mtp --lm runs/lm/model --corpus corpus --tokenizer runs/tok/model --heads 3
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from apps.train.lm_data import LMExamples, encode_corpus
from apps.train.state import load_optimizer_tensors, optimizer_tensors, progress, seed_step
from mimo_audio import formats
from mimo_audio.modeling import SpeechLM
from mimo_audio.prompts import PromptRenderer
from mimo_audio.speculative import SpeculativeText, SpeechLMTarget
from mimo_audio.text_tokenizer import SpecialTokens, load_text_tokenizer

log = logging.getLogger("mimo-audio.train")

STATE_FILENAME = "mtp.train.safetensors"
TEXT_TASKS = {"asr": 0.7, "text": 0.3}


@dataclass
class MTPTrainConfig:
    lm: str  # trained speech LM directory (official layout, with its text tokenizer)
    corpus: str
    tokenizer: str | None = None  # the audio tokenizer the LM was trained with; None = random (smoke tests)
    tokenizer_preset: str = "tiny"
    out: str | None = None  # default: the LM directory
    codes: str | None = None  # directory with cached codes-{train,test}.safetensors, only read (default: out)
    heads: int = 3
    steps: int = 300
    batch_size: int = 8
    max_patches: int = 256
    lr: float = 2e-3
    warmup: int = 20
    window: int = 128
    seed: int = 0
    save_every: int = 25
    stop_at: int | None = None
    eval_items: int = 16  # held-out ASR prompts for the acceptance measurement (0: skip)
    eval_new_patches: int = 96
    threads: int = 1  # one torch thread: on a busy 2-core machine two threads made steps ~8x slower here
    progress: bool = True


def _lr(tc: MTPTrainConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, tc.warmup))
    return tc.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, tc.steps)))))


def load_codes(tc: MTPTrainConfig, lm: SpeechLM, split: str, limit: int = 0) -> dict[str, torch.Tensor]:
    """Codes of a split's utterances. Read from ``--codes`` when a cache for the whole split is there, else
    encoded and cached in the output directory; ``limit`` > 0 encodes only that many rows (spread over the
    split), for held-out measurements on a big corpus."""
    from apps.train.data import corpus_rows, read_wav
    from apps.train.speech_lm import LMTrainConfig, load_audio_tokenizer

    rows = corpus_rows(tc.corpus, split)
    cache = Path(tc.codes or "") / f"codes-{split}.safetensors"
    if tc.codes and cache.is_file():
        with safe_open(str(cache), framework="pt") as fh:
            keys = list(fh.keys())
        if keys and not keys[0].isdigit():  # keyed by row id: any subset of the split
            ids = {r["id"] for r in rows}
            return {k: v for k, v in load_file(str(cache)).items() if k in ids}
        if len(keys) == len(rows):  # keyed by row index over the whole split (apps.train.lm_data)
            return encode_corpus(None, tc.corpus, split, cache, lm.config.audio_channels, False)
    ltc = LMTrainConfig(corpus=tc.corpus, out="", tokenizer=tc.tokenizer, tokenizer_preset=tc.tokenizer_preset,
                        seed=tc.seed)
    tok = load_audio_tokenizer(ltc, lm.device)
    out = Path(tc.out or tc.lm)
    if not limit or limit >= len(rows):
        return encode_corpus(tok, tc.corpus, split, out / f"codes-{split}.safetensors", lm.config.audio_channels,
                             tc.progress)
    subset = out / f"codes-{split}-{limit}.safetensors"
    if subset.is_file():
        return load_file(str(subset))
    picked = rows[:: max(1, len(rows) // limit)][:limit]
    codes = {r["id"]: tok.encode(read_wav(tc.corpus, r, tok.sample_rate), tok.sample_rate,
                                 n_q=lm.config.audio_channels, progress=False).cpu().contiguous() for r in picked}
    save_file(codes, str(subset))
    return codes


class _Capture:
    """Captures the backbone's pre-norm hidden state (the input of its final norm)."""

    def __init__(self, norm: torch.nn.Module) -> None:
        self.h: torch.Tensor | None = None
        self.handle = norm.register_forward_hook(lambda mod, inp, out: setattr(self, "h", inp[0]))


def head_losses(drafter, hidden: torch.Tensor, logits: torch.Tensor, text: torch.Tensor, learn: torch.Tensor):
    """Per-head KL losses and teacher-forced top-1 agreement for one unpadded row.

    hidden [n, d] (pre-norm), logits [n, V] (the frozen LM), text [n] (text row, one id per patch),
    learn [n] (True where the patch is a learned answer patch). Position j's logits predict patch j+1,
    so the loss at j counts when patch j+1 is learned.
    """
    n = hidden.shape[0]
    weight = torch.zeros(n, dtype=torch.float32)
    weight[:-1] = learn[1:].float()
    losses, agree = [], []
    prev = hidden[None]
    emb_all = drafter.embed(text)[None]
    for k in range(1, len(drafter.heads) + 1):
        m = n - k
        if m <= 0:
            break
        head = drafter.heads[k - 1]
        out = head(emb_all[:, k : k + m], prev[:, :m], torch.arange(m))
        student = drafter.logits(k - 1, out)[0]
        teacher = logits[k : k + m]
        w = weight[k : k + m]
        kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                      reduction="none").sum(-1)
        denom = w.sum().clamp_min(1.0)
        losses.append((kl * w).sum() / denom)
        hit = (student.argmax(-1) == teacher.argmax(-1)).float()
        agree.append(float((hit * w).sum() / denom))
        prev = out
    return losses, agree


def save_state(path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    """Trainable weights, AdamW moments and the step, in one safetensors file (no pickle)."""
    names = {p: f"w.{n}" for n, p in module.named_parameters()}
    tensors = {f"w.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
    tensors.update({f"opt.{k}": v for k, v in optimizer_tensors(opt, names).items()})
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step)})
    tmp.replace(path)


def load_state(path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    with safe_open(str(path), framework="pt") as fh:
        step = int(fh.metadata()["step"])
        t = {k: fh.get_tensor(k) for k in fh.keys()}
    module.load_state_dict({k[len("w."):]: v for k, v in t.items() if k.startswith("w.")})
    names = {p: f"w.{n}" for n, p in module.named_parameters()}
    load_optimizer_tensors(opt, names, {k[len("opt."):]: v for k, v in t.items() if k.startswith("opt.")})
    return step


def train_mtp(tc: MTPTrainConfig) -> dict:
    """Fit the heads (resuming from ``out/mtp.train.safetensors``); writes ``out/mtp.safetensors``."""
    from efficient.spec import MTPConfig, MTPDrafter

    if tc.heads < 1:
        raise ValueError(f"--heads must be >= 1, got {tc.heads}")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    lm_dir = Path(tc.lm)
    out = Path(tc.out or tc.lm)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    lm = SpeechLM.from_pretrained(lm_dir, dtype=torch.float32)
    lm.speech_buffer_dtype = None  # the LM recipe trains in fp32 without the bf16 buffer
    for p in lm.parameters():
        p.requires_grad_(False)
    text_tok = load_text_tokenizer(lm_dir)
    special = SpecialTokens.from_tokenizer(text_tok)
    renderer = PromptRenderer(text_tok, special, lm.config.speech_zeroemb_idx, lm.config.group_size)
    data = LMExamples(tc.corpus, "train", load_codes(tc, lm, "train"), renderer, tc.max_patches, dict(TEXT_TASKS))
    target = SpeechLMTarget(lm)
    cfg = MTPConfig.from_target(target.config, num_heads=tc.heads, sliding_window=tc.window)
    drafter = MTPDrafter(cfg, target.embed, target.final_norm, target.lm_head)
    capture = _Capture(lm.model.norm)
    G = lm.config.group_size
    with torch.no_grad():  # scale hnorm to the backbone's residual-stream RMS (warm start from the last block)
        ids, _, mask, _ = data.batch(2, np.random.default_rng(tc.seed), special.eos)
        lm(ids, attention_mask=mask)
        rms = float(capture.h[mask.bool()].pow(2).mean(-1).sqrt().median())
    drafter.init_from_target(lm.model.layers[-1], hidden_rms=rms)
    opt = torch.optim.AdamW(drafter.heads.parameters(), lr=tc.lr, weight_decay=0.0, betas=(0.9, 0.98))
    state_path = out / STATE_FILENAME
    step = load_state(state_path, drafter.heads, opt) if state_path.is_file() else 0
    if step:
        log.info("resuming MTP training from %s at step %d", state_path, step)
    end = min(tc.steps, tc.stop_at or tc.steps)
    bar = progress(tc.steps, step, f"speech MTP x{tc.heads}", tc.progress)
    history, t0, run_steps = [], time.perf_counter(), 0
    try:
        while step < end:
            rng = np.random.default_rng(seed_step(tc.seed, step))
            ids, learn, mask, _ = data.batch(tc.batch_size, rng, special.eos)
            with torch.no_grad():
                logits = lm(ids, attention_mask=mask).text_logits.float()
                hidden = capture.h
            for g in opt.param_groups:
                g["lr"] = _lr(tc, step)
            total, agree_sum = [], np.zeros(tc.heads)
            for b in range(ids.shape[0]):
                n = int(mask[b].sum())
                losses, agree = head_losses(drafter, hidden[b, -n:], logits[b, -n:], ids[b, 0, ::G][-n:],
                                            learn[b, -n:])
                total.extend(losses)
                agree_sum[: len(agree)] += agree
            loss = sum(total) / ids.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(drafter.heads.parameters(), 1.0)
            opt.step()
            step += 1
            run_steps += 1
            agree = (agree_sum / ids.shape[0]).round(3).tolist()
            loss_value = float(loss.detach())
            history.append({"step": step, "loss": round(loss_value, 4), "agree": agree})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", agree="/".join(f"{a:.2f}" for a in agree))
            if step % tc.save_every == 0 or step == end:
                save_state(state_path, drafter.heads, opt, step)
    finally:
        bar.close()
        capture.handle.remove()
    path = drafter.save(out)
    state = {"step": step, "heads": tc.heads, "mtp": str(path), "history": history,
             "seconds_per_step": round((time.perf_counter() - t0) / max(1, run_steps), 3)}
    if tc.eval_items and step >= tc.steps:
        test = LMExamples(tc.corpus, "test", load_codes(tc, lm, "test", limit=2 * tc.eval_items), renderer,
                          tc.max_patches, dict(TEXT_TASKS))
        speculative = SpeculativeText(target, drafter)
        state["eval"] = acceptance_on_asr(speculative, test, renderer, special, tc.eval_items,
                                          list(range(1, tc.heads + 1)), tc.eval_new_patches)
        log.info("held-out ASR acceptance: %s", state["eval"])
    target.close()
    (out / "mtp.train.json").write_text(json.dumps({**state, "config": asdict(tc)}))
    return state


def asr_prompts(data: LMExamples, renderer: PromptRenderer, items: int) -> list[tuple[torch.Tensor, str]]:
    """The first ``items`` utterances of a split as rendered ASR prompts ``[9, T]`` with their transcripts."""
    stride = max(1, len(data.rows) // max(1, items))  # spread over the split's voices and styles
    rows = data.rows[::stride][:items]
    return [(renderer.render(formats.asr(data.codes[r["id"]])), r["text"]) for r in rows]


@torch.no_grad()
def acceptance_on_asr(speculative: SpeculativeText, data: LMExamples, renderer: PromptRenderer,
                      special: SpecialTokens, items: int, draft_lengths: list[int], max_new: int = 96) -> dict:
    """Greedy speculative ASR on held-out prompts, per draft length K: acceptance per position, acceptance
    length, tokens per backbone forward, equality with plain greedy (run once per prompt)."""
    from mimo_audio.generation import GenerationConfig

    cfg = GenerationConfig(max_new_patches=max_new, stop_tokens=(special.eos, special.im_end),
                           suppress_tokens=(special.empty, special.sostm))
    prompts = asr_prompts(data, renderer, items)
    refs = [speculative.generate_plain(p, cfg)[0].text_ids for p, _ in prompts]
    out = {}
    for k in draft_lengths:
        proposed, accepted = [0] * k, [0] * k
        rounds = tokens = fwd = new = 0
        equal = True
        for (prompt, _), ref in zip(prompts, refs):
            res, st = speculative.generate(prompt, cfg, max_draft=k, adaptive=False)
            equal &= res.text_ids == ref
            proposed = [a + b for a, b in zip(proposed, st.proposed)]
            accepted = [a + b for a, b in zip(accepted, st.accepted)]
            rounds, tokens = rounds + st.draft_rounds, tokens + st.draft_round_tokens
            fwd, new = fwd + st.target_forwards, new + st.new_tokens
        out[f"K={k}"] = {
            "prompts": len(prompts),
            "accept_per_position": [round(a / p, 3) if p else None for a, p in zip(accepted, proposed)],
            "accept_length": round(tokens / rounds, 3) if rounds else None,
            "tokens_per_forward": round(new / fwd, 3) if fwd else None,
            "greedy_equal": bool(equal),
        }
    return out


_INT = ("heads", "steps", "batch_size", "max_patches", "warmup", "window", "seed", "save_every", "eval_items",
        "eval_new_patches", "threads")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = MTPTrainConfig(lm="", corpus="")
    p.add_argument("--lm", required=True, help="trained speech LM directory (frozen)")
    p.add_argument("--corpus", required=True, help="corpus directory (mimo-audio corpus build --out DIR)")
    p.add_argument("--tokenizer", default=None, help="the audio tokenizer the LM was trained with")
    p.add_argument("--tokenizer-size", "--tokenizer-preset", dest="tokenizer_preset", default=d.tokenizer_preset,
                   choices=["tiny", "small"], help="random tokenizer of this size when --tokenizer is not given "
                   "(smoke tests only; --tokenizer-preset is the old spelling)")
    p.add_argument("--out", default=None, help="where mtp.safetensors goes (default: the LM directory)")
    p.add_argument("--codes", default=None,
                   help="directory with cached codes-train/test.safetensors of the LM run (only read; "
                        "missing splits are encoded into --out)")
    for name in _INT:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--stop-at", type=int, default=None, help="stop at this step (resumable; schedule keeps --steps)")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> MTPTrainConfig:
    names = ("lm", "corpus", "tokenizer", "tokenizer_preset", "out", "codes", "lr", "stop_at", *_INT)
    return MTPTrainConfig(**{n: getattr(args, n) for n in names}, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = train_mtp(config_from_args(p.parse_args(argv)))
    print(json.dumps({k: v for k, v in state.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
