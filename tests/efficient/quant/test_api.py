"""QuantLinear as a drop-in, quantize() on a transformers LM and on a speech-LM-shaped module, GPTQ,
packed checkpoints (round trip, truncated file, wrong version, wrong shapes) and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2Model

from efficient.quant import (
    QuantLinear,
    load_quantized,
    load_quantized_causal_lm,
    quantize,
    read_quant_config,
    save_quantized,
    summary_table,
)
from efficient.quant.api import CONFIG_FILE, WEIGHTS_FILE


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


class SpeechLMShaped(nn.Module):
    """The speech LM's structure: a Qwen2 backbone as ``model``, local transformers and heads."""

    def __init__(self) -> None:
        super().__init__()
        cfg = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2)
        self.model = Qwen2Model(cfg)
        self.local_transformer = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))
        self.input_local_transformer = nn.Sequential(nn.Linear(64, 64))
        self.heads = nn.ModuleList([nn.Linear(64, 32) for _ in range(2)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.model(input_ids=input_ids).last_hidden_state
        h = self.local_transformer(self.input_local_transformer(h))
        return torch.stack([head(h) for head in self.heads])


def test_quantlinear_is_a_drop_in_for_linear():
    lin = nn.Linear(200, 48)
    q = QuantLinear.from_linear(lin, "w4g64")
    x = torch.randn(2, 3, 200)
    y = q(x)
    assert y.shape == (2, 3, 48) and y.dtype == torch.float32
    ref = x @ q.dequantize().T + lin.bias
    assert torch.allclose(y, ref, atol=2e-2, rtol=1e-2)
    assert q(x.bfloat16()).dtype == torch.bfloat16
    assert "w4g64" in repr(q)
    # the dequantized weight is close to the original at 4 bits
    assert (q.dequantize() - lin.weight).norm() / lin.weight.norm() < 0.15


@pytest.mark.parametrize("scheme", ["w4g64", "afpq4g64", "ternary-tl"])
def test_quantize_causal_lm_and_roundtrip(tmp_path, scheme):
    model = tiny_llama()
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    reports = quantize(model, scheme)
    assert len(reports) == 2 * 7 and all(r.packed_bytes < r.fp32_bytes for r in reports)
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, QuantLinear)
    assert "total" in summary_table(reports)
    with torch.no_grad():
        out = model(input_ids=ids).logits
    if scheme != "ternary-tl":  # ternary RTN of a float model is lossy by design
        assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.98
    save_quantized(model, tmp_path, reports)
    cfg = read_quant_config(tmp_path)
    assert cfg["format_version"] == 2 and len(cfg["layers"]) == 14
    loaded = load_quantized_causal_lm(tmp_path)
    with torch.no_grad():
        again = loaded(input_ids=ids).logits
    assert torch.equal(again, out)


def test_speech_lm_submodule_selection(tmp_path):
    m = SpeechLMShaped().eval()
    ids = torch.randint(0, 64, (1, 5))
    reports = quantize(m, "w4g32", include=["model", "local_transformer"])
    names = {r.name for r in reports}
    assert "model.layers.0.self_attn.q_proj" in names and "local_transformer.0" in names
    assert not any(n.startswith(("heads", "input_local")) for n in names)
    with torch.no_grad():
        out = m(ids)
    save_quantized(m, tmp_path)
    fresh = load_quantized(SpeechLMShaped().eval(), tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(ids), out)


def test_gptq_beats_rtn_on_calibration_error():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    base = torch.randn(512, 16)
    calib = base @ torch.randn(16, 128) + 0.1 * torch.randn(512, 128)  # correlated inputs, as in LMs

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

    def errors(method):
        m = Wrap()
        m.lin = nn.Linear(128, 64)
        m.lin.load_state_dict(lin.state_dict())
        quantize(m, "w2g64", method=method, calib_fn=lambda mod: mod.lin(calib))
        with torch.no_grad():
            return ((m.lin(calib) - lin(calib)).norm() / lin(calib).norm()).item()

    rtn, gptq = errors("rtn"), errors("gptq")
    assert gptq < 0.8 * rtn, (rtn, gptq)


def test_activation_weighted_rtn_beats_rtn_on_outlier_columns():
    """rtn-act keeps round-to-nearest codes but picks each group's range for the inputs the layer sees."""
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    scale = torch.ones(128)
    scale[::16] = 30.0  # a few loud input channels, as LLM activations have
    calib = torch.randn(512, 128) * scale

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(128, 64)
            self.lin.load_state_dict(lin.state_dict())

    def errors(method):
        m = Wrap()
        quantize(m, "w3g64", method=method, calib_fn=lambda mod: mod.lin(calib))
        with torch.no_grad():
            return ((m.lin(calib) - lin(calib)).norm() / lin(calib).norm()).item()

    rtn, act = errors("rtn"), errors("rtn-act")
    assert act < 0.95 * rtn, (rtn, act)
    with pytest.raises(ValueError, match="needs calib_fn"):
        quantize(Wrap(), "w4g64", method="rtn-act")


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = tiny_llama()
    quantize(model, "w2g64")
    save_quantized(model, tmp_path)
    # wrong version
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    cfg["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="version 99"):
        load_quantized(tiny_llama(), tmp_path)
    cfg["format_version"] = 1  # version 1 differs only for afpq3: still readable here
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    load_quantized(tiny_llama(), tmp_path)
    v1_afpq3 = json.loads(json.dumps(cfg))
    v1_afpq3["layers"]["model.layers.0.mlp.up_proj"]["scheme"] = "afpq3g64"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(v1_afpq3))
    with pytest.raises(ValueError, match="4-bit containers"):
        load_quantized(tiny_llama(), tmp_path)
    cfg["format_version"] = 2
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    # truncated weights
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    (tmp_path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_quantized(tiny_llama(), tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(data)
    # a layer whose shape disagrees with the model
    cfg["layers"]["model.layers.0.mlp.up_proj"]["out_features"] = 128
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        load_quantized(tiny_llama(), tmp_path)
    with pytest.raises(FileNotFoundError):
        read_quant_config(tmp_path / "nowhere")


def test_cli_quantize(tmp_path, capsys):
    from apps.cli import main

    src = tmp_path / "src"
    tiny_llama().save_pretrained(src)
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(src), "--scheme", "w3g32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in text and "smaller" in text
    assert (out / WEIGHTS_FILE).is_file() and (out / CONFIG_FILE).is_file()
    assert main(["quantize", "--model", str(src), "--scheme", "w9", "--out", str(out)]) == 1
    assert main(["quantize", "--model", str(tmp_path / "none"), "--scheme", "w2g64", "--out", str(out)]) == 1


@pytest.mark.parametrize("scheme", ["w2g32", "ternary", "afpq3g64"])
def test_quantlinear_same_output_on_every_forced_path(monkeypatch, scheme):
    from efficient.quant import native

    monkeypatch.setenv(native.ENV_INT8, "off")  # the LUT arithmetic on every path (int8 kernel: test_int8_kernel)
    q = QuantLinear.from_linear(nn.Linear(96, 40), scheme)
    x = torch.randn(4, 96)
    paths = ["torch"] + ([] if native.library() is None else
                         [p for p in native.PATHS if native.PATHS.index(p) <= native.PATHS.index(native.cpu_path())])
    outs = {}
    for p in paths:
        monkeypatch.setenv(native.ENV_PATH, p)
        outs[p] = q(x)
    for p, y in outs.items():
        assert torch.allclose(y, outs["torch"], rtol=1e-5, atol=1e-5), p
