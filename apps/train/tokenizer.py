"""Recipe: train a MiMo-Audio tokenizer (the official network, a smaller preset) for reconstruction.

Loss = multi-scale log-mel L1 of the resynthesised waveform + L1 of the decoder's coarse mel against the
encoder's input mel + RVQ commitment. The RVQ codebooks are not trained by gradient: they follow the
encoder output by exponential moving averages (the buffers ``cluster_size`` / ``embed_avg`` of the official
state_dict), are initialised from the first batch, and codes that fall out of use are replaced by vectors
of the current batch. The gradient passes the quantiser straight through. No adversarial loss (yet).

    PYTHONPATH=. python -m apps.train.tokenizer --corpus corpus-small --out runs/tok --steps 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from apps.train.data import WavCrops, corpus_rows, read_wav
from apps.train.state import (
    load_optimizer_tensors,
    progress,
    read_optimizer,
    read_state,
    resolve_device,
    save_checkpoint,
    seed_step,
)
from tokenizer import checkpoint
from tokenizer.api import init_random
from tokenizer.config import PRESETS, TokenizerConfig
from tokenizer.mel import LogMel, mel_filterbank
from tokenizer.model import MiMoAudioTokenizerModel
from tokenizer.modules.rvq import EuclideanCodebook, ResidualVectorQuantizer

log = logging.getLogger("mimo-audio.train")

# The embedded default's size: the official structure (25 Hz, 8 codebooks of the LM's sizes, 128 mels,
# iSTFT vocoder) at ~1/300 of the width x depth. Official front-end and frame rate, so codes are compatible
# in shape with everything downstream.
SMALL: dict = dict(
    PRESETS["official"], d_model=192, encoder_layers=4, encoder_skip_layer_id=2, encoder_attention_heads=4,
    encoder_ffn_dim=768, decoder_layers=4, decoder_attention_heads=4, decoder_ffn_dim=768, vocoder_dim=192,
    vocoder_intermediate_dim=576, vocoder_num_layers=4, vocoder_attention_heads=4, num_quantizers=8,
    codebook_size=[1024, 1024] + [128] * 6,
)
TRAIN_PRESETS = {"small": SMALL, "tiny": dict(PRESETS["tiny"], num_quantizers=8)}

MEL_SCALES = ((256, 64, 32), (512, 128, 64), (1024, 256, 128), (2048, 512, 128))  # n_fft, hop, n_mels


@dataclass
class TokenizerTrainConfig:
    corpus: str
    out: str
    preset: str = "small"
    steps: int = 2000
    batch_size: int = 8
    crop_seconds: float = 2.0
    lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    commitment: float = 0.25
    coarse_mel_weight: float = 1.0
    ema_decay: float = 0.99
    dead_code_fraction: float = 0.1  # a code whose EMA usage falls below this share of the mean usage restarts
    init_vectors: int = 8192  # k-means initialisation of the codebooks on this many encoder vectors (>> codes)
    kmeans_iters: int = 10
    vocoder_teacher: float = 0.5  # share of batch items whose vocoder input is the ground-truth mel
    train_vocoder: bool = True  # False: codec only (coarse-mel L1), a cheaper first phase
    freeze_codec: bool = False  # train only decoder + vocoder: encoder and codebooks fixed, so codes stay valid
    bf16: bool = False  # bf16 autocast for matmuls/convs (fp32 weights, losses and front-end): ~2x on AVX512-BF16
    init_from: str | None = None  # official-layout tokenizer dir to start from (weights only, fresh optimiser)
    seed: int = 0
    stop_at: int | None = None  # end this invocation at this step (resume later); the schedule keeps `steps`
    save_every: int = 200
    log_every: int = 10
    device: str | None = None
    progress: bool = True
    eval_items: int = 8
    extra: dict = field(default_factory=dict)

    def model_config(self) -> TokenizerConfig:
        if self.preset not in TRAIN_PRESETS:
            raise ValueError(f"unknown tokenizer training preset {self.preset!r}; choose from {sorted(TRAIN_PRESETS)}")
        return TokenizerConfig.from_dict(dict(TRAIN_PRESETS[self.preset]))


# ---------------------------------------------------------------- RVQ training step
@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on x [N, D] -> (centroids [k, D], cluster sizes [k]). Empty clusters restart on points."""
    n = x.shape[0]
    centroids = x[torch.randint(0, n, (k,), generator=gen)].clone()
    if n < k:  # fewer points than codes: jitter the duplicates apart
        centroids += 1e-3 * x.std() * torch.randn(centroids.shape, generator=gen)
    book = EuclideanCodebook(x.shape[1], k)
    counts = torch.zeros(k)
    for _ in range(iters):
        book.embed = centroids
        idx = book.encode(x)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            centroids[empty] = x[torch.randint(0, n, (int(empty.sum()),), generator=gen)]
    return centroids, counts


