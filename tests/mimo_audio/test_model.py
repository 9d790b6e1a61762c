"""Config, checkpoint I/O (strict loading), the model's forward pass and the patch decoder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimo_audio import DelayPattern, Sampler, SpeechLM, SpeechLMConfig
from mimo_audio.text_tokenizer import SpecialTokens

from .conftest import random_codes


def test_config_json_roundtrip_keeps_official_format(tmp_path):
    cfg = SpeechLMConfig.named("tiny")
    cfg.extra["torch_dtype"] = "bfloat16"
    cfg.to_json_file(tmp_path / "config.json")
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "qwen2"
    assert raw["speech_vocab_size"] == "1025-1025-129-129-129-129-129-129"
    assert raw["delay_pattern"] == "0-1-2-3-4-5-6-7"
    assert raw["torch_dtype"] == "bfloat16"
    back = SpeechLMConfig.from_json_file(tmp_path / "config.json")
    assert back == cfg


def test_official_preset_matches_published_sizes():
    cfg = SpeechLMConfig.named("official")
    assert cfg.patch_decoder_steps == 11
    assert cfg.local_config().head_dim == 16 and cfg.input_local_config().intermediate_size == 4096
    with torch.device("meta"):
        model = SpeechLM(cfg, empty_token_id=151667)
    total = model.num_parameters() / 1e6
    assert abs(total - 8018.6) < 0.5, total  # spec §2.9 (meta instantiation of the official classes)
    names = dict(model.named_parameters())
    assert tuple(names["model.layers.0.self_attn.k_proj.weight"].shape) == (1024, 4096)
    assert tuple(names["speech_group_downcast.weight"].shape) == (4096, 4096)
    assert tuple(names["local_transformer_lm_heads.0.weight"].shape) == (1025, 1024)
    assert not any(n.startswith(("local_transformer.embed", "input_local_transformer.embed")) for n in names)


def test_config_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="delay_pattern"):
        SpeechLMConfig(delay_pattern="0-1-2")
    with pytest.raises(ValueError, match="empty id"):
        SpeechLMConfig(speech_zeroemb_idx="2000-1024-128-128-128-128-128-128")
    with pytest.raises(ValueError, match="size"):
        SpeechLMConfig.named("huge")


def test_delay_pattern_schedule_matches_spec():
    d = DelayPattern((0, 1, 2, 3, 4, 5, 6, 7), 4)
    assert d.num_steps == 11
    assert d.schedule[0] == ((0, 0),)
    assert d.schedule[3] == ((0, 3), (1, 2), (2, 1), (3, 0))
    assert d.schedule[10] == ((7, 3),)
    emitted = sorted(pair for step in d.schedule for pair in step)
    assert emitted == sorted((c, f) for c in range(8) for f in range(4))


def _prompt(model: SpeechLM, text_ids: list[int], codes: torch.Tensor) -> torch.Tensor:
    """[9, T]: text patches, then speech patches."""
    n = len(text_ids)
    ids = torch.empty(9, 4 * n + codes.shape[1], dtype=torch.long)
    ids[0] = -100
    ids[0, : 4 * n : 4] = torch.tensor(text_ids)
    ids[1:, : 4 * n] = model.empty_ids[:, None]
    ids[0, 4 * n :: 4] = model.empty_token_id
    ids[1:, 4 * n :] = codes
    return ids


def test_save_load_roundtrip_single_and_sharded(tiny_lm, tiny_dir, tmp_path):
    ids = _prompt(tiny_lm, [5, 6, 7], random_codes(8))[None]
    ref = tiny_lm(ids)
    for sub, shard in (("one", None), ("sharded", 200_000)):
        tiny_lm.save_pretrained(tmp_path / sub, max_shard_bytes=shard)
        loaded = SpeechLM.from_pretrained(tmp_path / sub, empty_token_id=tiny_lm.empty_token_id)
        out = loaded(ids)
        assert torch.equal(out.text_logits, ref.text_logits)
        assert torch.equal(out.local_hidden, ref.local_hidden)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    bf16 = SpeechLM.from_pretrained(tiny_dir, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16(ids).text_logits.dtype == torch.bfloat16


def _copy_ckpt(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_strict_loading_names_the_tensor(tiny_dir, tmp_path, tiny_lm):
    e = tiny_lm.empty_token_id
    d = _copy_ckpt(tiny_dir, tmp_path / "missing", lambda s: s.pop("local_transformer.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing 1 tensor.*local_transformer\.layers\.1\.mlp\.up_proj\.weight"):
        SpeechLM.from_pretrained(d, empty_token_id=e)
    d = _copy_ckpt(tiny_dir, tmp_path / "extra", lambda s: s.__setitem__("bogus.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match="unexpected.*bogus.weight"):
        SpeechLM.from_pretrained(d, empty_token_id=e)

    def wrong_shape(s):
        s["speech_embeddings.3.weight"] = torch.zeros(130, 32)

    d = _copy_ckpt(tiny_dir, tmp_path / "shape", wrong_shape)
    with pytest.raises(ValueError, match=r"speech_embeddings\.3\.weight.*\(130, 32\).*\(129, 32\)"):
        SpeechLM.from_pretrained(d, empty_token_id=e)
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SpeechLM.from_pretrained(empty, empty_token_id=e)
    with pytest.raises(FileNotFoundError, match="config.json"):
        SpeechLM.from_pretrained(tmp_path / "nowhere", empty_token_id=e)


def test_missing_special_token_is_a_clear_error():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"a": 0, "<|endoftext|>": 1}, unk_token="a"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    with pytest.raises(ValueError, match=r"lacks MiMo-Audio special token\(s\): <\|im_start\|>"):
        SpecialTokens.from_tokenizer(fast)


def test_forward_shapes_and_cached_equals_full(tiny_lm):
    ids = _prompt(tiny_lm, [5, 6, 7, 8], random_codes(12))[None]
    full = tiny_lm(ids)
    assert full.text_logits.shape == (1, 7, 320) and full.local_hidden.shape == (1, 7, 32)
    # Decode in two cached halves == decode whole.
    first = tiny_lm(ids[..., :12], use_cache=True)
    second = tiny_lm(ids[..., 12:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(second.text_logits, full.text_logits[:, 3:], rtol=1e-5, atol=1e-5)
    last = tiny_lm(ids, logits_to_keep=1)
    torch.testing.assert_close(last.text_logits, full.text_logits[:, -1:], rtol=1e-6, atol=1e-6)


def test_patch_encoder_is_bidirectional_within_a_patch_only(tiny_lm):
    codes = random_codes(8)
    ids = _prompt(tiny_lm, [5], codes)[None]
    frames = tiny_lm.input_local_transformer
    x = torch.randn(1, 4, 32)
    y = x.clone()
    y[0, 3] += 1.0  # change the last frame: a bidirectional encoder changes frame 0's output too
    assert not torch.allclose(tiny_lm._patch_encoder(x)[0, 0], tiny_lm._patch_encoder(y)[0, 0])
    assert frames is tiny_lm.input_local_transformer
    # Changing the 2nd speech patch must not change the embedding of the 1st (patches are independent).
    ids2 = ids.clone()
    ids2[0, 1:, -1] = (ids2[0, 1:, -1] + 1) % torch.tensor([1024, 1024, 128, 128, 128, 128, 128, 128])
    e1, e2 = tiny_lm.embed(ids), tiny_lm.embed(ids2)
    assert torch.equal(e1[0, :2], e2[0, :2]) and not torch.equal(e1[0, 2], e2[0, 2])


def test_bf16_speech_buffer_is_emulated_and_switchable(tiny_lm):
    ids = _prompt(tiny_lm, [5], random_codes(8))[None]
    official = tiny_lm.embed(ids)
    try:
        tiny_lm.speech_buffer_dtype = None
        exact = tiny_lm.embed(ids)
    finally:
        tiny_lm.speech_buffer_dtype = torch.bfloat16
    assert torch.equal(official[0, 0], exact[0, 0])  # text patches are unaffected
    rel = ((official - exact).norm() / exact.norm()).item()
    assert 0 < rel < 2e-2


def test_decode_patch_never_emits_empty_ids_and_is_deterministic(tiny_lm):
    h = torch.randn(3, 32)
    greedy = tiny_lm.decode_patch(h, Sampler.greedy())
    assert greedy.shape == (3, 4, 8)
    assert torch.equal(greedy, tiny_lm.decode_patch(h, Sampler.greedy()))
    assert torch.equal(greedy[1:2], tiny_lm.decode_patch(h[1:2], Sampler.greedy()))
    s = Sampler(True, 5.0)
    for seed in range(3):
        out = tiny_lm.decode_patch(h, s, torch.Generator().manual_seed(seed))
        assert bool((out < tiny_lm.empty_ids).all()) and bool((out >= 0).all())
    a = tiny_lm.decode_patch(h, s, torch.Generator().manual_seed(7))
    b = tiny_lm.decode_patch(h, s, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_bad_ids_are_rejected(tiny_lm):
    with pytest.raises(ValueError, match="T % 4"):
        tiny_lm(torch.zeros(1, 9, 6, dtype=torch.long))
    ids = _prompt(tiny_lm, [5], random_codes(4))[None]
    ids[0, 3, -1] = 999
    with pytest.raises(ValueError, match="channel 2"):
        tiny_lm(ids)


def test_official_style_config_json_is_read_as_the_official_code_does(tmp_path):
    official = {
        "architectures": ["MiMoAudioModel"], "model_type": "qwen2", "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0", "bos_token_id": 151643, "eos_token_id": 151643,
        "vocab_size": 151680, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
        "rope_theta": 640000, "rms_norm_eps": 1e-06, "hidden_act": "silu", "tie_word_embeddings": False,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28, "rope_scaling": None,
        "speech_vocab_size": "1025-1025-129-129-129-129-129-129",
        "speech_zeroemb_idx": "1024-1024-128-128-128-128-128-128", "delay_pattern": "0-1-2-3-4-5-6-7",
        "group_size": 4, "audio_channels": 8, "local_dim": 1024, "local_layers": 16, "local_attn_heads": 64,
        "local_ffn_dim": 4096, "local_attn_dropout": 0.1, "input_local_layers": 6, "input_local_dim": None,
        "input_full_attention": True,
    }
    cfg = SpeechLMConfig.from_dict(official)
    assert cfg == SpeechLMConfig.named("official")
    assert cfg.extra["transformers_version"] == "4.49.0"
    assert SpeechLMConfig.from_dict(cfg.to_dict()) == cfg
    no_flag = dict(official)
    del no_flag["input_full_attention"]
    assert SpeechLMConfig.from_dict(no_flag).input_full_attention is False  # official: None -> causal
    with pytest.raises(ValueError, match="sliding"):
        SpeechLMConfig.from_dict({**official, "use_sliding_window": True})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SpeechLMConfig.from_json_file(tmp_path / "config.json")


def _official_embed(lm: SpeechLM, ids: torch.Tensor) -> torch.Tensor:
    """Spec §2.4 step by step, as the official code does it: every patch (text ones too) goes through the
    patch encoder from a bf16 buffer, then speech and text parts are summed."""
    B, _, T = ids.shape
    G, C, D = 4, 8, lm.config.input_local_dim
    text = ids[:, 0, ::G]
    speech = ids[:, 1:, :].reshape(B, C, T // G, G).transpose(1, 2)
    is_speech = (text == lm.empty_token_id)[..., None, None]
    buf = torch.zeros(B, T // G, G, D, dtype=torch.bfloat16)
    for c in range(C):
        e = lm.speech_embeddings[c](speech[:, :, c, :])
        e = e.masked_fill((speech[:, :, c, :] == lm.config.speech_zeroemb_idx[c])[..., None], 0.0)
        buf += e
    buf = buf * is_speech
    enc = lm.input_local_transformer(
        inputs_embeds=buf.reshape(-1, G, D), attention_mask={"full_attention": None}, is_causal=False
    ).last_hidden_state.reshape(B, T // G, G, D) * is_speech
    speech_part = lm.speech_group_downcast(enc.reshape(B, T // G, G * D))
    text_part = lm.model.embed_tokens(text).masked_fill((text == lm.empty_token_id)[..., None], 0.0)
    return text_part + speech_part


def test_embedding_equals_the_official_procedure(tiny_lm):
    ids = torch.cat([_prompt(tiny_lm, [5, 6], random_codes(8, seed=4)), _prompt(tiny_lm, [9], random_codes(4))], 1)
    ours, ref = tiny_lm.embed(ids[None]), _official_embed(tiny_lm, ids[None])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_teacher_forced_patch_decoder_matches_greedy_decoding(tiny_lm):
    h = torch.randn(3, 32)
    codes = tiny_lm.decode_patch(h, Sampler.greedy())
    logits = tiny_lm.patch_decoder_logits(h, codes)
    assert [tuple(x.shape) for x in logits[:3]] == [(3, 4, 1025), (3, 4, 1025), (3, 4, 129)]
    for c, lg in enumerate(logits):
        lg = lg.clone()
        lg[..., tiny_lm.config.speech_zeroemb_idx[c]] = float("-inf")  # never sampled
        assert torch.equal(lg.argmax(-1), codes[:, :, c])


def test_init_weights_for_training_from_scratch():
    cfg = SpeechLMConfig.named("tiny")
    a = SpeechLM(cfg, empty_token_id=261).init_weights(std=0.02, seed=3)
    b = SpeechLM(cfg, empty_token_id=261).init_weights(std=0.02, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    emb = a.speech_embeddings[0].weight
    assert abs(emb[:1024].std().item() - 0.02) < 0.005 and not emb[1024].any()
    assert torch.equal(a.model.norm.weight, torch.ones(64))
