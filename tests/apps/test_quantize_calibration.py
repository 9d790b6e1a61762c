"""`mimo-audio quantize --method gptq|rtn-act` calibrates on the text it is given (--text), never on a library
default; `--transform awq --act-order` are recorded in the checkpoint, and misuse is one clear error."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from apps.cli import main
from efficient.quant import load_quantized_causal_lm
from mimo_audio.text_vocab import make_byte_text_tokenizer


def _tiny_llama(directory):
    tok = make_byte_text_tokenizer(directory)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("method, scheme", [("gptq", "w2g64"), ("rtn-act", "w4g32")])
def test_calibrated_methods_run_on_the_given_text_and_record_the_method(tmp_path, method, scheme):
    """--method gptq, and rtn-act (round to nearest, clip search weighted by the calibration activations)."""
    model = _tiny_llama(tmp_path / "m")
    text = tmp_path / "calib.txt"
    text.write_text("A short paragraph of English text to calibrate on. " * 20, encoding="utf-8")
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(model), "--scheme", scheme, "--method", method, "--text", str(text),
                 "--calib-tokens", "256", "--out", str(out)]) == 0
    assert json.loads((out / "quant_config.json").read_text())["method"] == method


def test_a_missing_calibration_text_is_one_clear_error(tmp_path, caplog):
    model = _tiny_llama(tmp_path / "m")
    with caplog.at_level(logging.ERROR):
        assert main(["quantize", "--model", str(model), "--scheme", "w2g64", "--method", "gptq",
                     "--text", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "q")]) == 1
    assert "absent.txt: text file not found" in caplog.text and not (tmp_path / "q").exists()


def test_awq_and_act_order_write_a_loadable_checkpoint(tmp_path):
    model = _tiny_llama(tmp_path / "m")
    text = tmp_path / "calib.txt"
    text.write_text("A short paragraph of English text to calibrate on. " * 20, encoding="utf-8")
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(model), "--scheme", "w4g32", "--method", "gptq", "--transform", "awq",
                 "--act-order", "--text", str(text), "--calib-tokens", "256", "--out", str(out)]) == 0
    cfg = json.loads((out / "quant_config.json").read_text())
    assert (cfg["method"], cfg["transform"], cfg["act_order"]) == ("gptq", "awq", True)
    q = load_quantized_causal_lm(out)
    with torch.no_grad():
        assert torch.isfinite(q(input_ids=torch.tensor([[5, 6, 7, 8]])).logits).all()


def test_act_order_without_gptq_is_one_clear_error(tmp_path, caplog):
    model = _tiny_llama(tmp_path / "m")
    with caplog.at_level(logging.ERROR):
        assert main(["quantize", "--model", str(model), "--scheme", "w4g32", "--act-order",
                     "--out", str(tmp_path / "q")]) == 1
    assert "--act-order applies to --method gptq" in caplog.text and not (tmp_path / "q").exists()
