"""The embedded default model stored in fp32 vs bf16: size, load time, LM speed, tokenizer code agreement.

    python -m bench.bench_default_model                          # the installed default assets
    python -m bench.bench_default_model --tokenizer runs/tok/model --lm runs/lm/model

Both exports are made side by side in a temporary folder by apps/scripts/export_default_model.py (run as a
command, as a user would), then timed
interleaved (A, B, C, A, B, C ...) in one process; figures are medians over --repeats. Three variants: fp32
files; bf16 files run in fp32 (what ``MimoAudio.from_pretrained()`` does with the embedded default); bf16 files
run in bf16 (``dtype=None`` with an explicit path). The tokenizer always runs in fp32 (its bf16 export only
changes storage), so "codes equal" measures what rounding the stored weights to bf16 costs. The LM step time is
measured with a fixed number of patches (stop tokens blocked), so it does not depend on what the model says.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mimo_audio import MimoAudio


def export_default_model(tok_src: Path, lm_src: Path, dtype: str, tokenizer_out: Path, lm_out: Path) -> dict:
    """Run the export script (apps/scripts/export_default_model.py) and return the summary it prints."""
    cmd = [sys.executable, "-m", "apps.scripts.export_default_model", "--tokenizer", str(tok_src), "--lm",
           str(lm_src), "--dtype", dtype, "--tokenizer-out", str(tokenizer_out), "--lm-out", str(lm_out),
           "--budget-mb", "1e9"]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


def _speech(tmp: Path) -> torch.Tensor | str:
    if shutil.which("flite"):
        wav = tmp / "speech.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", "The birch canoe slid on the smooth planks. Glue the "
                        "sheet to the dark blue background.", "-o", str(wav)], check=True, capture_output=True)
        return str(wav)
    t = torch.arange(24000 * 4) / 24000.0
    return (0.3 * torch.sin(2 * torch.pi * 180 * t) * torch.sin(2 * torch.pi * 2 * t), 24000)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the installed default)")
    p.add_argument("--lm", default=None, help="speech-LM checkpoint (default: the installed default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--patches", type=int, default=24, help="LM patches generated per timing (6.25 = 1 s of audio)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import mimo_audio.defaults
    import tokenizer.defaults

    try:
        tok_src = Path(args.tokenizer) if args.tokenizer else tokenizer.defaults.default_tokenizer_dir()
        lm_src = Path(args.lm) if args.lm else mimo_audio.defaults.default_model_dir()
    except FileNotFoundError as exc:  # a source checkout before the export: nothing to measure (`make bench` goes on)
        print(f"skipped: {exc}")
        return 0
    load = os.getloadavg()[0]
    print(f"sources: tokenizer {tok_src}, LM {lm_src}; torch {torch.__version__}, {args.threads} threads, "
          f"load average {load:.1f} at start (a shared machine: read ratios, not absolute times)")
    with tempfile.TemporaryDirectory(prefix="bench-default-") as tmpdir:
        tmp = Path(tmpdir)
        sizes, models = {}, {}
        for dtype in ("fp32", "bf16"):
            s = export_default_model(tok_src, lm_src, dtype=dtype, tokenizer_out=tmp / dtype / "tok",
                                     lm_out=tmp / dtype / "lm")
            sizes[dtype] = s
        speech = _speech(tmp)
        # (label, stored dtype, run dtype): the default loader runs the LM in fp32 however it is stored
        variants = (("fp32", "fp32", None), ("bf16 stored", "bf16", torch.float32), ("bf16 run", "bf16", None))
        load_s: dict[str, list[float]] = {v[0]: [] for v in variants}
        step_ms: dict[str, list[float]] = {v[0]: [] for v in variants}
        for _ in range(args.repeats):
            for label, stored, run in variants:
                t0 = time.perf_counter()
                m = MimoAudio.from_pretrained(tmp / stored / "lm", tmp / stored / "tok", device="cpu", dtype=run)
                load_s[label].append(time.perf_counter() - t0)
                models[label] = m
                t0 = time.perf_counter()
                r = m.tts("The quick brown fox jumps over the lazy dog.", preset="greedy",
                          max_new_patches=args.patches, min_new_patches=args.patches)
                step_ms[label].append(1000 * (time.perf_counter() - t0) / max(1, r.num_patches))
        codes = {d: models[d].encode_audio(speech) for d in ("fp32", "bf16 stored")}
        agree = (codes["fp32"] == codes["bf16 stored"]).float().mean(dim=1)
        text = {v[0]: models[v[0]].asr(speech, preset="greedy", max_new_patches=40) for v in variants}

    def med(x: list[float]) -> float:
        return statistics.median(x)

    labels = [v[0] for v in variants]
    print(f"\n{'':34}" + "".join(f"{x:>13}" for x in labels) + f"{'ratio to fp32':>28}")
    rows = [("tokenizer files (MB)", [sizes[v[1]]["tokenizer_mb"] for v in variants]),
            ("speech-LM files (MB)", [sizes[v[1]]["lm_mb"] for v in variants]),
            ("total (MB, budget 60)", [sizes[v[1]]["total_mb"] for v in variants]),
            ("load LM + tokenizer (s, median)", [med(load_s[x]) for x in labels]),
            ("LM ms per patch (TTS, median)", [med(step_ms[x]) for x in labels])]
    for name, vals in rows:
        ratios = " / ".join(f"{v / vals[0]:.2f}" for v in vals[1:])
        print(f"{name:34}" + "".join(f"{v:13.2f}" for v in vals) + f"{ratios:>28}")
    print(f"\ntokenizer codes equal, fp32 vs bf16 storage, per codebook: {[round(float(a), 3) for a in agree]}")
    for x in labels:
        print(f"ASR (greedy) {x:12}: {text[x]!r}")
    print(f"repeats {args.repeats}, {args.patches} patches per TTS timing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