@torch.no_grad()
def init_codebooks(q: ResidualVectorQuantizer, x: torch.Tensor, iters: int, seed: int, batch_vectors: int) -> None:
    """Residual k-means: codebook i is fitted to what codebooks 0..i-1 leave. Usage counts are scaled to one
    batch (``batch_vectors``) so the EMA and the dead-code threshold start from their steady state."""
    gen = torch.Generator().manual_seed(seed)
    residual = x.float().cpu()
    for i in range(q.n_q):
        book = q.codebook(i)
        centroids, counts = kmeans(residual, book.embed.shape[0], iters, gen)
        size = counts * batch_vectors / residual.shape[0]
        dev = book.embed.device
        book.embed.copy_(centroids.to(dev))
        book.cluster_size.copy_(size.to(dev))
        book.embed_avg.copy_((centroids * size[:, None]).to(dev))
        book.inited.fill_(1.0)
        residual = residual - centroids[book.encode(residual)]


@torch.no_grad()
def _ema_update(book: EuclideanCodebook, x: torch.Tensor, idx: torch.Tensor, decay: float, dead: float) -> int:
    k = book.embed.shape[0]
    counts = torch.bincount(idx, minlength=k).to(x.dtype)
    sums = torch.zeros_like(book.embed).index_add_(0, idx, x)
    book.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    book.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
    n = book.cluster_size.sum()
    smoothed = (book.cluster_size + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing: no division by zero
    book.embed.copy_(book.embed_avg / smoothed[:, None])
    # Dead-code replacement, relative to the mean usage per code (an absolute threshold never fires when a
    # batch has fewer vectors than the codebook has codes). Restarted codes get the mean usage, so they have
    # ~ln(1/dead) / (1 - decay) steps to win vectors before they expire again.
    mean_usage = x.shape[0] / k
    expired = book.cluster_size < dead * mean_usage
    n_dead = int(expired.sum())
    if n_dead:
        fresh = x[torch.randint(0, x.shape[0], (n_dead,), device=x.device)]
        book.embed[expired] = fresh
        book.embed_avg[expired] = fresh * mean_usage
        book.cluster_size[expired] = mean_usage
    return n_dead


def _perplexity(idx: torch.Tensor, k: int) -> float:
    p = torch.bincount(idx, minlength=k).float()
    p = p / p.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def rvq_train_forward(q: ResidualVectorQuantizer, x: torch.Tensor, decay: float, dead: float,
                      update: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, list[float]]:
    """x [N, D] -> (straight-through quantised x, commitment loss, codes [n_q, N], replaced codes, per-codebook
    perplexity of this batch's codes)."""
    residual = x.float()
    total = torch.zeros_like(residual)
    commit = residual.new_zeros(())
    codes, replaced, ppl = [], 0, []
    for i in range(q.n_q):
        book = q.codebook(i)
        r = residual.detach()
        idx = book.encode(r)
        qv = book.decode(idx)
        commit = commit + F.mse_loss(residual, qv.detach())
        ppl.append(_perplexity(idx, book.embed.shape[0]))
        if update:
            replaced += _ema_update(book, r, idx, decay, dead)
        total = total + qv
        residual = residual - qv.detach()
        codes.append(idx)
    return x + (total - x).detach(), commit / q.n_q, torch.stack(codes), replaced, ppl


# ---------------------------------------------------------------- losses
class MultiScaleMel(torch.nn.Module):
    """Mean L1 distance of log-mel spectrograms at several resolutions (batched waveforms [B, N])."""

    def __init__(self, sample_rate: int, scales=MEL_SCALES):
        super().__init__()
        self.scales = [(n_fft, hop) for n_fft, hop, _ in scales]
        for i, (n_fft, _, n_mels) in enumerate(scales):
            self.register_buffer(f"fb{i}", mel_filterbank(n_fft // 2 + 1, sample_rate, n_mels, 0.0, sample_rate / 2),
                                 persistent=False)
            self.register_buffer(f"win{i}", torch.hann_window(n_fft), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = pred.new_zeros(())
        for i, (n_fft, hop) in enumerate(self.scales):
            fb, win = getattr(self, f"fb{i}"), getattr(self, f"win{i}")
            mels = []
            for w in (pred, target):
                mag = torch.stft(w, n_fft, hop, window=win, center=True, return_complex=True).abs()
                mels.append(torch.log(torch.clamp(mag.transpose(1, 2) @ fb, min=1e-5)))
            loss = loss + F.l1_loss(mels[0], mels[1])
        return loss / len(self.scales)


def _frontend(cfg: TokenizerConfig) -> LogMel:
    return LogMel(cfg.sampling_rate, cfg.nfft, cfg.window_size, cfg.hop_length, cfg.n_mels, cfg.fmin, cfg.fmax)


def train_forward(model: MiMoAudioTokenizerModel, frontend: LogMel, msmel: MultiScaleMel, wav: torch.Tensor,
                  tc: TokenizerTrainConfig, update: bool = True,
                  gen: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """One batch of waveforms [B, N] through encoder, training RVQ, decoder and vocoder: the losses.

    The codec (encoder, RVQ, decoder) learns from the coarse-mel L1; the vocoder learns the waveform from a
    detached mel, the ground truth for a ``vocoder_teacher`` share of the items and the decoder's coarse mel
    for the rest. Decoupled, each half learns from the first step instead of waiting for the other.
    """
    with torch.autocast(wav.device.type, enabled=False):  # targets stay fp32
        mels = [frontend(w) for w in wav]
    with torch.set_grad_enabled(torch.is_grad_enabled() and not tc.freeze_codec):
        h, lengths = model.encoder(mels)
    hq, commit, _, replaced, ppl = rvq_train_forward(
        model.quantizer, h, tc.ema_decay, tc.dead_code_fraction, update and not tc.freeze_codec)
    gen = gen or np.random.default_rng(0)
    teacher = gen.random(wav.shape[0]) < tc.vocoder_teacher
    outs, coarse_l1 = [], h.new_zeros(())
    for b, lat in enumerate(hq.split(lengths)):
        coarse = model.decoder.coarse_mel(lat)  # [T100, n_mels]
        n = min(coarse.shape[0], mels[b].shape[1])
        coarse_l1 = coarse_l1 + F.l1_loss(coarse[:n].float(), mels[b].T[:n])
        if tc.train_vocoder:
            voc_in = mels[b].T[:n] if teacher[b] else coarse[:n].detach()
            y = model.decoder.vocoder(voc_in)[: wav.shape[1]].float()
            outs.append(F.pad(y, (0, wav.shape[1] - y.shape[0])))
    with torch.autocast(wav.device.type, enabled=False):
        mel = msmel(torch.stack(outs), wav) if outs else h.new_zeros(())
    coarse_l1 = coarse_l1 / wav.shape[0]
    total = mel + tc.coarse_mel_weight * coarse_l1 + tc.commitment * commit
    out = {"loss": total, "mel": mel, "coarse_mel": coarse_l1, "commit": commit,
           "replaced": torch.tensor(float(replaced))}
    out.update({f"ppl{i}": torch.tensor(v) for i, v in enumerate(ppl)})
    return out


@torch.no_grad()
def initialise_codebooks(model: MiMoAudioTokenizerModel, frontend: LogMel, data: WavCrops,
                         tc: TokenizerTrainConfig, device: torch.device) -> None:
    """k-means codebooks on the encoder output of about ``init_vectors`` vectors (seeded, before step 1)."""
    # Far more vectors than codes: with fewer, k-means puts a code on every vector, the residuals vanish and
    # the later codebooks collapse onto zero.
    feats, n = [], 0
    while n < tc.init_vectors:
        wav = data.batch(tc.batch_size, np.random.default_rng(seed_step(tc.seed, -1 - len(feats)))).to(device)
        h, _ = model.encoder([frontend(w) for w in wav])
        feats.append(h.float())
        n += h.shape[0]
    x = torch.cat(feats)
    init_codebooks(model.quantizer, x, tc.kmeans_iters, tc.seed, batch_vectors=x.shape[0] // len(feats))
    log.info("codebooks initialised by k-means on %d encoder vectors", x.shape[0])


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def resynthesis_metrics(model: MiMoAudioTokenizerModel, corpus: str | Path, split: str, items: int,
                        device: torch.device) -> dict[str, float]:
    """Encode -> decode held-out utterances; mean log-mel L1 (tokenizer front-end) and waveform SNR."""
    cfg = model.config
    frontend = _frontend(cfg).to(device)
    model.eval()
    rows = corpus_rows(corpus, split)
    rows = [r for r in rows if r["style"] == "plain"][:items] or rows[:items]
    l1s, snrs = [], []
    for r in rows:
        wav = read_wav(corpus, r, cfg.sampling_rate).to(device)
        codes = model.encode([frontend(wav)], cfg.num_quantizers)[0]
        y = model.decode(codes)[: wav.shape[0]]
        y = F.pad(y, (0, wav.shape[0] - y.shape[0]))
        l1s.append(float((frontend(y) - frontend(wav)).abs().mean()))
        snrs.append(float(10 * torch.log10(wav.pow(2).sum() / (wav - y).pow(2).sum().clamp_min(1e-12))))
    model.train()
    return {"mel_l1": float(np.mean(l1s)), "snr_db": float(np.mean(snrs)), "items": len(rows)}


# ---------------------------------------------------------------- the loop
def _save_model(model: MiMoAudioTokenizerModel):
    def save(path: Path) -> None:  # the official layout, as AudioTokenizer.save_pretrained writes it
        path.mkdir(parents=True, exist_ok=True)
        model.config.save_json(path / checkpoint.CONFIG)
        checkpoint.save(model, path)

    return save


def _lr(tc: TokenizerTrainConfig, step: int) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    frac = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _optimizer(model: MiMoAudioTokenizerModel, tc: TokenizerTrainConfig):
    if tc.freeze_codec:  # codes must stay valid for an LM trained on them: only the decoder side learns
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    params = {p: n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(list(params), lr=tc.lr, betas=(0.8, 0.99), weight_decay=tc.weight_decay)
    return opt, params


def build(tc: TokenizerTrainConfig, device: torch.device):
    cfg = tc.model_config()
    torch.manual_seed(tc.seed)
    model = MiMoAudioTokenizerModel(cfg)
    init_random(model, tc.seed)
    if tc.init_from:  # start from another run's weights (e.g. a second phase with --freeze-codec)
        checkpoint.load_into(model, checkpoint.read_state_dict(Path(tc.init_from)))
        log.info("initialised from %s", tc.init_from)
    model.to(device).train()
    opt, names = _optimizer(model, tc)
    return model, opt, names


def train_tokenizer(tc: TokenizerTrainConfig) -> dict:
    """Train (or resume from ``out/last``) and write ``out/model`` in the official layout. Returns the state."""
    device = resolve_device(tc.device)
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    model, opt, names = build(tc, device)
    cfg = model.config
    state = {"step": 0, "seed": tc.seed, "history": [], "config": asdict(tc)}
    last = out / "last"
    if (last / "state.json").is_file():
        state = read_state(last)
        checkpoint.load_into(model, {k: v.to(device) for k, v in checkpoint.read_state_dict(last / "model").items()})
        model.to(device).train()
        opt, names = _optimizer(model, tc)
        load_optimizer_tensors(opt, names, read_optimizer(last))
        log.info("resuming from %s at step %d", last, state["step"])
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tokenizer %s: %.2f M parameters on %s", tc.preset, n_params / 1e6, device)
    crop = int(tc.crop_seconds * cfg.sampling_rate) // cfg.samples_per_frame * cfg.samples_per_frame
    data = WavCrops(tc.corpus, "train", cfg.sampling_rate, crop)
    frontend, msmel = _frontend(cfg).to(device), MultiScaleMel(cfg.sampling_rate).to(device)
    metrics_file = open(out / "metrics.jsonl", "a", buffering=1)  # line-buffered: readable while running
    if not bool(model.quantizer.codebook(0).inited.item()):
        initialise_codebooks(model, frontend, data, tc, device)
    bar = progress(tc.steps, state["step"], "tokenizer", tc.progress)
    t_start = time.perf_counter()
    steps_run = 0
    try:
        end = min(tc.steps, tc.stop_at or tc.steps)
        while state["step"] < end:
            step = state["step"]
            s = seed_step(tc.seed, step)
            wav = data.batch(tc.batch_size, np.random.default_rng(s)).to(device)
            for g in opt.param_groups:
                g["lr"] = _lr(tc, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                losses = train_forward(model, frontend, msmel, wav, tc, gen=np.random.default_rng(s + 1))
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            state["step"] = step + 1
            steps_run += 1
            row = {"step": step + 1, **{k: round(float(v.detach()), 5) for k, v in losses.items()}}
            state["history"].append(row)
            metrics_file.write(json.dumps(row) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", mel=f"{row['mel']:.3f}")
            if (step + 1) % tc.log_every == 0:
                log.info("step %d loss %.4f mel %.4f coarse %.4f commit %.4f replaced %d ppl %s", step + 1,
                         row["loss"], row["mel"], row["coarse_mel"], row["commit"], row["replaced"],
                         " ".join(f"{row[f'ppl{i}']:.0f}" for i in range(model.quantizer.n_q)))
            if (step + 1) % tc.save_every == 0 or step + 1 == end:
                save_checkpoint(last, _save_model(model), opt, names, state)
    finally:
        bar.close()
        metrics_file.close()
    state["seconds_per_step"] = (time.perf_counter() - t_start) / max(1, steps_run)
    _save_model(model)(out / "model")
    if tc.eval_items:
        state["eval"] = {split: resynthesis_metrics(model, tc.corpus, split, tc.eval_items, device)
                         for split in ("test",)}
        log.info("resynthesis on held-out test utterances: %s", state["eval"])
    (out / "summary.json").write_text(json.dumps({k: v for k, v in state.items() if k != "history"}, indent=1))
    return state


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TokenizerTrainConfig(corpus="", out="")
    p.add_argument("--corpus", required=True, help="corpus directory (mimo-audio corpus build --out DIR)")
    p.add_argument("--out", required=True, help="run directory: last/ (resumable), model/ (official layout)")
    p.add_argument("--size", "--preset", dest="preset", default=d.preset, choices=sorted(TRAIN_PRESETS),
                   help="model size (--preset is the old spelling)")
    for name in ("steps", "batch_size", "warmup", "seed", "save_every", "log_every", "eval_items"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("init_vectors", "kmeans_iters"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("crop_seconds", "lr", "commitment", "ema_decay", "dead_code_fraction", "vocoder_teacher"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--no-vocoder", dest="train_vocoder", action="store_false",
                   help="train the codec only (coarse-mel L1): a cheaper first phase")
    p.add_argument("--freeze-codec", action="store_true",
                   help="train only the decoder and vocoder (encoder + codebooks fixed: codes stay valid)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights and losses); ~2x faster on CPUs "
                   "with AVX512-BF16 / AMX and on GPUs")
    p.add_argument("--init-from", default=None, help="tokenizer dir (official layout) to start from")
    p.add_argument("--stop-at", type=int, default=None, help="stop at this step (resumable; lr schedule keeps --steps)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> TokenizerTrainConfig:
    names = ("corpus", "out", "preset", "steps", "batch_size", "warmup", "seed", "save_every", "log_every",
             "eval_items", "crop_seconds", "lr", "commitment", "ema_decay", "device", "stop_at", "init_vectors",
             "kmeans_iters", "dead_code_fraction", "vocoder_teacher", "freeze_codec", "init_from", "train_vocoder",
             "bf16")
    return TokenizerTrainConfig(**{n: getattr(args, n) for n in names}, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = train_tokenizer(config_from_args(p.parse_args(argv)))
    print(json.dumps({k: v for k, v in state.items() if k not in ("history", "config")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
