"""MTP speculative decoding on SmolLM2-135M-Instruct with 1-3 trained heads, on CPU.

Held-out prompts come from the test split of the offline English text (Python "What's New" docs; the
heads were trained on the train split). For each prompt: plain greedy, speculative greedy with K = 1, 2,
3 heads (fixed K, and adaptive K), plain and speculative sampling at T = 0.7. Greedy equality with
plain decoding is checked in the same run. Decode tok/s excludes the prompt; medians over prompts.

    python -m bench.bench_mtp [--heads-dir DIR] [--prompts 4] [--tokens 48] [--threads 1]

If DIR has no mtp.safetensors, heads are trained first (python -m apps.train.mtp_text, --train-minutes).
The CPU is shared with other engineers: numbers are noisy; compare ratios measured side by side.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from efficient.spec import (
    CausalLMTarget,
    MTPDrafter,
    SamplingParams,
    SpeculativeDecoder,
    generate_plain,
    load_mtp,
)
from eval.reference_models import load_smollm2, smollm2_dir
from eval.textdata import offline_english_text

ROOT = Path(__file__).resolve().parents[1]


def first_heads(full: MTPDrafter, k: int, target: CausalLMTarget) -> MTPDrafter:
    from dataclasses import replace

    d = MTPDrafter(replace(full.cfg, num_heads=k), target.embed, target.final_norm, target.lm_head)
    for i in range(k):
        d.heads[i].load_state_dict(full.heads[i].state_dict())
    d.draft_vocab = full.draft_vocab
    return d.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads-dir", type=Path, default=Path("/tmp/mtp_smollm2"))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-minutes", type=float, default=12.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.heads_dir / "mtp.safetensors").is_file():
        print(f"training 3 MTP heads into {args.heads_dir} for {args.train_minutes} min", flush=True)
        subprocess.run([sys.executable, "-m", "apps.train.mtp_text", "--model", str(smollm2_dir()), "--heads", "3",
                        "--steps", "150", "--batch", "2", "--seq-len", "128", "--threads", str(args.threads),
                        "--max-minutes", str(args.train_minutes), "--out", str(args.heads_dir)],
                       check=True, cwd=ROOT)
    info_file = args.heads_dir / "mtp.train.json"
    train_info = info_file.read_text() if info_file.is_file() else ""
    model, tok = load_smollm2()
    target = CausalLMTarget(model)
    full = load_mtp(args.heads_dir, target)
    drafters = {k: first_heads(full, k, target) for k in range(1, len(full.heads) + 1)}
    paras = [x for x in offline_english_text("test").split("\n\n") if len(x) > 600]
    step = max(1, len(paras) // args.prompts)
    prompts = [tok(paras[i * step], add_special_tokens=False).input_ids[: args.prompt_tokens]
               for i in range(args.prompts)]
    print(f"SmolLM2-135M-Instruct fp32, {args.threads} torch thread(s), {len(prompts)} held-out prompts x "
          f"{args.prompt_tokens} tokens, {args.tokens} new tokens; heads: {train_info.strip() or args.heads_dir}")

    configs = [("plain", 0, False)] + [(f"K={k}", k, False) for k in drafters] + [
        (f"K={max(drafters)} adaptive", max(drafters), True)]
    rows: dict[str, dict[str, list]] = {}
    all_equal = True
    t07 = SamplingParams(temperature=0.7)
    for pi, prompt in enumerate(prompts):
        ref = None
        for name, k, adaptive in configs:
            if k == 0:
                out, st = generate_plain(target, prompt, args.tokens)
                ref = out
            else:
                dec = SpeculativeDecoder(target, drafters[min(k, max(drafters))], max_draft=k, adaptive=adaptive)
                out, st = dec.generate(prompt, args.tokens)
                if out != ref:
                    all_equal = False
                    print(f"  MISMATCH prompt {pi} {name}", flush=True)
            r = rows.setdefault("greedy " + name, {"tps": [], "st": []})
            r["tps"].append(st.decode_tokens_per_s)
            r["st"].append(st)
        for name, k in [("plain", 0), (f"K={max(drafters)}", max(drafters))]:
            g = torch.Generator().manual_seed(pi)
            if k == 0:
                _, st = generate_plain(target, prompt, args.tokens, sampling=t07, generator=g)
            else:
                dec = SpeculativeDecoder(target, drafters[k], max_draft=k, adaptive=False)
                _, st = dec.generate(prompt, args.tokens, sampling=t07, generator=g)
            r = rows.setdefault("T=0.7 " + name, {"tps": [], "st": []})
            r["tps"].append(st.decode_tokens_per_s)
            r["st"].append(st)
        print(f"  prompt {pi} done", flush=True)

    print("\n| config | accept/position | mean accept length | tok/forward | decode tok/s | speedup vs plain |"
          " draft s | verify s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        sts = r["st"]
        base = rows[("greedy " if name.startswith("greedy") else "T=0.7 ") + "plain"]["tps"]
        tps = statistics.median(r["tps"])
        speed = statistics.median(a / b for a, b in zip(r["tps"], base))
        if sts[0].max_draft:
            prop = [sum(s.proposed[i] for s in sts) for i in range(sts[0].max_draft)]
            acc = [sum(s.accepted[i] for s in sts) for i in range(sts[0].max_draft)]
            per = "/".join(f"{a / p:.2f}" if p else "-" for a, p in zip(acc, prop))
            rounds = sum(s.draft_rounds for s in sts)
            al = sum(s.draft_round_tokens for s in sts) / rounds if rounds else float("nan")
            alen = f"{al:.2f}"
        else:
            per, alen = "-", "-"
        tpf = sum(s.new_tokens for s in sts) / sum(s.target_forwards for s in sts)
        print(f"| {name} | {per} | {alen} | {tpf:.2f} | {tps:.1f} | {speed:.2f}x | "
              f"{sum(s.time_draft for s in sts):.1f} | {sum(s.time_verify for s in sts):.1f} |")
    print(f"\ngreedy speculative output == plain greedy for every prompt and K: {all_equal}")


if __name__ == "__main__":
    main()
