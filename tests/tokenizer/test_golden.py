"""Golden fixture: a tiny checkpoint with fixed weights and a fixed input; outputs must not drift."""

import json
import math
from pathlib import Path

import torch

from tokenizer import AudioTokenizer

GOLDEN = Path(__file__).parent / "golden"


def golden_input():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_golden", Path(__file__).parent / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.golden_input()


def assert_stats(wav, stats):
    assert wav.numel() == stats["length"]
    w = wav.double()
    scale = math.sqrt(stats["sq_sum"] / stats["length"])
    assert math.isclose(w.pow(2).sum().item(), stats["sq_sum"], rel_tol=1e-4)
    assert math.isclose(w.abs().sum().item(), stats["abs_sum"], rel_tol=1e-4)
    assert abs(w.sum().item() - stats["sum"]) < 1e-4 * stats["abs_sum"]
    for i, value in stats["samples"].items():
        assert abs(w[int(i)].item() - value) < 1e-4 * scale + 1e-7


def test_golden_codes_and_waveform():
    expected = json.loads((GOLDEN / "expected.json").read_text())
    tok = AudioTokenizer.from_pretrained(GOLDEN, device="cpu")
    x = golden_input()
    latents, _ = tok.model.encoder([tok.mel(x, 16000)])
    assert_stats(latents.flatten(), expected["latents"])
    codes = tok.encode(x, 16000, n_q=len(expected["codes"]))
    want = torch.tensor(expected["codes"])
    # A random model has near-ties between codewords, where rounding noise (another CPU, BLAS) may flip a choice;
    # the latents above are checked tightly, so allow a flip or two but no systematic change.
    assert codes.shape == want.shape and (codes != want).sum() <= 2
    assert_stats(tok.decode(want), expected["decode"])
    assert_stats(tok.decode(want, causal_norm=True), expected["decode_causal_norm"])


def test_golden_fixture_is_small():
    assert sum(p.stat().st_size for p in GOLDEN.iterdir()) < 1_000_000
