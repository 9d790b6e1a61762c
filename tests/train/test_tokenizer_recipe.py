"""Tokenizer training recipe: the loss falls, and a resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from apps.train.tokenizer import TokenizerTrainConfig, rvq_train_forward, train_tokenizer
from tokenizer import AudioTokenizer
from tokenizer.modules.rvq import ResidualVectorQuantizer


def _cfg(corpus, out, steps, **kw):
    base = dict(preset="tiny", steps=steps, batch_size=2, crop_seconds=0.6, lr=2e-3, warmup=1, save_every=2,
                log_every=100, progress=False, eval_items=0, device="cpu")
    return TokenizerTrainConfig(corpus=str(corpus), out=str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def straight(mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok_straight")
    state = train_tokenizer(_cfg(mini_corpus, out, 6, eval_items=1))
    return out, state


def test_loss_decreases_and_model_loads(straight):
    out, state = straight
    losses = [h["loss"] for h in state["history"]]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    tok = AudioTokenizer.from_pretrained(out / "model")  # the official layout, strict load
    assert tok.num_quantizers == 8
    assert state["eval"]["test"]["items"] == 1 and state["eval"]["test"]["mel_l1"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))


def test_resume_continues_exactly(straight, mini_corpus, tmp_path):
    out, state = straight
    train_tokenizer(_cfg(mini_corpus, tmp_path, 6, stop_at=3))  # interrupted after step 3
    assert json.loads((tmp_path / "last" / "state.json").read_text())["step"] == 3
    resumed = train_tokenizer(_cfg(mini_corpus, tmp_path, 6))
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in state["history"]]
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_rvq_ema_follows_data_and_restarts_dead_codes():
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(4, [8, 8])
    x = torch.randn(64, 4) * 3 + 10  # far from zero: an un-initialised codebook could not cover it
    for _ in range(20):
        xq, commit, codes, _ = rvq_train_forward(q, x.clone().requires_grad_(), decay=0.8, dead=0.5)
    assert codes.shape == (2, 64)
    err = (x - (q.codebook(0).decode(codes[0]) + q.codebook(1).decode(codes[1]))).pow(2).mean()
    assert err < x.var() * 0.5  # the codebooks learnt the data
    assert bool(q.codebook(0).inited.item())
    xt = torch.randn(5, 4, requires_grad=True)
    out, *_ = rvq_train_forward(q, xt, 0.9, 0.0, update=False)
    out.sum().backward()
    assert torch.equal(xt.grad, torch.ones_like(xt))  # straight-through gradient
