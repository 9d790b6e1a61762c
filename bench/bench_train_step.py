"""Speech-LM training step: fp32 vs bf16 autocast, side by side on this CPU (is ``--bf16`` worth it here?).

One forward + backward + AdamW step of the embedded default's preset on batches shaped like the recipe's
(left-padded TTS/ASR-like sequences of text and speech patches), interleaved rounds, medians.

    python -m bench.bench_train_step [--threads 1] [--rounds 5] [--vocab 2048]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from bench.common.machine import cpu_name
from mimo_audio.config import SpeechLMConfig
from mimo_audio.modeling import SpeechLM
from mimo_audio.training import speech_lm_loss


def _batch(config: SpeechLMConfig, empty: int, batch: int, patches: int, gen: torch.Generator) -> torch.Tensor:
    """Half text patches, half speech patches, random ids (speed does not depend on the values)."""
    G = config.group_size
    ids = torch.empty(batch, config.audio_channels + 1, patches * G, dtype=torch.long)
    ids[:, 0] = torch.randint(0, config.vocab_size - 64, (batch, patches * G), generator=gen)
    for c, v in enumerate(config.speech_vocab_size):
        ids[:, c + 1] = torch.randint(0, v - 1, (batch, patches * G), generator=gen)
    speech = torch.rand(batch, patches, generator=gen) < 0.5
    ids[:, 0, ::G][speech] = empty
    for c, e in enumerate(config.speech_zeroemb_idx):
        ids[:, c + 1].view(batch, patches, G)[~speech] = e
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patches", type=int, default=64, help="patches per sequence (the BPE recipe's mean is ~60)")
    p.add_argument("--vocab", type=int, default=2048)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(SpeechLMConfig.named("small"), vocab_size=args.vocab)
    empty = args.vocab - 1
    model = SpeechLM(config, empty).init_weights(seed=0)
    model.speech_buffer_dtype = None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = _batch(config, empty, args.batch, args.patches, torch.Generator().manual_seed(0))

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = speech_lm_loss(model, ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    step(False), step(True)  # warm-up
    for _ in range(args.rounds):
        times["fp32"].append(step(False))
        times["bf16"].append(step(True))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CPU: {cpu_name()}; threads {args.threads}; batch {args.batch} x {args.patches} patches; "
          f"vocab {args.vocab}; {args.rounds} interleaved rounds")
    print("| step | median s |\n|---|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} |")
    print(f"bf16 autocast speedup: {med['fp32'] / med['bf16']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
