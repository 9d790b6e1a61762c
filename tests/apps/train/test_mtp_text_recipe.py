"""The text MTP recipe (apps/train/mtp_text.py): trains heads for a transformers LM, resumes, saves."""

from __future__ import annotations

import pytest
import torch

from efficient.spec import CausalLMTarget, load_mtp


def test_training_script_runs_resumes_and_saves(tmp_path):
    """Two steps, then a resumed third, on a tiny model with the real tokenizer and offline text."""
    from apps.train import mtp_text as train_mod
    from eval.reference_models import smollm2_dir, smollm2_gguf_path

    try:
        smollm2_gguf_path()
        from eval.textdata import offline_english_text

        offline_english_text("train")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                         tie_word_embeddings=True))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    argv = ["--model", str(tmp_path / "m"), "--heads", "2", "--seq-len", "32", "--batch", "1", "--max-chars", "20000",
            "--save-every", "1", "--draft-vocab", "512", "--threads", "1"]
    train_mod.main(argv + ["--steps", "2"])
    state = tmp_path / "m" / train_mod.STATE_FILENAME
    from safetensors import safe_open

    with safe_open(str(state), framework="pt") as fh:
        assert fh.metadata()["step"] == "2"
    train_mod.main(argv + ["--steps", "3"])
    with safe_open(str(state), framework="pt") as fh:
        assert fh.metadata()["step"] == "3"
    drafter = load_mtp(tmp_path / "m", CausalLMTarget(LlamaForCausalLM.from_pretrained(tmp_path / "m")))
    assert len(drafter.heads) == 2 and drafter.draft_vocab.numel() == 512
