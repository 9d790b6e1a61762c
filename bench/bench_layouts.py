"""Which per-tensor layout makes the best low-bit start: perplexity of SmolLM2-135M with fake-quantized weights.

Each configuration ``MAIN:DOWN:EMBEDDING:METHOD`` quantizes attention and MLP gate/up with scheme MAIN, the MLP
``down_proj`` with DOWN, and the tied embedding with EMBEDDING (a scheme, ``int8g32`` = symmetric 8-bit per 32
like llama.cpp's Q8_0, which is not a packed format here, or ``fp32``), by METHOD (rtn, rtn-act, gptq; the
embedding always by round to nearest), then writes the dequantized weights back into the float model. Printed
per configuration: perplexity on bench_heal's windows (4 x 512 over the first 2048 held-out tokens) and on
docs/quantization.md's protocol (first 1024 tokens, windows of 512; llama.cpp Q2_K 27.07 there), and the size
of the packed file that configuration gives (int8g32 counted at 8.5 bits per weight).

    PYTHONPATH=. python bench/bench_layouts.py w4g32:w3g64:w4g32:gptq w4g32:w3g128:w4g32:rtn-act
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from bench.common.perplexity import chained_windows, perplexity
from efficient.quant import formats
from efficient.quant.api import collect_hessians, select_linears, text_calibration
from efficient.quant.formats import parse_scheme
from efficient.quant.gptq import gptq_quantize
from efficient.quant.layouts import layer_bytes


def fake_embedding(w: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "fp32":
        return w
    if kind == "int8g32":
        wg = w.view(w.shape[0], -1, 32)
        s = (wg.abs().amax(-1, keepdim=True) / 127).half().float().clamp_min(1e-12)
        return (torch.round(wg / s).clamp(-127, 127) * s).view_as(w)
    return formats.rtn_quantize(parse_scheme(kind), w).dequant


def file_mib(model, main: str, down: str, emb: str) -> float:
    total = sum(layer_bytes(down if n.endswith("down_proj") else main, m.out_features, m.in_features)
                for n, m in select_linears(model))
    e = model.get_input_embeddings().weight
    total += {"fp32": e.numel() * 4, "int8g32": e.numel() * 34 // 32}.get(emb) or layer_bytes(emb, *e.shape)
    total += sum(p.numel() * 4 for n, p in model.named_parameters() if "norm" in n)
    return total / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", help="MAIN:DOWN:EMBEDDING:METHOD, e.g. w4g32:w3g64:w4g32:gptq")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from eval.reference_models import load_smollm2
    from eval.textdata import offline_english_text

    configs = [c.split(":") for c in args.configs]
    for c in configs:
        if len(c) != 4 or c[3] not in ("rtn", "rtn-act", "gptq"):
            raise SystemExit(f"bad configuration {':'.join(c)!r}: expected MAIN:DOWN:EMBEDDING:rtn|rtn-act|gptq")
        for s in c[:2] + ([c[2]] if c[2] not in ("fp32", "int8g32") else []):
            parse_scheme(s)
    model, tok = load_smollm2()
    test = offline_english_text("test")
    heal_ids = tok(test[:200_000], return_tensors="pt", add_special_tokens=False).input_ids[0][:2048]
    qmd_ids = tok(test, return_tensors="pt").input_ids[0][:1024]

    def ppl(m) -> tuple[float, float]:
        return perplexity(m, chained_windows(heal_ids, 512)), perplexity(m, chained_windows(qmd_ids, 512))

    f_heal, f_qmd = ppl(model)
    print(f"float: ppl {f_heal:.2f} (bench_heal windows), {f_qmd:.2f} (quantization.md)", flush=True)
    hessians = {}
    if any(c[3] != "rtn" for c in configs):
        calib = text_calibration(model, tok, offline_english_text("train")[:40_000])
        hessians = dict(collect_hessians(model, select_linears(model), calib))
    print("| attention/gate/up, down, embedding (method) | file MiB | ppl | ppl q.md | s |\n|---|---|---|---|---|")
    for main_s, down_s, emb, method in configs:
        t0 = time.perf_counter()
        m = copy.deepcopy(model)
        with torch.no_grad():
            for name, lin in select_linears(m):
                sch = parse_scheme(down_s if name.endswith("down_proj") else main_s)
                w = lin.weight.float()
                if method == "rtn":
                    dq = formats.rtn_quantize(sch, w).dequant
                elif method == "rtn-act":
                    dq = formats.rtn_quantize(sch, w, col_weight=hessians[name].diagonal()).dequant
                else:
                    dq = gptq_quantize(sch, w, hessians[name]).dequant
                lin.weight.copy_(dq)
            e = m.get_input_embeddings().weight
            e.copy_(fake_embedding(e.float(), emb))
        a, b = ppl(m)
        print(f"| {main_s}, {down_s}, {emb} ({method}) | {file_mib(m, main_s, down_s, emb):.1f} | {a:.2f} | {b:.2f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)
        del m
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
