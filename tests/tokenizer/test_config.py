"""TokenizerConfig: official config.json fields, presets, unknown keys, codebook list extension."""

import json

import pytest
import torch

from tokenizer import TokenizerConfig
from tokenizer.model import MiMoAudioTokenizerModel


def test_official_preset_matches_released_model_size():
    cfg = TokenizerConfig.preset("official")
    with torch.device("meta"):
        model = MiMoAudioTokenizerModel(cfg)
    params = sum(p.numel() for p in model.parameters())
    enc = sum(p.numel() for p in model.encoder.parameters())
    voc = sum(p.numel() for p in model.decoder.vocoder.parameters())
    assert round(params / 1e6, 1) == 1284.7
    assert round(enc / 1e6, 1) == 638.3 and round(voc / 1e6, 1) == 12.9
    assert cfg.codebook_size == [1024, 1024] + [128] * 18
    assert (cfg.samples_per_frame, cfg.frame_rate) == (960, 25)
    state = model.state_dict()
    assert tuple(state["encoder.quantizer.vq.layers.0._codebook.embed"].shape) == (1024, 1280)
    assert tuple(state["decoder.dconv1.conv.weight"].shape) == (1280, 1280, 2)
    assert tuple(state["decoder.vocoder.head.out.weight"].shape) == (962, 256)
    assert "encoder.layers.31.self_attn.k_proj.bias" not in state


def test_defaults_are_the_official_code_defaults():
    cfg = TokenizerConfig()
    assert cfg.d_model == 768 and cfg.avg_pooler == 1 and cfg.num_quantizers == 12
    assert cfg.codebook_size == [1024] * 12
    assert cfg.vocoder_attn_window_size == [40, 10] and cfg.encoder_attn_window_size == [-1, -1]


def test_json_roundtrip_keeps_unknown_keys(tmp_path):
    data = TokenizerConfig.preset("tiny").to_dict()
    data.update({"architectures": ["MiMoAudioTokenizer"], "torch_dtype": "bfloat16", "codebook_size": [64, 32]})
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = TokenizerConfig.from_json(tmp_path / "config.json")
    assert cfg.extra == {"architectures": ["MiMoAudioTokenizer"], "torch_dtype": "bfloat16"}
    assert cfg.codebook_size == [64] + [32] * (cfg.num_quantizers - 1)  # extended with the last entry
    cfg.save_json(tmp_path / "out.json")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["architectures"] == ["MiMoAudioTokenizer"] and out["model_type"] == "mimo_audio_tokenizer"
    assert TokenizerConfig.from_dict(out) == cfg


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "qwen2"}, "model_type"),
        ({"encoder_attention_heads": 3}, "heads"),
        ({"encoder_skip_layer_id": 99}, "encoder_skip_layer_id"),
        ({"vocoder_attn_window_size": [40]}, "vocoder_attn_window_size"),
    ],
)
def test_bad_config_values_are_named(change, message):
    data = TokenizerConfig.preset("tiny").to_dict()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        TokenizerConfig.from_dict(data)


def test_unknown_preset_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        TokenizerConfig.preset("huge")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TokenizerConfig.from_json(tmp_path / "config.json")


def test_length_arithmetic():
    cfg = TokenizerConfig.preset("official")
    # mel frames = N // 240 + 1; 50 Hz = (mel - 1) // 2 + 1; 25 Hz = ceil(50 Hz / 2)
    assert cfg.mel_frames(24000) == 101 and cfg.code_frames(24000) == 26
    assert cfg.code_frames(960 * 43) == 44
    assert [cfg.code_frames(n) for n in (481, 959, 960, 961, 1919, 1920)] == [1, 1, 2, 2, 2, 3]
