"""Fit K MTP heads on a frozen base model, on CPU, from an offline text.

    python -m apps.train.mtp_text --model DIR --heads 3 --steps 300 [--max-minutes 12] [--out DIR]

Objective: self-distillation. Head k at position i sees the base model's (or head k-1's) hidden state
at i and the text token t_{i+k}, and is trained to reproduce the *base model's* next-token
distribution at position i+k (KL over the union of the base model's top candidates in the batch, which
keeps the 49k-wide LM head affordable on a CPU). Matching the base model, not the text, is what raises
acceptance. Heads start from the base model's last block (see ``MTPDrafter.init_from_target``).

Resumable: every ``--save-every`` steps the heads, the AdamW state and the data position are written
to ``mtp.train.safetensors`` in the output directory; rerunning the same command continues from it.
The final heads go to ``mtp.safetensors`` beside the model (or in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from efficient.spec.mtp import MTP_FILENAME, MTPConfig, MTPDrafter
from efficient.spec.target import CausalLMTarget

log = logging.getLogger(__name__)
STATE_FILENAME = "mtp.train.safetensors"


def token_stream(tokenizer, text: str) -> torch.Tensor:
    ids: list[int] = []
    for para in text.split("\n\n"):
        ids.extend(tokenizer(para + "\n\n", add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def head_losses(
    drafter: MTPDrafter, hidden: torch.Tensor, base_logits: torch.Tensor, tokens: torch.Tensor, top: int = 32
) -> tuple[list[torch.Tensor], list[float]]:
    """Per-head distillation losses and teacher-forced top-1 agreement with the base model.

    hidden [B, L, d] (pre-norm), base_logits [B, L, V], tokens [B, L].
    """
    B, L, _ = hidden.shape
    cand = torch.unique(torch.cat([base_logits.topk(top, dim=-1).indices.flatten(), tokens.flatten()]))
    lm = drafter._shared["lm_head"].weight[cand]
    base_c = base_logits[..., cand]
    losses, agree = [], []
    prev = hidden
    for k in range(1, len(drafter.heads) + 1):
        n = L - k
        head = drafter.heads[k - 1]
        emb = drafter.embed(tokens[:, k : k + n])
        out = head(emb, prev[:, :n], torch.arange(n))
        norm = head.final_norm if head.final_norm is not None else drafter._shared["final_norm"]
        logits = F.linear(norm(out), lm)
        target = base_c[:, k : k + n]
        loss = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean")
        losses.append(loss / n)
        agree.append((logits.argmax(-1) == target.argmax(-1)).float().mean().item())
        prev = out
    return losses, agree


def _save_state(path: Path, drafter: MTPDrafter, opt: torch.optim.Optimizer, step: int, cursor: int) -> None:
    tensors = {f"heads.{k}": v.detach().contiguous() for k, v in drafter.heads.state_dict().items()}
    for i, p in enumerate(drafter.heads.parameters()):
        st = opt.state.get(p)
        if st:
            tensors[f"opt.{i}.exp_avg"] = st["exp_avg"].contiguous()
            tensors[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
            tensors[f"opt.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    meta = {"step": str(step), "cursor": str(cursor)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def _load_state(path: Path, drafter: MTPDrafter, opt: torch.optim.Optimizer) -> tuple[int, int]:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        t = {k: fh.get_tensor(k) for k in fh.keys()}
    drafter.heads.load_state_dict({k[len("heads."):]: v for k, v in t.items() if k.startswith("heads.")})
    for i, p in enumerate(drafter.heads.parameters()):
        if f"opt.{i}.exp_avg" in t:
            opt.state[p] = {"exp_avg": t[f"opt.{i}.exp_avg"], "exp_avg_sq": t[f"opt.{i}.exp_avg_sq"],
                            "step": t[f"opt.{i}.step"].reshape(())}
    return int(meta["step"]), int(meta["cursor"])


def frequent_tokens(stream: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    counts = torch.bincount(stream, minlength=vocab)
    return counts.topk(min(n, vocab)).indices.sort().values


def train(args: argparse.Namespace) -> Path:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.textdata import offline_english_text

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a transformers model directory (no config.json)")
    out_dir = Path(args.out) if args.out else model_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    target = CausalLMTarget(model)
    cfg = MTPConfig.from_target(model.config, num_heads=args.heads, sliding_window=args.window)
    drafter = MTPDrafter(cfg, target.embed, target.final_norm, target.lm_head)
    text = offline_english_text("train")
    stream = token_stream(tok, text[: args.max_chars] if args.max_chars else text)
    with torch.no_grad():
        model(input_ids=stream[None, :128], use_cache=False)
        rms = float(target._captured.pow(2).mean(-1).sqrt().median())
    drafter.init_from_target(target.decoder_layers[-1], hidden_rms=rms)
    if args.draft_vocab:
        drafter.draft_vocab = frequent_tokens(stream, args.draft_vocab, cfg.vocab_size)
    opt = torch.optim.AdamW(drafter.heads.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    state_path = out_dir / STATE_FILENAME
    step, cursor = 0, 0
    if state_path.is_file() and not args.restart:
        step, cursor = _load_state(state_path, drafter, opt)
        log.info("resuming from %s at step %d", state_path, step)
    chunk = args.seq_len * args.batch
    if len(stream) <= chunk:
        raise ValueError(f"the training text has {len(stream)} tokens, fewer than one batch ({chunk})")
    t0 = time.time()
    bar = tqdm(total=args.steps, initial=step, desc=f"MTP x{args.heads}", unit="step")
    while step < args.steps:
        if args.max_minutes and time.time() - t0 > args.max_minutes * 60:
            log.info("time budget of %.1f min reached at step %d", args.max_minutes, step)
            break
        if cursor + chunk > len(stream):
            cursor = 0
        tokens = stream[cursor : cursor + chunk].view(args.batch, args.seq_len)
        cursor += chunk
        with torch.no_grad():
            out = model(input_ids=tokens, use_cache=False)
            hidden, base_logits = target._captured, out.logits
            target._captured = None
        lr = args.lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        losses, agree = head_losses(drafter, hidden, base_logits, tokens)
        loss = sum(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(drafter.heads.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", agree="/".join(f"{a:.2f}" for a in agree))
        if step % args.save_every == 0:
            _save_state(state_path, drafter, opt, step, cursor)
    bar.close()
    _save_state(state_path, drafter, opt, step, cursor)
    path = drafter.save(out_dir, MTP_FILENAME)
    (out_dir / "mtp.train.json").write_text(json.dumps(
        {"steps": step, "heads": args.heads, "seq_len": args.seq_len, "batch": args.batch, "lr": args.lr,
         "minutes_this_run": round((time.time() - t0) / 60, 2), "draft_vocab": args.draft_vocab}, indent=1))
    log.info("saved %s after %d steps", path, step)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apps.train.mtp_text", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="transformers model directory (frozen base)")
    p.add_argument("--heads", type=int, default=3, help="number of MTP heads K")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--window", type=int, default=128, help="sliding window of the heads' attention")
    p.add_argument("--draft-vocab", type=int, default=8192,
                   help="restrict drafts to the N most frequent training tokens (0 = full vocabulary)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this much wall time")
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--out", default=None, help="output directory (default: the model directory)")
    p.add_argument("--restart", action="store_true", help="ignore an existing training state")
    p.add_argument("--max-chars", type=int, default=0, help="use only the first N characters of the text")
    p.add_argument("--threads", type=int, default=0, help="torch threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.heads < 1:
        raise SystemExit("--heads must be >= 1")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
