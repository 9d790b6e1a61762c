"""Regenerate the golden fixture in tests/tokenizer/golden/ (run by hand, only when outputs are meant to change).

    PYTHONPATH=. python tests/tokenizer/make_golden.py

Writes a tiny checkpoint with fixed weights (without the optional RVQ/iSTFT buffers, ~0.2 MB), and the codes
and waveform statistics that ``test_golden.py`` expects for a fixed input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tokenizer import AudioTokenizer, TokenizerConfig
from tokenizer.checkpoint import OPTIONAL

GOLDEN = Path(__file__).parent / "golden"
N_Q = 4
CONFIG = dict(
    TokenizerConfig.preset("tiny").to_dict(), d_model=16, encoder_layers=2, encoder_skip_layer_id=1,
    encoder_ffn_dim=32, encoder_attn_window_size=[24, 16], decoder_layers=1, decoder_ffn_dim=32, vocoder_dim=16,
    vocoder_intermediate_dim=32, vocoder_num_layers=2, num_quantizers=N_Q, codebook_size=[64, 32],
)


def golden_input() -> np.ndarray:
    """1.3 s of int16 PCM at 16 kHz from a closed formula (no file, no RNG)."""
    t = np.arange(int(1.3 * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * (150 * t + 200 * t**2)) + 0.1 * np.sin(2 * np.pi * 2300 * t) * np.cos(9 * t)
    return np.round(x * 32767).astype(np.int16)


@torch.no_grad()
def data_codebooks(tok: AudioTokenizer) -> None:
    """Codebooks drawn from encoder outputs of another signal (as k-means init would): diverse, meaningful codes."""
    g = torch.Generator().manual_seed(7)
    t = np.arange(3 * 24000) / 24000
    x = 0.2 * np.sin(2 * np.pi * (90 * t + 60 * t**2)) + 0.05 * np.random.RandomState(3).randn(t.size)
    h, _ = tok.model.encoder([tok.mel(x.astype(np.float32), 24000)])
    residual = h.float()
    for i in range(tok.config.num_quantizers):
        book = tok.model.quantizer.codebook(i)
        rows = torch.randint(0, residual.shape[0], (book.embed.shape[0],), generator=g)
        book.embed.copy_(residual[rows] + 0.05 * residual.std() * torch.randn(book.embed.shape, generator=g))
        residual = residual - book.decode(book.encode(residual))


def wave_stats(wav: torch.Tensor) -> dict:
    w = wav.double()
    n = wav.numel()
    idx = [0, 1, n // 7, n // 3, n // 2, n - 1]
    return {"length": wav.numel(), "sum": w.sum().item(), "abs_sum": w.abs().sum().item(),
            "sq_sum": w.pow(2).sum().item(), "samples": {str(i): w[i].item() for i in idx}}


@torch.no_grad()
def write_tensors(tok: AudioTokenizer) -> None:
    """The log-mel of the golden input and the encoder's latents of it (~70 KB): the test compares them
    element-wise, where statistics alone would miss a local change."""
    mel = tok.mel(golden_input(), 16000)
    latents, _ = tok.model.encoder([mel])
    save_file({"mel": mel.float().contiguous(), "latents": latents.float().contiguous()},
              str(GOLDEN / "tensors.safetensors"), metadata={"format": "pt"})


def main() -> None:
    if "--tensors-only" in sys.argv:  # add tensors.safetensors to the existing fixture, changing nothing else
        write_tensors(AudioTokenizer.from_pretrained(GOLDEN, device="cpu"))
        print(f"wrote {GOLDEN / 'tensors.safetensors'}")
        return
    GOLDEN.mkdir(exist_ok=True)
    tok = AudioTokenizer.from_config(TokenizerConfig.from_dict(CONFIG), seed=1234, device="cpu")
    data_codebooks(tok)
    tok.config.save_json(GOLDEN / "config.json")
    state = {k: v.contiguous() for k, v in tok.model.state_dict().items() if not OPTIONAL.match(k)}
    save_file(state, str(GOLDEN / "model.safetensors"), metadata={"format": "pt"})
    tok = AudioTokenizer.from_pretrained(GOLDEN, device="cpu")
    codes = tok.encode(golden_input(), 16000, n_q=N_Q)
    latents, _ = tok.model.encoder([tok.mel(golden_input(), 16000)])
    expected = {"codes": codes.tolist(), "latents": wave_stats(latents.flatten()),
                "decode": wave_stats(tok.decode(codes)),
                "decode_causal_norm": wave_stats(tok.decode(codes, causal_norm=True))}
    text = json.dumps(expected, indent=1)
    for row in codes.tolist():  # one line per codebook
        text = text.replace(json.dumps(row, indent=1).replace("\n", "\n  "), json.dumps(row), 1)
    (GOLDEN / "expected.json").write_text(text + "\n")
    write_tensors(tok)
    print(f"wrote {GOLDEN}: codes {tuple(codes.shape)}")


if __name__ == "__main__":
    main()
