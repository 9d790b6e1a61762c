"""Recipe: train a MiMo-Audio speech LM (the official architecture, a smaller preset) from scratch.

Data: corpus utterances tokenised by an audio tokenizer (a trained one, ``--tokenizer DIR``, or random
weights of a preset for smoke tests), rendered as TTS, ASR, speech continuation, few-shot speech-to-speech
and plain-text examples in the official prompt formats (:mod:`apps.train.lm_data`). Loss: the next-patch
loss of :func:`mimo_audio.training.speech_lm_loss` (text + teacher-forced RVQ channels) on answer patches.
The text tokenizer is byte-level (256 bytes + the MiMo-Audio special tokens). MTP heads: not yet.

    PYTHONPATH=. python -m apps.train.speech_lm --corpus corpus-small --tokenizer runs/tok/model --out runs/lm
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

from apps.train.lm_data import LMExamples, encode_corpus
from apps.train.state import (
    load_optimizer_tensors,
    progress,
    read_optimizer,
    read_state,
    resolve_device,
    save_checkpoint,
    seed_step,
)
from mimo_audio.config import SpeechLMConfig
from mimo_audio.modeling import SpeechLM
from mimo_audio.prompts import PromptRenderer
from mimo_audio.text_tokenizer import SpecialTokens, load_text_tokenizer
from mimo_audio.text_vocab import make_byte_text_tokenizer
from mimo_audio.training import speech_lm_loss

log = logging.getLogger("mimo-audio.train")

# The embedded default's LM: the official layout (Qwen2 backbone, 4-frame patches, 8 RVQ channels with the
# official vocabularies, delay-pattern patch decoder) at a CPU-trainable size, with a byte-level vocabulary.
SMALL = dict(
    vocab_size=320, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, max_position_embeddings=2048, local_dim=128, local_layers=2,
    local_attn_heads=4, local_ffn_dim=384, input_local_layers=2, input_local_dim=128,
)


def lm_config(preset: str) -> SpeechLMConfig:
    if preset == "small":
        return SpeechLMConfig(**SMALL)
    if preset == "tiny":
        return SpeechLMConfig.named("tiny")
    raise ValueError(f"unknown LM training preset {preset!r}; choose 'small' or 'tiny'")


@dataclass
class LMTrainConfig:
    corpus: str
    out: str
    tokenizer: str | None = None  # trained tokenizer directory; None = random weights of tokenizer_preset
    tokenizer_preset: str = "tiny"
    preset: str = "small"
    steps: int = 2000
    batch_size: int = 8
    max_patches: int = 256
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    stop_at: int | None = None  # end this invocation at this step (resume later); the schedule keeps `steps`
    save_every: int = 200
    log_every: int = 10
    device: str | None = None
    progress: bool = True
    eval_items: int = 8  # held-out examples per task for the final test-split loss (0: skip)
    max_sentences: int | None = None  # train on the utterances of this many sentences (all their voices)
    eval_sentences: int = 12  # test-split sentences for the held-out loss
    bf16: bool = False  # bf16 autocast for the matmuls (fp32 weights and losses): ~1.5x on AVX512-BF16 CPUs


def _lr(tc: LMTrainConfig, step: int) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    frac = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def load_audio_tokenizer(tc: LMTrainConfig, device: torch.device):
    from apps.train.tokenizer import TRAIN_PRESETS
    from tokenizer import AudioTokenizer
    from tokenizer.config import TokenizerConfig

    if tc.tokenizer:
        return AudioTokenizer.from_pretrained(tc.tokenizer, device=device)
    log.warning("no --tokenizer: codes come from a RANDOM %s tokenizer (a smoke test, not a model)",
                tc.tokenizer_preset)
    return AudioTokenizer.from_config(TokenizerConfig.from_dict(dict(TRAIN_PRESETS[tc.tokenizer_preset])),
                                      seed=tc.seed, device=device)


def _optimizer(model: SpeechLM, tc: LMTrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups,
                             lr=tc.lr, betas=(0.9, 0.95))


def prepare(tc: LMTrainConfig, device: torch.device):
    """Text tokenizer (written into ``out/model``), audio codes of the corpus, the example sampler."""
    out = Path(tc.out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if not (model_dir / "tokenizer.json").is_file():
        make_byte_text_tokenizer(model_dir)
    text_tok = load_text_tokenizer(model_dir)
    special = SpecialTokens.from_tokenizer(text_tok)
    config = lm_config(tc.preset)
    renderer = PromptRenderer(text_tok, special, config.speech_zeroemb_idx, config.group_size)
    audio_tok = load_audio_tokenizer(tc, device)
    codes = encode_corpus(audio_tok, tc.corpus, "train", out / "codes-train.safetensors", config.audio_channels,
                          tc.progress, tc.max_sentences)
    data = LMExamples(tc.corpus, "train", codes, renderer, tc.max_patches)
    return config, special, data


@torch.no_grad()
def heldout_loss(model: SpeechLM, data: LMExamples, pad_id: int, items: int = 8, seed: int = 1234) -> dict:
    """Teacher-forced loss per task on ``items`` fixed examples of another split (e.g. the test split)."""
    was_training = model.training
    model.eval()
    out = {}
    for task in data.tasks:
        gen = np.random.default_rng(seed)
        texts, audio = [], []
        for _ in range(items):
            ids, target = data.example(task, gen)
            res = speech_lm_loss(model, ids[None].to(model.device), target[None].to(model.device))
            texts.append(float(res.text))
            if res.speech_patches:
                audio.append(float(res.channels[0]))
        out[task] = {"text_ce": round(float(np.mean(texts)), 4),
                     "audio0_ce": round(float(np.mean(audio)), 4) if audio else None}
    model.train(was_training)
    return out


def train_lm(tc: LMTrainConfig) -> dict:
    """Train (or resume from ``out/last``); writes ``out/model`` (official layout + text tokenizer)."""
    device = resolve_device(tc.device)
    out = Path(tc.out)
    config, special, data = prepare(tc, device)
    torch.manual_seed(tc.seed)
    model = SpeechLM(config, special.empty).to(device)
    model.init_weights(seed=tc.seed)
    model.speech_buffer_dtype = None  # fp32 training: no bf16 rounding of the summed speech embeddings
    state = {"step": 0, "seed": tc.seed, "history": [], "config": asdict(tc)}
    last = out / "last"
    opt = _optimizer(model, tc)
    names = {p: n for n, p in model.named_parameters()}
    if (last / "state.json").is_file():
        state = read_state(last)
        resumed = SpeechLM.from_pretrained(last / "model", device=device, empty_token_id=special.empty)
        model.load_state_dict(resumed.state_dict())
        load_optimizer_tensors(opt, names, read_optimizer(last))
        log.info("resuming from %s at step %d", last, state["step"])
    model.train()
    log.info("speech LM %s: %.2f M parameters on %s; tasks %s", tc.preset, model.num_parameters() / 1e6, device,
             data.tasks)
    metrics_file = open(out / "metrics.jsonl", "a", buffering=1)
    bar = progress(tc.steps, state["step"], "speech LM", tc.progress)
    t_start, steps_run = time.perf_counter(), 0
    try:
        end = min(tc.steps, tc.stop_at or tc.steps)
        while state["step"] < end:
            step = state["step"]
            s = seed_step(tc.seed, step)
            ids, target, mask, tasks = data.batch(tc.batch_size, np.random.default_rng(s), special.eos)
            for g in opt.param_groups:
                g["lr"] = _lr(tc, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                res = speech_lm_loss(model, ids.to(device), target.to(device), mask.to(device))
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            state["step"] = step + 1
            steps_run += 1
            row = {"step": step + 1, "loss": round(float(res.loss.detach()), 5),
                   "text": round(float(res.text.detach()), 5),
                   "audio0": round(float(res.channels[0].detach()), 5), "speech_patches": res.speech_patches,
                   "text_tokens": res.text_tokens}
            state["history"].append(row)
            metrics_file.write(json.dumps(row) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", text=f"{row['text']:.3f}")
            if (step + 1) % tc.log_every == 0:
                log.info("step %d loss %.4f text %.4f audio[0] %.4f (%s)", step + 1, row["loss"], row["text"],
                         row["audio0"], ",".join(tasks))
            if (step + 1) % tc.save_every == 0 or step + 1 == end:
                save_checkpoint(last, model.save_pretrained, opt, names, state)
    finally:
        bar.close()
        metrics_file.close()
    state["seconds_per_step"] = (time.perf_counter() - t_start) / max(1, steps_run)
    model.save_pretrained(out / "model")
    if tc.eval_items:
        device_ = next(model.parameters()).device
        test = LMExamples(tc.corpus, "test", encode_corpus(load_audio_tokenizer(tc, device_), tc.corpus, "test",
                          out / "codes-test.safetensors", config.audio_channels, tc.progress,
                                                   tc.eval_sentences),
                          data.renderer, tc.max_patches)
        state["eval"] = {"test": heldout_loss(model, test, special.eos, tc.eval_items)}
        log.info("held-out (test split) loss per task: %s", state["eval"]["test"])
    (out / "summary.json").write_text(json.dumps({k: v for k, v in state.items() if k != "history"}, indent=1))
    return state


_INT = ("steps", "batch_size", "max_patches", "warmup", "seed", "save_every", "log_every", "eval_items",
        "eval_sentences")
_FLOAT = ("lr", "weight_decay")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = LMTrainConfig(corpus="", out="")
    p.add_argument("--corpus", required=True, help="corpus directory (mimo-audio corpus build --out DIR)")
    p.add_argument("--out", required=True, help="run directory: last/ (resumable), model/ (official layout)")
    p.add_argument("--tokenizer", default=None, help="trained audio tokenizer directory (official layout)")
    p.add_argument("--tokenizer-size", "--tokenizer-preset", dest="tokenizer_preset", default=d.tokenizer_preset,
                   choices=["tiny", "small"], help="random tokenizer of this size when --tokenizer is not given "
                   "(smoke tests only; --tokenizer-preset is the old spelling)")
    p.add_argument("--size", "--preset", dest="preset", default=d.preset, choices=["small", "tiny"],
                   help="model size (--preset is the old spelling)")
    for name in _INT:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in _FLOAT:
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--stop-at", type=int, default=None, help="stop at this step (resumable; lr schedule keeps --steps)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--max-sentences", type=int, default=None,
                   help="train on the utterances of this many sentences (all voices; default: all)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights and losses); ~1.5x faster on "
                   "CPUs with AVX512-BF16 / AMX and on GPUs")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> LMTrainConfig:
    names = ("corpus", "out", "tokenizer", "tokenizer_preset", "preset", "device", "stop_at", "bf16", "max_sentences",
             *_INT, *_FLOAT)
    return LMTrainConfig(**{n: getattr(args, n) for n in names}, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = train_lm(config_from_args(p.parse_args(argv)))
    print(json.dumps({k: v for k, v in state.items() if k not in ("history", "config")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
