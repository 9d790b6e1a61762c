"""`mimo-audio sparsify` and the converted-checkpoint loader, on a tiny Llama with a real (tiny) tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from apps.cli import main
from efficient._hf import cache_kwargs
from efficient.attention import (
    HybridAttentionCache,
    apply_attention,
    load_converted,
    read_attention_config,
    save_converted,
)

TEXT = ("The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun and the bird sings "
        "a song about the river that runs past the old mill near the green hill ") * 40
ATTN = dict(window=16, block_size=8, top_k=3, rollback_slack=4)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(TEXT.split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    _tokenizer().save_pretrained(out)
    (out / "text.txt").write_text(TEXT)
    return out


def _greedy(model, ids, steps=6):
    with torch.no_grad():
        cache = HybridAttentionCache.for_model(model)
        logits = model(ids, **cache_kwargs(model, cache)).logits
        outs = [logits]
        for _ in range(steps):
            logits = model(logits[:, -1:].argmax(-1), **cache_kwargs(model, cache)).logits
            outs.append(logits)
    return torch.cat(outs, 1)


def test_save_then_load_gives_the_same_model(tmp_path, model_dir):
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(0, 64, (1, 50), generator=torch.Generator().manual_seed(3))
    conv = apply_attention(model, "FSRSWF", calibration_ids=ids, **ATTN)
    with torch.no_grad():
        conv.model.layers[1].self_attn.gate_swa.weight.normal_()  # non-default values must round-trip
    save_converted(conv, tmp_path / "out", notes={"why": "test"})
    loaded = load_converted(tmp_path / "out")
    cfg, notes = read_attention_config(tmp_path / "out")
    assert cfg.layout == "FSRSWF" and cfg.top_k == 3 and notes == {"why": "test"}
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # ties restored
    torch.testing.assert_close(_greedy(loaded, ids), _greedy(conv, ids))


def test_cli_converts_heals_and_saves(tmp_path, model_dir, capsys):
    out = tmp_path / "sparse"
    rc = main(["sparsify", "--model", str(model_dir), "--layout", "hysparse-1:2", "--out", str(out),
               "--heal-steps", "3", "--heal-seq-len", "32", "--calibration-tokens", "64",
               "--text", str(model_dir / "text.txt"), "--window", "16", "--block-size", "8", "--top-k", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "KV cache at 8k" in printed and "healing: 3 steps" in printed
    meta = json.loads((out / "efficient_attention.json").read_text())
    assert meta["attention"]["layout"] == "FSSFSF" and meta["notes"]["heal_steps"] == 3
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    model = load_converted(out)
    assert [layer.self_attn.kind for layer in model.model.layers] == list("FSSFSF")
    # healing moved the new parameters away from the calibrated start
    calibrated = load_converted(_convert_only(tmp_path, model_dir))
    moved = [not torch.equal(a, b) for (n, a), (_, b) in zip(model.named_parameters(), calibrated.named_parameters())
             if "gate" in n or "sink" in n]
    assert any(moved)


def _convert_only(tmp_path, model_dir):
    out = tmp_path / "calibrated"
    assert main(["sparsify", "--model", str(model_dir), "--layout", "hysparse-1:2", "--out", str(out),
                 "--calibration-tokens", "64", "--text", str(model_dir / "text.txt"), "--window", "16",
                 "--block-size", "8", "--top-k", "3"]) == 0
    return out


def test_cli_help_and_user_errors(tmp_path, model_dir, capsys, caplog):
    with pytest.raises(SystemExit) as exc:
        main(["sparsify", "--help"])
    assert exc.value.code == 0
    assert "--heal-steps" in capsys.readouterr().out
    assert main(["sparsify", "--model", str(tmp_path / "nope"), "--layout", "swa-2:1", "--out", str(tmp_path)]) == 1
    assert "config.json missing" in caplog.text
    assert main(["sparsify", "--model", str(model_dir), "--layout", "FSF", "--out", str(tmp_path / "x")]) == 1
    assert "has 3 letters but the model has 6 layers" in caplog.text
    out = tmp_path / "plain"
    assert main(["sparsify", "--model", str(model_dir), "--layout", "swa-2:1", "--out", str(out),
                 "--calibration-tokens", "0"]) == 0
    assert main(["sparsify", "--model", str(out), "--layout", "swa-2:1", "--out", str(tmp_path / "y")]) == 1
    assert "already converted" in caplog.text


def test_loader_rejects_bad_checkpoints(tmp_path, model_dir):
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    conv = apply_attention(model, "FWWFWF", **ATTN)
    out = save_converted(conv, tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="efficient_attention.json"):
        load_converted(model_dir)
    meta = json.loads((out / "efficient_attention.json").read_text())
    meta["attention"]["layout"] = "FSSFSF"  # a layout whose parameters the weights do not have
    (out / "efficient_attention.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing tensors"):
        load_converted(out)
    meta["format_version"] = 99
    (out / "efficient_attention.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="version"):
        load_converted(out)
    good = save_converted(conv, tmp_path / "trunc")
    data = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="safetensors"):
        load_converted(good)
