"""``mimo-audio quantize``: pack a transformers causal LM's linear layers into a low-bit format."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("mimo-audio.quantize")

SCHEME_HELP = ("w<bits>g<group> (bits 1-4, group 32/64/128; T-MAC LUT kernel), w4g<group>s (symmetric 4-bit, "
               "one fp16 scale per group: w4g32s = 4.5 bits/weight as llama.cpp's Q4_0; int8 kernel on AVX512-VNNI), "
               "ternary (BitNet I2_S), "
               "ternary-tl (ternary LUT), afpq4g<64|128> / afpq3g<64|128> (asymmetric FP, e2m1 / fp3), or a mixed "
               "layout: q2k-mix (llama.cpp Q2_K's per-tensor bits on a 576-wide model; the tied embedding packed "
               "too, docs/healing.md)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="quantize a causal LM to 1-4-bit / ternary / AFPQ weights (LUT kernels)",
        description="Quantize the linear layers of a transformers causal-LM directory and write a packed "
        "checkpoint (model.safetensors + quant_config.json + config.json + tokenizer) that "
        "efficient.quant.load_quantized_causal_lm() loads. Prints a per-layer size / error summary.",
    )
    p.add_argument("--model", required=True, help="transformers causal-LM directory (config.json + weights)")
    p.add_argument("--scheme", required=True, help=SCHEME_HELP)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--method", choices=("rtn", "rtn-act", "gptq"), default="rtn",
                   help="rtn: round to nearest with clip search; rtn-act: the same with the clip search weighted by "
                   "the activations on calibration text (measured on SmolLM2 w4g128: perplexity +15.7%% vs +52%% "
                   "for rtn, docs/healing.md); gptq: calibrated on offline English text")
    p.add_argument("--transform", choices=("awq",), default=None,
                   help="awq: first fold activation-aware per-input-channel scales into the norms / previous "
                   "linears (exact in float, same packed format; calibrated; w<bits>g<group> and w4g<group>s schemes)")
    p.add_argument("--act-order", action="store_true",
                   help="gptq: quantize columns by descending activation, static groups (same packed format)")
    p.add_argument("--include", action="append", default=None,
                   help="glob over module names to quantize (repeatable; default: all nn.Linear)")
    p.add_argument("--exclude", action="append", default=None,
                   help="glob over module names to keep in float (repeatable; default: lm_head)")
    p.add_argument("--calib-tokens", type=int, default=4096,
                   help="calibration tokens for rtn-act and gptq (default 4096)")
    p.add_argument("--text", default=None, help="UTF-8 text file to calibrate on (default: the offline English "
                   "text of eval.textdata, from Debian's python3.11-doc)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from efficient.quant.api import resolve_layout

    layout = resolve_layout(args.scheme)  # fail fast with a clear message
    if args.transform and not layout.default.startswith("w"):
        raise ValueError(f"--transform {args.transform} needs a uniform w<bits>g<group> scheme, not {args.scheme}")
    if args.act_order and args.method != "gptq":
        raise ValueError("--act-order applies to --method gptq")
    from apps.checks import check_causal_lm_dir, check_output_dir

    model_dir = check_causal_lm_dir(args.model, "quantize")  # safetensors causal LMs only, checked before loading
    check_output_dir(args.out, inputs=[model_dir])

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from efficient.quant import quantize, save_quantized, summary_table
    from efficient.quant.api import text_calibration

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    tok = None
    if any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        tok = AutoTokenizer.from_pretrained(model_dir)
    elif args.method != "rtn" or args.transform:
        raise ValueError(f"{model_dir}: {args.transform or args.method} calibration needs the model's tokenizer files")
    calib = None
    if args.method != "rtn" or args.transform:
        calib = text_calibration(model, tok, _calibration_text(args.text), n_tokens=args.calib_tokens)
    reports = quantize(model, args.scheme, method=args.method, include=args.include, exclude=args.exclude,
                       calib_fn=calib, progress=True, transform=args.transform, act_order=args.act_order)
    out = save_quantized(model, args.out, reports)
    if tok is not None:
        tok.save_pretrained(out)
    print(summary_table(reports))
    print(f"wrote {out}")
    return 0


def _calibration_text(text_file: str | None) -> str:
    if text_file:
        path = Path(text_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: text file not found")
        return path.read_text(encoding="utf-8")
    from eval.textdata import offline_english_text

    return offline_english_text("train")
