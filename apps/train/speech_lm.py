"""Recipe: train a MiMo-Audio speech LM (the official architecture, a smaller preset) from scratch.

Data: corpus utterances tokenised by an audio tokenizer (a trained one, ``--tokenizer DIR``, or random
weights of a preset for smoke tests), rendered as TTS, ASR, speech continuation, few-shot speech-to-speech
and plain-text examples in the official prompt formats (:mod:`apps.train.lm_data`). Loss: the next-patch
loss of :func:`mimo_audio.training.speech_lm_loss` (text + teacher-forced RVQ channels) on answer patches.
The text tokenizer is a byte-level BPE trained on the corpus text (``--text-vocab bpe:N``; ``bytes`` for the
old byte vocabulary). Training-only alignment help, inference formats unchanged: an auxiliary CTC head on the
25 Hz frames (``--ctc-weight``, :mod:`apps.train.ctc`), dropout of teacher-forced past speech patches in TTS
(``--patch-dropout``) and a short-utterances-first curriculum (``--curriculum-steps``). ``--init-from DIR``
starts from a trained model (the embedded default: ``--init-from default``), also across vocabularies
(:mod:`apps.train.warm_start`). MTP heads: ``mimo-audio train mtp``.

    PYTHONPATH=. python -m apps.train.speech_lm --corpus corpus-small --tokenizer runs/tok/model --out runs/lm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from apps.train.ctc import CHAR_ALPHABET, CTCHead, FrameCapture, char_labels, ctc_loss
from apps.train.lm_data import TASK_WEIGHTS, LMExamples, bpe_training_texts, encode_corpus, parse_task_weights
from apps.train.reliance import input_reliance
from apps.train.state import (
    load_optimizer_tensors,
    progress,
    read_optimizer,
    read_state,
    resolve_device,
    save_checkpoint,
    seed_step,
)
from apps.train.warm_start import warm_start
from mimo_audio.config import SpeechLMConfig
from mimo_audio.modeling import SpeechLM
from mimo_audio.prompts import PromptRenderer
from mimo_audio.text_tokenizer import SpecialTokens, load_text_tokenizer
from mimo_audio.text_vocab import make_bpe_text_tokenizer, make_byte_text_tokenizer
from mimo_audio.training import speech_lm_loss

log = logging.getLogger("mimo-audio.train")

def lm_config(preset: str, vocab_size: int | None = None) -> SpeechLMConfig:
    """The named size (``small``: the embedded default's, ``tiny``: tests), with ``vocab_size`` rounded up to a
    multiple of 64 when given (the text tokenizer's size)."""
    if preset not in ("small", "tiny"):
        raise ValueError(f"unknown LM training preset {preset!r}; choose 'small' or 'tiny'")
    config = SpeechLMConfig.named(preset)
    if vocab_size is not None:
        config = dataclasses.replace(config, vocab_size=-(-vocab_size // 64) * 64)
    return config


def parse_text_vocab(spec: str) -> int | None:
    """``bytes`` -> None; ``bpe:N`` -> N."""
    if spec == "bytes":
        return None
    kind, _, size = spec.partition(":")
    if kind != "bpe" or not size.isdigit():
        raise ValueError(f"--text-vocab must be 'bytes' or 'bpe:N' (e.g. bpe:1024), got {spec!r}")
    return int(size)


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
    text_vocab: str = "bpe:2048"  # "bytes" or "bpe:N" (a BPE of N symbols trained on the corpus text)
    init_from: str | None = None  # a speech-LM folder (or "default") to start from; the vocabulary may differ
    ctc_weight: float = 0.0  # weight of the auxiliary CTC loss (0: no CTC head)
    patch_dropout: float = 0.0  # share of teacher-forced past speech patches of TTS answers blanked in the input
    curriculum_steps: int = 0  # utterances grow from curriculum_start_s to all over this many steps (0: off)
    curriculum_start_s: float = 3.0
    ctc_target: str = "tokens"  # CTC targets: "tokens" (text vocabulary) or "chars" (apps.train.ctc.CHAR_ALPHABET)
    ctc_upsample: int = 1  # CTC outputs per 25 Hz frame
    ctc_lookahead: int = 0  # the CTC head reads the backbone this many patches later (it has heard more)
    audio_weight: float = 1.0  # speech loss (channel weights normalised to sum 1) against text weight 100
    ctc_context: int = 0  # units each way of a bidirectional GRU under the CTC projection (0: none)
    task_weights: str = ""  # "asr=0.5,tts=0.3,...": sampling weights of the tasks (empty: lm_data.TASK_WEIGHTS)


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


def _source(init_from: str) -> Path:
    if init_from == "default":
        from mimo_audio import default_model_dir

        return Path(default_model_dir())
    return Path(init_from)


def _optimizer(model: torch.nn.Module, tc: LMTrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups,
                             lr=tc.lr, betas=(0.9, 0.95))


def prepare(tc: LMTrainConfig, device: torch.device):
    """Text tokenizer (written into ``out/model``), audio codes of the corpus, the example sampler."""
    bpe = parse_text_vocab(tc.text_vocab)  # a bad spec fails before any folder is made
    weights = parse_task_weights(tc.task_weights)
    out = Path(tc.out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if not (model_dir / "tokenizer.json").is_file():
        if bpe is None:
            make_byte_text_tokenizer(model_dir)
        else:
            make_bpe_text_tokenizer(bpe_training_texts(tc.seed), bpe, model_dir)
    text_tok = load_text_tokenizer(model_dir)
    special = SpecialTokens.from_tokenizer(text_tok)
    config = lm_config(tc.preset, len(text_tok))
    renderer = PromptRenderer(text_tok, special, config.speech_zeroemb_idx, config.group_size)
    audio_tok = load_audio_tokenizer(tc, device)
    codes = encode_corpus(audio_tok, tc.corpus, "train", out / "codes-train.safetensors", config.audio_channels,
                          tc.progress, tc.max_sentences)
    data = LMExamples(tc.corpus, "train", codes, renderer, tc.max_patches, weights)
    data.patch_dropout = tc.patch_dropout
    return config, special, data, text_tok


def curriculum_frames(tc: LMTrainConfig, step: int) -> int | None:
    """Longest utterance (frames at 25 Hz) allowed at ``step``: linear from the start length to all."""
    if not tc.curriculum_steps or step >= tc.curriculum_steps:
        return None
    start = tc.curriculum_start_s * 25
    return int(start + (step / tc.curriculum_steps) * (30 * 25 - start))


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
    config, special, data, text_tok = prepare(tc, device)
    torch.manual_seed(tc.seed)
    model = SpeechLM(config, special.empty).to(device)
    model.init_weights(seed=tc.seed)
    model.speech_buffer_dtype = None  # fp32 training: no bf16 rounding of the summed speech embeddings
    state = {"step": 0, "seed": tc.seed, "history": [], "config": asdict(tc)}
    last = out / "last"
    if tc.ctc_target not in ("tokens", "chars"):
        raise ValueError(f"ctc_target must be 'tokens' or 'chars', got {tc.ctc_target!r}")
    if tc.ctc_target == "chars":
        data.ctc_labeler = char_labels
    ctc_classes = len(CHAR_ALPHABET) if tc.ctc_target == "chars" else config.vocab_size
    ctc_head = None
    if tc.ctc_weight > 0:
        ctc_head = CTCHead(config.local_dim, config.input_local_dim, ctc_classes, tc.ctc_upsample,
                           tc.ctc_context).to(device)
    capture = FrameCapture(model) if ctc_head is not None else None
    trainable = torch.nn.ModuleDict({"lm": model, **({"ctc": ctc_head} if ctc_head is not None else {})})
    opt = _optimizer(trainable, tc)
    names = {p: n for n, p in trainable.named_parameters()}
    if (last / "state.json").is_file():
        state = read_state(last)
        resumed = SpeechLM.from_pretrained(last / "model", device=device, empty_token_id=special.empty)
        model.load_state_dict(resumed.state_dict())
        if ctc_head is not None and (last / "ctc.safetensors").is_file():
            ctc_head.load(last / "ctc.safetensors")
        load_optimizer_tensors(opt, names, read_optimizer(last))
        log.info("resuming from %s at step %d", last, state["step"])
    elif tc.init_from:
        state["warm_start"] = {k: v for k, v in warm_start(model, _source(tc.init_from), text_tok).items()
                               if k != "skipped"}
        state["warm_start"]["from"] = str(_source(tc.init_from))
    model.train()
    log.info("speech LM %s: %.2f M parameters on %s; tasks %s", tc.preset, model.num_parameters() / 1e6, device,
             data.tasks)
    metrics_file = open(out / "metrics.jsonl", "a", buffering=1)
    bar = progress(tc.steps, state["step"], "speech LM", tc.progress)
    t_start, steps_run = time.perf_counter(), 0
    # Provenance across resumed stretches: each invocation's steps, wall time, data and device; the total hours.
    stretch = {"from_step": state["step"], "to_step": state["step"], "seconds": 0.0, "corpus": str(tc.corpus),
               "device": str(device), "threads": torch.get_num_threads(), "bf16": tc.bf16, "lr": tc.lr,
               "steps": tc.steps}
    state.setdefault("stretches", []).append(stretch)
    try:
        end = min(tc.steps, tc.stop_at or tc.steps)
        while state["step"] < end:
            step = state["step"]
            s = seed_step(tc.seed, step)
            data.max_frames = curriculum_frames(tc, step)
            batch = data.training_batch(tc.batch_size, np.random.default_rng(s), special.eos)
            ids, target, mask, tasks = batch.ids, batch.target, batch.mask, batch.tasks
            for g in opt.param_groups:
                g["lr"] = _lr(tc, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                res = speech_lm_loss(model, ids.to(device), target.to(device), mask.to(device),
                                     inputs=batch.inputs.to(device), audio_weight=tc.audio_weight)
                ctc = None
                if ctc_head is not None and capture.frames is not None:
                    is_speech = batch.inputs[:, 0, :: config.group_size].to(device) == special.empty
                    ctc = ctc_loss(ctc_head, res.local_hidden, capture.frames, is_speech, batch.ctc, tc.ctc_lookahead)
            loss = res.loss if ctc is None else res.loss + tc.ctc_weight * ctc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), tc.grad_clip)
            opt.step()
            state["step"] = step + 1
            steps_run += 1
            row = {"step": step + 1, "loss": round(float(res.loss.detach()), 5),
                   "text": round(float(res.text.detach()), 5),
                   "audio0": round(float(res.channels[0].detach()), 5), "speech_patches": res.speech_patches,
                   "text_tokens": res.text_tokens}
            if ctc is not None:
                row["ctc"] = round(float(ctc.detach()), 5)
            state["history"].append(row)
            metrics_file.write(json.dumps(row) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", text=f"{row['text']:.3f}")
            if (step + 1) % tc.log_every == 0:
                log.info("step %d loss %.4f text %.4f audio[0] %.4f (%s)", step + 1, row["loss"], row["text"],
                         row["audio0"], ",".join(tasks))
            stretch["to_step"], stretch["seconds"] = step + 1, round(time.perf_counter() - t_start, 1)
            state["train_hours"] = round(sum(s["seconds"] for s in state["stretches"]) / 3600, 4)
            if (step + 1) % tc.save_every == 0 or step + 1 == end:
                save_checkpoint(last, model.save_pretrained, opt, names, state)
                if ctc_head is not None:
                    ctc_head.save(last / "ctc.safetensors")
    finally:
        bar.close()
        metrics_file.close()
    state["seconds_per_step"] = (time.perf_counter() - t_start) / max(1, steps_run)
    model.save_pretrained(out / "model")
    if ctc_head is not None:
        ctc_head.save(out / "ctc.safetensors")  # training-only head: beside the model, not inside it
        capture.remove()
    if tc.eval_items:
        device_ = next(model.parameters()).device
        test = LMExamples(tc.corpus, "test", encode_corpus(load_audio_tokenizer(tc, device_), tc.corpus, "test",
                          out / "codes-test.safetensors", config.audio_channels, tc.progress,
                                                   tc.eval_sentences),
                          data.renderer, tc.max_patches)
        state["eval"] = {"test": heldout_loss(model, test, special.eos, tc.eval_items),
                         "reliance": input_reliance(model, test.renderer, test.plain, test.codes, tc.eval_items)}
        log.info("held-out (test split) loss per task: %s", state["eval"]["test"])
        log.info("input reliance (CE with another item's input minus with its own): %s", state["eval"]["reliance"])
    (out / "summary.json").write_text(json.dumps({k: v for k, v in state.items() if k != "history"}, indent=1))
    return state


_INT = ("steps", "batch_size", "max_patches", "warmup", "seed", "save_every", "log_every", "eval_items",
        "eval_sentences", "curriculum_steps", "ctc_upsample", "ctc_lookahead", "ctc_context")
_FLOAT = ("lr", "weight_decay", "ctc_weight", "patch_dropout", "curriculum_start_s", "audio_weight")


_HELP = {
    "steps": "length of the learning-rate schedule in steps", "batch_size": "examples per step",
    "seed": "seed of the initialisation and of every step's batch", "lr": "peak learning rate",
    "max_patches": "longest example in patches (longer ones are cut at the end)",
    "warmup": "linear warm-up steps", "save_every": "checkpoint last/ every N steps",
    "log_every": "log a line every N steps", "eval_items": "held-out examples per task at the end (0: skip)",
    "eval_sentences": "test-split sentences for the held-out loss",
    "curriculum_steps": "utterances grow from --curriculum-start-s to all over N steps (0: off)",
    "ctc_upsample": "CTC outputs per 25 Hz frame",
    "ctc_lookahead": "the CTC head reads the backbone K patches later",
    "ctc_context": "units each way of a training-only bidirectional GRU under the CTC head (0: none)",
    "weight_decay": "AdamW weight decay", "ctc_weight": "weight of the auxiliary CTC loss (0: no CTC head)",
    "patch_dropout": "share of teacher-forced past speech patches of TTS answers blanked in the input",
    "curriculum_start_s": "longest utterance, s, at the curriculum's start",
    "audio_weight": "speech loss against the text's",
}


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
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                       help=f"{_HELP.get(name, '')} (default {getattr(d, name)})".lstrip())
    for name in _FLOAT:
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name),
                       help=f"{_HELP.get(name, '')} (default {getattr(d, name)})".lstrip())
    p.add_argument("--stop-at", type=int, default=None, help="stop at this step (resumable; lr schedule keeps --steps)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--max-sentences", type=int, default=None,
                   help="train on the utterances of this many sentences (all voices; default: all)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights and losses); ~1.5x faster on "
                   "CPUs with AVX512-BF16 / AMX and on GPUs")
    p.add_argument("--text-vocab", default=d.text_vocab,
                   help="text vocabulary of a new run: 'bpe:N' (byte-level BPE of N symbols trained on the corpus "
                   f"sources' training sentences) or 'bytes' (default {d.text_vocab})")
    p.add_argument("--init-from", default=None,
                   help="start from this speech-LM folder ('default': the embedded model); the text vocabulary "
                   "may differ (rows are rebuilt from the old tokens)")
    p.add_argument("--ctc-target", default=d.ctc_target, choices=["tokens", "chars"],
                   help="targets of the auxiliary CTC head (--ctc-weight > 0): the text vocabulary's tokens or "
                   "characters (a-z, digits, apostrophe, space)")
    p.add_argument("--task-weights", default=d.task_weights,
                   help="sampling weights of the tasks, e.g. 'asr=0.5,tts=0.3' (others keep their defaults: "
                   + ", ".join(f"{k}={v}" for k, v in TASK_WEIGHTS.items()) + ")")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> LMTrainConfig:
    names = ("corpus", "out", "tokenizer", "tokenizer_preset", "preset", "device", "stop_at", "bf16", "max_sentences",
             "text_vocab", "init_from", "ctc_target", "task_weights",
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
