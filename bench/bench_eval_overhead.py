"""Runner overhead per sample: ``eval`` (reader, record building, JSONL append + fsync, progress bar) vs calling
``MimoAudio.asr`` directly on the same files, with the same model object. Goal: <= 5%.

Also times the runner around an instant model (a no-op adapter), which isolates its own cost per sample
from the model's run-to-run noise. Rounds alternate direct / runner so a load spike hits both.

    PYTHONPATH=. python bench/bench_eval_overhead.py [--samples 8] [--rounds 3]

The development machine is shared by several jobs: absolute times are noisy, medians of alternating rounds
are what to compare.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common.machine import cpu_name

TEXTS = ("please bring me a cup of tea", "the cat sat on the warm mat", "we will meet at the station",
         "she painted the fence green", "a cold wind blew all night", "he read the old map",
         "the boat drifted toward the harbor", "close the window before you leave")


def make_data(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        wav = root / f"u{i}.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", TEXTS[i % len(TEXTS)], "-o", str(wav)], check=True,
                       capture_output=True)
        lines.append(f'{{"id": "u{i}", "audio": "u{i}.wav", "reference": "{TEXTS[i % len(TEXTS)]}"}}')
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import torch

    from eval.models.base import ModelAdapter, Output
    from eval.models.mimo import MimoAdapter
    from eval.runner import run_task
    from eval.tasks import get_task

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    data = make_data(tmp / "data", args.samples)
    adapter = MimoAdapter()
    task = get_task("jsonl_asr")
    gen = dict(task.generation)
    paths = sorted(data.glob("u*.wav"), key=lambda q: int(q.stem[1:]))
    adapter.m.asr(str(paths[0]), **gen)  # warm-up

    class Instant(ModelAdapter):
        def label(self) -> str:
            return "instant"

        def fingerprint(self) -> dict:
            return {"adapter": "instant"}

        def asr(self, audio, language, gen) -> Output:
            return Output(text="x", prompt="p")

    # Paired, interleaved timing: each sample runs directly and through the runner's per-sample path
    # (call_model + record + JSONL append/fsync), in alternating order, so load spikes hit both sides.
    from eval import records
    from eval.data import get_reader
    from eval.runner import infer_one

    samples = list(get_reader("jsonl")(data, "test").samples())
    direct, runner = [], []
    out = tmp / "paired"
    out.mkdir()
    key = {"model": adapter.label(), "fingerprint": "bench", "gen_hash": task.generation_hash()}
    for r in range(args.rounds):
        for j, smp in enumerate(samples):
            order = ("direct", "runner") if (r + j) % 2 == 0 else ("runner", "direct")
            for which in order:
                t0 = time.perf_counter()
                if which == "direct":
                    adapter.m.asr(smp.audio, **gen)
                    direct.append(time.perf_counter() - t0)
                else:
                    records.append(out / "samples.jsonl", infer_one(task, smp, adapter, out, key))
                    runner.append(time.perf_counter() - t0)
    instant = []
    for r in range(args.rounds):  # the whole run_task (reader, fingerprint, resume scan, bar) around a no-op model
        t0 = time.perf_counter()
        run_task(task, Instant(), data, tmp / f"inst{r}", progress=True)
        instant.append((time.perf_counter() - t0) / len(paths))
    d, rr, i = sum(direct) / len(direct), sum(runner) / len(runner), statistics.median(instant)
    ratios = [b / a for a, b in zip(direct, runner)]
    cpu = cpu_name()
    print(f"\nCPU: {cpu} (shared, loaded by other jobs); torch threads 1; {args.samples} ASR samples x "
          f"{args.rounds} rounds, paired and interleaved")
    print("| path | mean s / sample | vs direct |\n|---|---|---|")
    print(f"| MimoAudio.asr directly | {d:.4f} | 1.000 |")
    print(f"| eval runner per-sample path, same model | {rr:.4f} | {rr / d:.3f} (median of pairs "
          f"{statistics.median(ratios):.3f}) |")
    print(f"| eval run_task around an instant model (runner's own cost) | {i:.4f} | {i / d:.2%} of a direct call |")
    print(f"\nrunner overhead: {100 * (rr / d - 1):+.1f}% (mean), {100 * (statistics.median(ratios) - 1):+.1f}% "
          f"(median of paired ratios); runner's own cost {100 * i / d:.2f}% per sample (goal <= 5%)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
