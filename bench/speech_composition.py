"""Decode speed of the composed speech LM: LUT weights + sparse attention + MTP drafting vs the plain model.

Text-only decoding (ASR-style prompts: speech + instruction, then text patches), greedy, batch 1.
Configurations, measured side by side in one run (interleaved per repeat, medians over repeats and prompts):

- ``plain``: fp32 backbone, one backbone forward per token;
- ``mtp K``: fp32 backbone, K MTP heads drafting, verified in one forward of K+1 tokens;
- ``lut``: backbone projections in a LUT low-bit format (``--quant``), plain decoding;
- ``lut+sparse``: plus HySparse / sliding-window attention (``--attention``), plain decoding;
- ``lut+sparse+mtp K``: the full composition.

Greedy equality of each MTP configuration with the plain decoding of the same weights is checked in the
same run. Two models: a trained LM directory (``--lm``, heads from ``--mtp``) and/or a bigger
random-weight backbone (``--big``, random heads started from the last block: its acceptance is not
meaningful, its costs are). Also printed: the cost of verifying K+1 tokens relative to one decode step,
and the speedup the plain -> MTP step would give at the acceptance lengths measured on the trained LM.

    python -m bench.speech_composition --lm runs/lm/model --tokenizer runs/tok/model --big
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from efficient.spec.target import rollback
from mimo_audio import formats
from mimo_audio.compose import compose_backbone
from mimo_audio.config import SpeechLMConfig
from mimo_audio.generation import GenerationConfig
from mimo_audio.modeling import SpeechLM
from mimo_audio.prompts import PromptRenderer
from mimo_audio.speculative import SpeculativeText, SpeechLMTarget, load_speech_mtp
from mimo_audio.text_tokenizer import SpecialTokens, load_text_tokenizer
from mimo_audio.text_vocab import make_byte_text_tokenizer

BIG = dict(vocab_size=320, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
           num_key_value_heads=4, head_dim=64, max_position_embeddings=2048, local_dim=128, local_layers=2,
           local_attn_heads=4, local_ffn_dim=384, input_local_layers=2, input_local_dim=128)


def random_heads(lm: SpeechLM, directory: Path, heads: int) -> Path:
    from efficient.spec import MTPConfig, MTPDrafter

    target = SpeechLMTarget(lm)
    torch.manual_seed(0)
    drafter = MTPDrafter(MTPConfig.from_target(target.config, num_heads=heads), target.embed, target.final_norm,
                         target.lm_head)
    drafter.init_from_target(lm.model.layers[-1])
    target.close()
    return drafter.save(directory)


def prompts_for(lm: SpeechLM, renderer: PromptRenderer, args, tokenizer_dir: str | None) -> list[torch.Tensor]:
    """ASR prompts from held-out corpus utterances (a trained tokenizer), else random codes."""
    if args.corpus and tokenizer_dir:
        from mimo_audio.corpus import read_wav, split_rows
        from tokenizer import AudioTokenizer

        tok = AudioTokenizer.from_pretrained(tokenizer_dir)
        rows = split_rows(args.corpus, "test", style=None)
        rows = rows[:: max(1, len(rows) // args.prompts)][: args.prompts]
        codes = [tok.encode(read_wav(args.corpus, r, tok.sample_rate), tok.sample_rate, n_q=lm.config.audio_channels,
                            progress=False)
                 for r in rows]
    else:
        g = torch.Generator().manual_seed(0)
        top = torch.tensor(lm.config.speech_vocab_size)[:, None] - 1
        channels = lm.config.audio_channels
        codes = [(torch.rand(channels, 60 + 8 * i, generator=g) * top).long() for i in range(args.prompts)]
    return [renderer.render(formats.asr(c.long())) for c in codes]


@torch.no_grad()
def verify_cost(lm: SpeechLM, prompt: torch.Tensor, ks: list[int], repeats: int = 5) -> dict[int, float]:
    """Median time of one backbone forward of k+1 text patches relative to one of 1 patch, after the prompt."""
    target = SpeechLMTarget(lm)
    target.bind(prompt)
    cache = target.new_cache()
    target.forward(torch.tensor([prompt[0, ::4].tolist()]), cache)
    n0 = cache.get_seq_length()
    times: dict[int, list[float]] = {k: [] for k in [0, *ks]}
    for _ in range(repeats):
        for k in times:
            t = time.perf_counter()
            target.forward(torch.full((1, k + 1), 65), cache)
            times[k].append(time.perf_counter() - t)
            rollback(cache, n0)
    target.close()
    base = statistics.median(times[0])
    return {k: statistics.median(v) / base for k, v in times.items() if k}


@torch.no_grad()
def divergence_gap(spec: SpeculativeText, prompt: torch.Tensor, ref: list[int], out: list[int]) -> float:
    """Top-1 minus top-2 logit of the reference at the first token where ``out`` left ``ref`` (a near tie
    there means float rounding, e.g. the LUT kernels' int8 activations, not a decoding bug)."""
    j = next(i for i, (a, b) in enumerate(zip(ref + [-1], out + [-2])) if a != b)
    target = spec.target
    text_row = target.bind(prompt)
    cache = target.new_cache()
    logits, _ = target.forward(torch.tensor([text_row]), cache)
    if j:
        logits, _ = target.forward(torch.tensor([ref[:j]]), cache)
    top = logits[-1].topk(2).values
    return float(top[0] - top[1])


def run_model(name: str, lm: SpeechLM, mtp_path: Path, prompts: list[torch.Tensor], args,
              suppress: tuple[int, ...]) -> list[dict]:
    composed = compose_backbone(copy.deepcopy(lm), quant=args.quant, attention=args.attention,
                                **json.loads(args.attention_options))
    lut_only = compose_backbone(copy.deepcopy(lm), quant=args.quant, attention=None)
    variants = {"fp32": SpeculativeText.from_lm(lm, mtp_path), "lut": SpeculativeText.from_lm(lut_only, mtp_path),
                "lut+sparse": SpeculativeText.from_lm(composed, mtp_path)}
    # fixed length (no stop token: every config decodes alike), text output (no speech patches)
    cfg = GenerationConfig(max_new_patches=args.new, stop_tokens=(), suppress_tokens=suppress)
    kmax = max(args.k)
    configs = [("plain", "fp32", 0)] + [(f"mtp K={k}", "fp32", k) for k in args.k]
    configs += [(f"mtp K={kmax} adaptive", "fp32", kmax)]
    configs += [("lut", "lut", 0), ("lut+sparse", "lut+sparse", 0)]
    configs += [(f"lut+sparse+mtp K={k}", "lut+sparse", k) for k in args.k]
    configs += [(f"lut+sparse+mtp K={kmax} adaptive", "lut+sparse", kmax)]
    rates: dict[str, list[float]] = {c[0]: [] for c in configs}
    stats_acc: dict[str, list] = {c[0]: [] for c in configs}
    equal: dict[str, bool] = {c[0]: True for c in configs}
    gaps: dict[str, list[float]] = {c[0]: [] for c in configs}
    plain_out: dict[tuple[str, int], list[int]] = {}
    for rep in range(args.repeats):
        for i, prompt in enumerate(prompts):
            for label, variant, k in configs:
                spec = variants[variant]
                if k == 0:
                    out, st = spec.generate_plain(prompt, cfg)
                    plain_out[(variant, i)] = out.text_ids
                else:
                    out, st = spec.generate(prompt, cfg, max_draft=k, adaptive=label.endswith("adaptive"))
                    same = out.text_ids == plain_out[(variant, i)]
                    equal[label] &= same
                    if not same and rep == 0:
                        gaps[label].append(divergence_gap(spec, prompt, plain_out[(variant, i)], out.text_ids))
                rates[label].append(st.decode_tokens_per_s)
                if rep == 0:
                    stats_acc[label].append(st)
    base = statistics.median(rates["plain"])
    rows = []
    for label, _variant, k in configs:
        sts = stats_acc[label]
        row = {"model": name, "config": label, "decode_tok_s": round(statistics.median(rates[label]), 2),
               "speedup": round(statistics.median(rates[label]) / base, 2)}
        if k:
            prop = [sum(s.proposed[j] for s in sts) for j in range(k)]
            acc = [sum(s.accepted[j] for s in sts) for j in range(k)]
            rounds = sum(s.draft_rounds for s in sts)
            row["accept_per_position"] = "/".join(f"{a / p:.2f}" if p else "-" for a, p in zip(acc, prop))
            row["accept_length"] = round(sum(s.draft_round_tokens for s in sts) / rounds, 2) if rounds else None
            row["greedy_equal"] = equal[label]
            if gaps[label]:
                row["greedy_equal"] = f"False (top-2 gap at divergence {max(gaps[label]):.3f})"
        rows.append(row)
    cost_fp32 = verify_cost(lm, prompts[0], args.k)
    cost_comp = verify_cost(composed, prompts[0], args.k)
    for row in rows:
        k = int(row["config"].split("K=")[1].split()[0]) if "K=" in row["config"] else 0
        if k:
            c = (cost_comp if row["config"].startswith("lut") else cost_fp32)[k]
            row["verify_cost_x"] = round(c, 2)
    for v in variants.values():
        v.target.close()
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ["model", "config", "accept_per_position", "accept_length", "decode_tok_s", "speedup", "verify_cost_x",
            "greedy_equal"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm", default=None, help="trained speech LM directory")
    p.add_argument("--mtp", default=None, help="directory or file of its MTP heads (default: beside the LM)")
    p.add_argument("--tokenizer", default=None, help="audio tokenizer (for held-out corpus prompts)")
    p.add_argument("--corpus", default=None, help="corpus directory (test split prompts)")
    p.add_argument("--big", action="store_true", help="also a bigger random-weight backbone (BIG shape)")
    p.add_argument("--big-layers", type=int, default=BIG["num_hidden_layers"])
    p.add_argument("--quant", default="w4g64")
    p.add_argument("--attention", default="hysparse-1:3")
    p.add_argument("--attention-options", default='{"window": 32, "block_size": 16, "top_k": 4}')
    p.add_argument("--k", type=int, nargs="+", default=[1, 3])
    p.add_argument("--new", type=int, default=32, help="new text patches per generation")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    if args.lm:
        lm = SpeechLM.from_pretrained(args.lm, dtype=torch.float32)
        tok = load_text_tokenizer(args.lm)
        renderer = PromptRenderer(tok, SpecialTokens.from_tokenizer(tok), lm.config.speech_zeroemb_idx, 4)
        mtp = Path(args.mtp or args.lm)
        load_speech_mtp(lm, mtp)  # fails early and clearly without heads
        special = SpecialTokens.from_tokenizer(tok)
        rows += run_model(f"--lm {lm.num_parameters() / 1e6:.1f}M", lm, mtp,
                          prompts_for(lm, renderer, args, args.tokenizer), args, (special.empty, special.sostm))
        print_table(rows)
    if args.big:
        with tempfile.TemporaryDirectory() as tmp:
            tok = make_byte_text_tokenizer(tmp)
            special = SpecialTokens.from_tokenizer(tok)
            cfg = SpeechLMConfig(**{**BIG, "num_hidden_layers": args.big_layers})
            lm = SpeechLM(cfg, special.empty).init_weights(seed=0).eval()
            lm.speech_buffer_dtype = None
            mtp = random_heads(lm, Path(tmp), max(args.k))
            renderer = PromptRenderer(tok, special, cfg.speech_zeroemb_idx, 4)
            big_args = copy.copy(args)
            big_args.corpus = None
            rows += run_model(f"random {lm.num_parameters() / 1e6:.0f}M", lm, mtp,
                              prompts_for(lm, renderer, big_args, None), args, (special.empty, special.sostm))
    print(f"machine: {torch.get_num_threads()} torch thread(s); 2 shared cores, loaded by other jobs; medians over "
          f"{args.repeats} repeats x {args.prompts} prompts, {args.new} new text patches each")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
