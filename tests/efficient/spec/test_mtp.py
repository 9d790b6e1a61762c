"""MTP heads: cached == uncached, cache rollback per cache type, checkpoint loading."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from efficient.spec import CausalLMTarget, HeadKVCache, MTPConfig, MTPHead, load_mtp, rollback

_spec = importlib.util.spec_from_file_location("spec_helpers", Path(__file__).with_name("helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def test_head_cached_chunks_equal_one_pass_and_window_applies():
    torch.manual_seed(0)
    cfg = MTPConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                    num_heads=1, sliding_window=6, draft_slack=3, vocab_size=50)
    head = MTPHead(cfg).eval()
    n = 20
    emb, hid = torch.randn(1, n, 32), torch.randn(1, n, 32)
    with torch.no_grad():
        whole = head(emb, hid, torch.arange(n))
        cache = HeadKVCache(cfg.sliding_window, cfg.draft_slack)
        parts = []
        for a, b in [(0, 5), (5, 6), (6, 13), (13, 20)]:
            parts.append(head(emb[:, a:b], hid[:, a:b], torch.arange(a, b), cache))
        torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-5, atol=1e-5)
        # the ring holds window + slack positions only
        assert cache.keys.shape[2] == cfg.sliding_window + cfg.draft_slack and cache.offset == n - 9
        # the window: changing a token further back than the window does not change the last output
        emb2 = emb.clone()
        emb2[:, n - cfg.sliding_window - 1] += 1.0
        torch.testing.assert_close(head(emb2, hid, torch.arange(n))[:, -1], whole[:, -1])


def test_head_cache_rollback_and_recompute():
    torch.manual_seed(0)
    cfg = MTPConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                    num_heads=1, sliding_window=8, draft_slack=4, vocab_size=50)
    head = MTPHead(cfg).eval()
    emb, hid = torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    with torch.no_grad():
        cache = HeadKVCache(8, 4)
        head(emb[:, :10], hid[:, :10], torch.arange(10), cache)
        ref = head(emb[:, 10:12], hid[:, 10:12], torch.arange(10, 12), cache)
        junk = torch.randn(1, 3, 32)  # a speculative extension that gets rejected
        head(junk, junk, torch.arange(12, 15), cache)
        cache.crop(10)
        assert cache.get_seq_length() == 10
        again = head(emb[:, 10:12], hid[:, 10:12], torch.arange(10, 12), cache)
        torch.testing.assert_close(again, ref)
        with pytest.raises(ValueError, match="cannot roll an MTP head cache back"):
            cache.crop(cache.offset - 1)


def _check_rollback(target, cache_factory):
    ids = torch.randint(0, 96, (1, 30), generator=torch.Generator().manual_seed(0))
    cache = cache_factory()
    ref_logits, _ = target.forward(ids, cache)
    cache = cache_factory()
    target.forward(ids[:, :20], cache)
    target.forward(torch.randint(0, 96, (1, 4)), cache)  # rejected drafts
    rollback(cache, 20)
    logits, _ = target.forward(ids[:, 20:], cache)
    torch.testing.assert_close(logits, ref_logits[20:], rtol=1e-4, atol=1e-4)


def test_rollback_full_dynamic_cache():
    target = CausalLMTarget(helpers.tiny_llama())
    _check_rollback(target, target.new_cache)


def test_rollback_sliding_window_dynamic_cache():
    target = CausalLMTarget(helpers.tiny_mistral(window=64))
    cache = target.new_cache()
    assert any(getattr(layer, "is_sliding", False) for layer in cache.layers)
    _check_rollback(target, target.new_cache)


def test_sliding_window_cache_past_its_window_gives_a_clear_error():
    """transformers' DynamicSlidingWindowLayer keeps no draft slack: rollback past the window must fail loudly."""
    target = CausalLMTarget(helpers.tiny_mistral(window=8))
    cache = target.new_cache()
    target.forward(torch.randint(0, 96, (1, 12)), cache)
    with pytest.raises(ValueError, match="cannot roll back"):
        rollback(cache, 10)


def test_own_checkpoint_round_trip(tmp_path):
    target = CausalLMTarget(helpers.tiny_llama())
    drafter = helpers.drafter_for(target, heads=2)
    drafter.draft_vocab = torch.arange(0, 96, 2)
    drafter.save(tmp_path)
    loaded = load_mtp(tmp_path, target)
    assert torch.equal(loaded.draft_vocab, drafter.draft_vocab)
    for a, b in zip(drafter.heads.state_dict().values(), loaded.heads.state_dict().values()):
        assert torch.equal(a, b)
    other = CausalLMTarget(helpers.tiny_llama(vocab=80))
    with pytest.raises(ValueError, match="vocab"):
        load_mtp(tmp_path, other)


def _write_checkpoint(directory: Path, tensors: dict, cfg) -> None:
    directory.mkdir()
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg.to_dict()))


@pytest.mark.parametrize("layout", ["mimo7b", "mimo_v2", "deepseek"])
def test_loads_mtp_weights_carried_by_checkpoints(tmp_path, layout):
    model = helpers.tiny_llama()
    target = CausalLMTarget(model)
    ref = helpers.drafter_for(target, heads=2)
    tensors = dict(model.state_dict())
    inner = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
             "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
             "down_proj": "mlp.down_proj", "input_layernorm": "input_layernorm",
             "post_attention_layernorm": "post_attention_layernorm"}
    if layout == "mimo7b":
        inner.update(enorm="token_layernorm", hnorm="hidden_layernorm", eh_proj="input_proj")
        prefix = "model.mtp_layers.{}."
    else:
        inner.update(enorm="enorm", hnorm="hnorm", eh_proj="eh_proj")
        prefix = "model.mtp.layers.{}." if layout == "mimo_v2" else "model.layers.{}."
    for i, head in enumerate(ref.heads):
        p = prefix.format(i + 2 if layout == "deepseek" else i)
        for k, v in head.state_dict().items():
            mod, leaf = k.rsplit(".", 1)
            tensors[p + inner[mod] + "." + leaf] = v
    _write_checkpoint(tmp_path / "ckpt", tensors, model.config)
    loaded = load_mtp(tmp_path / "ckpt", target)
    assert len(loaded.heads) == 2
    assert loaded.cfg.concat_order == ("hidden_first" if layout == "mimo7b" else "emb_first")
    for a, b in zip(ref.heads.state_dict().values(), loaded.heads.state_dict().values()):
        assert torch.equal(a, b)


def test_missing_mtp_weights_and_shape_mismatch(tmp_path):
    model = helpers.tiny_llama()
    target = CausalLMTarget(model)
    _write_checkpoint(tmp_path / "plain", dict(model.state_dict()), model.config)
    with pytest.raises(FileNotFoundError, match="carries no MTP weights"):
        load_mtp(tmp_path / "plain", target)
    with pytest.raises(FileNotFoundError, match="no such"):
        load_mtp(tmp_path / "absent", target)
    tensors = dict(model.state_dict())
    tensors["model.mtp.layers.0.enorm.weight"] = torch.ones(64)
    tensors["model.mtp.layers.0.eh_proj.weight"] = torch.ones(64, 100)  # wrong shape
    _write_checkpoint(tmp_path / "bad", tensors, model.config)
    with pytest.raises(ValueError, match="shape"):
        load_mtp(tmp_path / "bad", target)
    with pytest.raises(ValueError, match="num_heads"):
        MTPConfig(num_heads=0)
