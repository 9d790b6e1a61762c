"""``mimo-audio sparsify``: convert a transformers causal LM to HySparse / hybrid-SWA attention and save it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("mimo-audio.sparsify")

LAYOUT_HELP = ("full, hysparse-1:M, hysparse-sparsest, hysparse-sparsest-reselect, swa-N:1, or one letter per layer "
               "(F full, S sparse, R re-selecting sparse, W window+sink), e.g. FSSSFSSSF...")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sparsify",
        help="convert a causal LM to HySparse or hybrid sliding-window attention (smaller KV cache)",
        description="Convert the attention of a transformers Llama/Qwen2/Mistral (or MoE variant) model directory "
        "to a HySparse or hybrid-SWA layout, training-free (sinks and gates fitted on a calibration text), "
        "optionally heal the new parameters with a short CPU fine-tune (KL to the original model), and save "
        "model.safetensors + config.json + efficient_attention.json (+ tokenizer). Load the result with "
        "efficient.attention.load_converted(DIR).",
    )
    p.add_argument("--model", required=True, help="transformers causal-LM directory (config.json + safetensors)")
    p.add_argument("--layout", required=True, help=LAYOUT_HELP)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--heal-steps", type=int, default=0, help="healing fine-tune steps (default 0: none)")
    p.add_argument("--heal-seq-len", type=int, default=256, help="tokens per healing step (default 256)")
    p.add_argument("--heal-lr", type=float, default=3e-3, help="healing learning rate (default 3e-3)")
    p.add_argument("--calibration-tokens", type=int, default=1024,
                   help="tokens of text to fit sinks and gates on (default 1024; 0: plain defaults, no text)")
    p.add_argument("--text", help="UTF-8 text file for calibration and healing (default: the offline English "
                   "text of eval.textdata, from Debian's python3.11-doc)")
    p.add_argument("--top-k", type=int, help="HySparse blocks per query (default 16)")
    p.add_argument("--window", type=int, help="sliding window (default 128)")
    p.add_argument("--block-size", type=int, help="HySparse key block (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.set_defaults(func=run)


def _token_ids(tok, text_file: str | None, needed: int):
    import torch

    if text_file:
        path = Path(text_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: text file not found")
        text = path.read_text(encoding="utf-8")
    else:
        from eval.textdata import offline_english_text

        text = offline_english_text("train")
    # tokenize only what is needed (about 6 characters per token is generous for English)
    ids = tok(text[: max(needed * 8, 4096)], return_tensors="pt").input_ids[0]
    if ids.numel() < needed:
        raise ValueError(f"the text has {ids.numel()} tokens; calibration and healing need {needed}")
    return ids.to(torch.long)


def run(args: argparse.Namespace) -> int:
    from apps.checks import check_causal_lm_dir, check_output_dir

    model_dir = check_causal_lm_dir(args.model, "sparsify")  # safetensors causal LMs only, checked before loading
    check_output_dir(args.out, inputs=[model_dir])
    from efficient.attention.checkpoint import CONFIG_FILE

    if (model_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{model_dir} is already converted ({CONFIG_FILE}); convert the original model instead")
    if args.heal_steps < 0 or args.calibration_tokens < 0:
        raise ValueError("--heal-steps and --calibration-tokens must be >= 0")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from efficient.attention import apply_attention, heal, kv_cache_bytes, save_converted
    from efficient.attention.layout import resolve_layout

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("top_k", args.top_k), ("window", args.window), ("block_size", args.block_size))
                 if v is not None}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    resolve_layout(args.layout, model.config.num_hidden_layers)  # a bad layout fails before any work
    tok = None
    if any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        tok = AutoTokenizer.from_pretrained(model_dir)
    needs_text = args.calibration_tokens > 0 or args.heal_steps > 0
    ids = None
    if needs_text:
        if tok is None:
            raise ValueError(f"{model_dir} has no tokenizer files: calibration and healing need one "
                             "(or pass --calibration-tokens 0 without --heal-steps)")
        needed = args.calibration_tokens + (args.heal_steps and 8 * args.heal_seq_len)
        ids = _token_ids(tok, args.text, needed)
    calib = ids[None, : args.calibration_tokens] if args.calibration_tokens > 0 else None
    conv = apply_attention(model, args.layout, inplace=args.heal_steps == 0, calibration_ids=calib, **overrides)
    notes = {"source": str(model_dir.resolve()), "calibration_tokens": args.calibration_tokens,
             "heal_steps": args.heal_steps}
    if args.heal_steps:
        losses = heal(conv, ids[args.calibration_tokens :], teacher=model, steps=args.heal_steps,
                      seq_len=args.heal_seq_len, lr=args.heal_lr)
        notes["heal_loss_first_last"] = [losses[0], losses[-1]]
    out = save_converted(conv, args.out, tokenizer=tok, notes=notes)
    cfg = conv.config.efficient_attention
    c = conv.config
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // heads
    from efficient.attention import AttentionConfig

    elem = next(conv.parameters()).element_size()
    full = kv_cache_bytes(AttentionConfig(layout="F" * len(cfg["layout"])), 8192, kv, hd, dtype_bytes=elem)
    mine = kv_cache_bytes(AttentionConfig(**cfg), 8192, kv, hd, dtype_bytes=elem)
    print(f"layout {cfg['layout']} ({cfg['layout'].count('F')} of {len(cfg['layout'])} layers full); "
          f"KV cache at 8k tokens {mine / 2**20:.1f} MiB vs {full / 2**20:.1f} MiB full ({full / mine:.2f}x smaller)")
    if args.heal_steps:
        print(f"healing: {args.heal_steps} steps, KL {notes['heal_loss_first_last'][0]:.4f} -> "
              f"{notes['heal_loss_first_last'][1]:.4f}")
    print(f"wrote {out}")
    return 0
