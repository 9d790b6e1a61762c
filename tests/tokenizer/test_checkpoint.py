"""Checkpoints: save/load bit-exact, shards, strict errors that name the tensor, safetensors only."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tokenizer import AudioTokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    tok.save_pretrained(path)
    return path


def test_save_then_load_is_bit_exact(tok, saved, signal):
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    loaded = AudioTokenizer.from_pretrained(saved, device="cpu")
    ref = tok.model.state_dict()
    got = loaded.model.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) and ref[k].dtype == got[k].dtype for k in ref)
    x = signal(0.7)
    codes = tok.encode(x, 24000)
    assert torch.equal(loaded.encode(x, 24000), codes)
    assert torch.equal(loaded.decode(codes), tok.decode(codes))
    assert json.loads((saved / "config.json").read_text())["model_type"] == "mimo_audio_tokenizer"


def test_official_key_names(saved):
    keys = set(load_file(str(saved / "model.safetensors")))
    for key in [
        "encoder.conv1.weight", "encoder.layers.0.self_attn.k_proj.weight", "encoder.down_sample_layer.0.weight",
        "encoder.down_sample_norm.bias", "encoder.quantizer.vq.layers.9._codebook.embed",
        "encoder.quantizer.vq.layers.0._codebook.cluster_size", "decoder.dconv1.conv.weight",
        "decoder.dconv1.norm.weight", "decoder.dconv2.conv.bias", "decoder.vocoder.embeddings.weight",
        "decoder.vocoder.layers.1.fc2.weight", "decoder.vocoder.head.out.bias", "decoder.vocoder.head.istft.window",
    ]:
        assert key in keys, key
    assert "encoder.layers.0.self_attn.k_proj.bias" not in keys


def test_sharded_checkpoint_loads(tok, tmp_path):
    tok.save_pretrained(tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    loaded = AudioTokenizer.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(tok.model.state_dict().values(), loaded.model.state_dict().values()))
    (tmp_path / sorted(shards)[0]).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        AudioTokenizer.from_pretrained(tmp_path)


def _variant(saved, tmp_path, edit):
    tensors = load_file(str(saved / "model.safetensors"))
    edit(tensors)
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_optional_buffers_may_be_absent(tok, saved, tmp_path):
    def drop(t):
        for k in list(t):
            if k.endswith(("cluster_size", "embed_avg", "inited", "istft.window")):
                del t[k]

    loaded = AudioTokenizer.from_pretrained(_variant(saved, tmp_path, drop))
    window = loaded.model.decoder.vocoder.head.istft.window
    assert torch.equal(window, torch.hann_window(960))
    codes = torch.zeros(8, 5, dtype=torch.long)
    assert torch.equal(loaded.decode(codes), tok.decode(codes))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("decoder.layers.1.fc1.weight"), r"missing tensors: decoder\.layers\.1\.fc1\.weight"),
        (lambda t: t.pop("encoder.quantizer.vq.layers.3._codebook.embed"), r"missing tensors: .*layers\.3\._codebook"),
        (lambda t: t.update({"encoder.layers.0.self_attn.k_proj.bias": torch.zeros(32)}),
         r"unexpected tensors: encoder\.layers\.0\.self_attn\.k_proj\.bias"),
        (lambda t: t.update({"encoder.conv1.weight": torch.zeros(32, 80, 3)}),
         r"shape mismatch: encoder\.conv1\.weight \(checkpoint \(32, 80, 3\), model \(32, 128, 3\)\)"),
    ],
)
def test_strict_loading_names_the_tensor(saved, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        AudioTokenizer.from_pretrained(_variant(saved, tmp_path, edit))


def test_missing_or_wrong_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        AudioTokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(FileNotFoundError, match="pickle checkpoints are refused"):
        AudioTokenizer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="config.json"):
        AudioTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    with pytest.raises(ValueError, match="could not read .* as safetensors"):
        AudioTokenizer.from_pretrained(tmp_path)


def test_bf16_save_load_roundtrip(tmp_path):
    tok = AudioTokenizer.from_config(TokenizerConfig.preset("tiny"), seed=3, dtype="bf16")
    tok.save_pretrained(tmp_path)
    back = AudioTokenizer.from_pretrained(tmp_path, dtype="bf16")
    assert back.model.encoder.conv1.weight.dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(tok.model.state_dict().values(), back.model.state_dict().values()))
