"""Tokenizer training recipe: the loss falls, and a resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from apps.train.tokenizer import (
    TokenizerTrainConfig,
    _perplexity,
    init_codebooks,
    kmeans,
    rvq_train_forward,
    train_tokenizer,
)
from tokenizer import AudioTokenizer
from tokenizer.modules.rvq import ResidualVectorQuantizer


def _cfg(corpus, out, steps, **kw):
    base = dict(preset="tiny", steps=steps, batch_size=2, crop_seconds=0.6, lr=2e-3, warmup=1, save_every=2,
                log_every=100, progress=False, eval_items=0, device="cpu", init_vectors=64)
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


def test_kmeans_init_then_ema_follows_data_and_restarts_dead_codes():
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(4, [8, 8])
    x = torch.randn(64, 4) * 3 + 10  # far from zero: an un-initialised codebook could not cover it
    init_codebooks(q, x, iters=5, seed=0, batch_vectors=64)
    assert bool(q.codebook(0).inited.item())
    assert q.codebook(0).cluster_size.sum() == pytest.approx(64)  # usage scaled to one batch
    err0 = (x - q.decode(q.encode(x, 2))).pow(2).mean()
    assert err0 < x.var() * 0.5  # k-means alone already covers the data
    for _ in range(10):
        xq, commit, codes, _, ppl = rvq_train_forward(q, x.clone().requires_grad_(), decay=0.8, dead=0.5)
    assert codes.shape == (2, 64) and len(ppl) == 2 and all(1 <= p <= 8 for p in ppl)
    err = (x - (q.codebook(0).decode(codes[0]) + q.codebook(1).decode(codes[1]))).pow(2).mean()
    assert err < x.var() * 0.5  # the codebooks follow the data
    xt = torch.randn(5, 4, requires_grad=True)
    out, *_ = rvq_train_forward(q, xt, 0.9, 0.0, update=False)
    out.sum().backward()
    assert torch.equal(xt.grad, torch.ones_like(xt))  # straight-through gradient


def test_dead_codes_restart_relative_to_mean_usage():
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(2, [16])
    x = torch.randn(8, 2)  # fewer vectors per batch than codes: an absolute threshold would never fire
    init_codebooks(q, torch.randn(256, 2) * 50, iters=2, seed=0, batch_vectors=8)  # most codes far away
    replaced = [rvq_train_forward(q, x, decay=0.5, dead=0.1)[3] for _ in range(6)]
    assert sum(replaced) > 0
    assert _perplexity(q.encode(torch.randn(512, 2), 1)[0], 16) > 2  # restarted codes now serve the data


def test_kmeans_handles_fewer_points_than_codes():
    c, counts = kmeans(torch.randn(5, 3), 8, 3, torch.Generator().manual_seed(0))
    assert c.shape == (8, 3) and counts.sum() == 5 and torch.isfinite(c).all()


def test_freeze_codec_keeps_encoder_and_codebooks(straight, mini_corpus, tmp_path):
    out, _ = straight
    train_tokenizer(_cfg(mini_corpus, tmp_path, 2, freeze_codec=True, init_from=str(out / "model")))
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "model" / "model.safetensors"))
    for k in a:
        if k.startswith("encoder.") or ".vq." in k or k.startswith("quantizer"):
            assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder.")), "the decoder must learn"
