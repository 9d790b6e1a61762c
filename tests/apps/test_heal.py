"""``mimo-audio heal`` end to end on a tiny real Llama directory (word-level tokenizer, repeated text)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from apps.cli import main

TEXT = ("The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun and the bird sings "
        "a song about the river that runs past the old mill near the green hill ") * 90
FAST = ["--steps", "2", "--batch", "2", "--prompt-len", "16", "--gen-len", "4", "--text-len", "32", "--no-progress"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(TEXT.split()))
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(out)
    (out / "text.txt").write_text(TEXT)
    return out


def _heal(model_dir, out, convert, *extra):
    return main(["heal", "--model", str(model_dir), "--convert", convert, "--out", str(out),
                 "--text", str(model_dir / "text.txt"), *FAST, *extra])


def test_heal_sparse_attention_saves_a_loadable_model_and_resumes(model_dir, tmp_path, capsys):
    from efficient.attention import load_converted

    out = tmp_path / "h"
    assert _heal(model_dir, out, "FSSF", "--mix", "0.5") == 0
    printed = capsys.readouterr().out
    assert "held-out KL to the original" in printed and f"wrote {out}" in printed
    model = load_converted(out)
    assert model.config.efficient_attention["layout"] == "FSSF"
    assert json.loads((out / "distill_state.json").read_text())["step"] == 2
    assert _heal(model_dir, out, "FSSF", "--resume", "--steps", "3", "--mix", "0.5") == 0
    assert json.loads((out / "distill_state.json").read_text())["step"] == 3


def test_heal_low_bit_repacks_into_the_lut_format(model_dir, tmp_path):
    from efficient.quant import QuantLinear, load_quantized_causal_lm

    out = tmp_path / "q"
    assert _heal(model_dir, out, "w4g32") == 0
    model = load_quantized_causal_lm(out)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 4 * 7
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_heal_low_bit_from_gptq(model_dir, tmp_path):
    """--quant-method gptq calibrates on the healing text (it used to import a helper that did not exist)."""
    from efficient.quant import load_quantized_causal_lm

    out = tmp_path / "g"
    assert _heal(model_dir, out, "w4g32", "--quant-method", "gptq") == 0
    assert json.loads((out / "quant_config.json").read_text())["method"] == "gptq"
    assert load_quantized_causal_lm(out) is not None


def test_heal_low_bit_awq_act_order_ste_start_resumes_and_loads(model_dir, tmp_path):
    """The AWQ + act-order GPTQ start and STE healing (latent codes) from the command line, resumed once."""
    from efficient.quant import load_quantized_causal_lm

    out = tmp_path / "s"
    opts = ["--quant-method", "gptq", "--quant-transform", "awq", "--act-order", "--train", "ste"]
    assert _heal(model_dir, out, "w4g32", *opts) == 0
    assert _heal(model_dir, out, "w4g32", *opts, "--resume", "--steps", "3") == 0
    assert json.loads((out / "distill_state.json").read_text())["step"] == 3
    cfg = json.loads((out / "quant_config.json").read_text())
    assert (cfg["method"], cfg["transform"], cfg["act_order"]) == ("gptq", "awq", True)
    with torch.no_grad():
        assert torch.isfinite(load_quantized_causal_lm(out)(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_heal_mtp_writes_heads(model_dir, tmp_path):
    from efficient.spec import CausalLMTarget, load_mtp

    out = tmp_path / "m"
    assert _heal(model_dir, out, "mtp", "--heads", "2", "--rollouts", "4") == 0
    target = CausalLMTarget(LlamaForCausalLM.from_pretrained(model_dir).eval())
    drafter = load_mtp(out, target)
    assert len(drafter.heads) == 2 and drafter.draft_vocab is not None  # the cached recipe's draft vocabulary
    assert sorted(p.name for p in (out / "rollouts").glob("rollouts-*.safetensors")) == ["rollouts-00000.safetensors"]
    # resuming reuses the rollouts and the state
    assert _heal(model_dir, out, "mtp", "--heads", "2", "--rollouts", "4", "--resume", "--steps", "3") == 0
    assert json.loads((out / "distill_state.json").read_text())["step"] == 3


def test_heal_mtp_online_recipe(model_dir, tmp_path):
    from efficient.spec import CausalLMTarget, load_mtp

    out = tmp_path / "o"
    assert _heal(model_dir, out, "mtp", "--heads", "2", "--rollouts", "4", "--mtp-recipe", "online") == 0
    target = CausalLMTarget(LlamaForCausalLM.from_pretrained(model_dir).eval())
    assert load_mtp(out, target).draft_vocab is None


@pytest.mark.parametrize("argv,message", [
    (["--convert", "hysparse-9"], "unknown conversion"),
    (["--convert", "w4g128", "--train", "gates"], "does not apply"),
    (["--convert", "FSSF+w4g32"], "one kind of conversion"),
    (["--convert", "FSSF", "--mix", "2"], "--mix"),
    (["--convert", "FSSF", "--resume"], "no healing state"),
])
def test_bad_input_is_one_clear_error(model_dir, tmp_path, caplog, argv, message):
    out = tmp_path / "bad"
    rc = main(["heal", "--model", str(model_dir), "--out", str(out), "--steps", "1", *argv])
    assert rc == 1
    assert message in caplog.text
    assert not out.exists()


def test_missing_model_dir(tmp_path, caplog):
    assert main(["heal", "--model", str(tmp_path / "nope"), "--convert", "FSSF", "--steps", "1",
                 "--out", str(tmp_path / "o")]) == 1
    assert "config.json missing" in caplog.text


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["heal", "--help"])
    text = capsys.readouterr().out
    for opt in ("--convert", "--steps", "--resume", "--mix", "--train"):
        assert opt in text
