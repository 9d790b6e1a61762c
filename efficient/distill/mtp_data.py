"""Self-distillation data for MTP heads, cheaply: batched greedy rollouts that keep the target's hidden states.

One pass per batch of prompts (prefill, then one forward per new token with the KV cache) yields, for every
position ``i`` of every row, the token ``x_i``, the target's pre-final-norm hidden state ``h_i`` (what MTP
head 1 reads) and the target's top-1 ``a_i`` (its greedy next token, which is ``x_{i+1}`` on the generated
part). Heads then train on these tensors without running the backbone again (:mod:`.mtp_cached`).

The rollouts may run in bfloat16 (about twice as fast on CPUs with bf16 matrix units): the data then comes
from the target in bf16. Verification at decode time stays with the target itself, so this choice moves
acceptance, never the output.

Shards are written as they finish (safetensors), so a long generation can be stopped and resumed.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from .._hf import cache_kwargs, output_cache
from .mtp import final_norm

log = logging.getLogger(__name__)

SHARD_GLOB = "rollouts-*.safetensors"


@torch.no_grad()
def rollouts_with_hidden(model: nn.Module, prompts: torch.Tensor, new_tokens: int) -> dict[str, torch.Tensor]:
    """Greedy rollouts of ``prompts [B, P]``: ``tokens``/``labels [B, P + new_tokens]``, ``hidden [B, L, d]``.

    ``labels[:, i]`` is the target's argmax after ``tokens[:, : i + 1]``; ``hidden`` is stored in the model's
    dtype.
    """
    if prompts.dim() != 2 or prompts.shape[1] < 1 or new_tokens < 1:
        raise ValueError(f"prompts must be [batch, length >= 1] and new_tokens >= 1, got {tuple(prompts.shape)}, "
                         f"{new_tokens}")
    captured: list[torch.Tensor] = []
    hook = final_norm(model).register_forward_hook(lambda _m, inp, _o: captured.append(inp[0].detach()))
    device = next(model.parameters()).device
    try:
        ids = prompts.to(device)
        out = model(input_ids=ids, use_cache=True)
        labels = [out.logits.argmax(-1)]
        tokens = [ids]
        for _ in range(new_tokens):  # the last forward gives the hidden state and label of the last token
            nxt = labels[-1][:, -1:]
            tokens.append(nxt)
            out = model(input_ids=nxt, use_cache=True, **cache_kwargs(model, output_cache(out)))
            labels.append(out.logits.argmax(-1))
    finally:
        hook.remove()
    return {"tokens": torch.cat(tokens, 1).cpu().to(torch.int32), "labels": torch.cat(labels, 1).cpu().to(torch.int32),
            "hidden": torch.cat(captured, 1).cpu()}


def generate_rollout_shards(model: nn.Module, prompts: torch.Tensor, new_tokens: int, out_dir: str | Path, *,
                            batch: int = 64, dtype: torch.dtype | None = torch.bfloat16, max_seconds: float = 0.0,
                            progress: bool = True) -> dict:
    """Roll out every prompt row in batches of ``batch``, one shard per batch in ``out_dir``; existing shards are
    kept (resume). Returns ``{"shards", "rows", "generated_tokens", "seconds"}`` of this call."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a bf16 copy leaves the caller's model untouched
    runner = copy.deepcopy(model).to(dtype) if dtype is not None and dtype != next(model.parameters()).dtype else model
    runner.eval()
    n_batches = (prompts.shape[0] + batch - 1) // batch
    t0, done, rows_done = time.perf_counter(), 0, 0
    bar = tqdm(total=n_batches, desc="target rollouts (hidden kept)", disable=not progress)
    for b in range(n_batches):
        path = out_dir / f"rollouts-{b:05d}.safetensors"
        if path.is_file():
            bar.update(1)
            continue
        rows = prompts[b * batch : (b + 1) * batch]
        data = rollouts_with_hidden(runner, rows, new_tokens)
        meta = {"prompt_len": str(prompts.shape[1]), "new_tokens": str(new_tokens),
                "dtype": str(next(runner.parameters()).dtype)}
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in data.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
        done += 1
        rows_done += rows.shape[0]  # the last batch may be short
        bar.update(1)
        if max_seconds and time.perf_counter() - t0 > max_seconds:
            log.info("rollouts stopped after %.0f s (%d shards); run again to resume", time.perf_counter() - t0, done)
            break
    bar.close()
    info = {"shards": done, "rows": rows_done, "generated_tokens": rows_done * new_tokens,
            "seconds": time.perf_counter() - t0}
    (out_dir / "last_run.json").write_text(json.dumps(info))
    return info


def load_rollout_shards(directory: str | Path, max_rows: int = 0) -> dict[str, torch.Tensor]:
    """Concatenate the shards of ``directory`` (``tokens``, ``labels``, ``hidden``), at most ``max_rows`` rows."""
    from safetensors.torch import load_file

    files = sorted(Path(directory).glob(SHARD_GLOB))
    if not files:
        raise FileNotFoundError(f"{directory}: no {SHARD_GLOB} shards (generate them with generate_rollout_shards)")
    parts: dict[str, list[torch.Tensor]] = {"tokens": [], "labels": [], "hidden": []}
    rows = 0
    for f in files:
        data = load_file(str(f))
        if parts["tokens"] and data["tokens"].shape[1] != parts["tokens"][0].shape[1]:
            raise ValueError(f"{f}: rollouts of {data['tokens'].shape[1]} tokens, but {files[0].name} has "
                             f"{parts['tokens'][0].shape[1]} (shards of another prompt/generation length: use a "
                             "fresh directory)")
        for k in parts:
            parts[k].append(data[k])
        rows += data["tokens"].shape[0]
        if max_rows and rows >= max_rows:
            break
    out = {k: torch.cat(v) for k, v in parts.items()}
    if max_rows:
        out = {k: v[:max_rows] for k, v in out.items()}
    return out
