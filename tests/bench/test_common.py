"""bench/common: the one median timing and the one perplexity the bench scripts share."""

from __future__ import annotations

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.common.perplexity import chained_windows, perplexity, text_perplexity
from bench.common.timing import median_time, timed


def test_timing_warms_up_then_takes_the_median():
    calls = []
    seconds, out = timed(lambda: calls.append(1) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5 and out == 5 and seconds >= 0
    assert median_time(lambda: None, repeats=1) >= 0


def test_chained_windows_predict_every_token_once():
    ids = torch.arange(11)
    windows = chained_windows(ids, seq_len=4)
    assert [w.tolist() for w in windows] == [[[0, 1, 2, 3, 4]], [[4, 5, 6, 7, 8]], [[8, 9, 10]]]
    assert sum(w.shape[1] - 1 for w in windows) == ids.numel() - 1


class _Chars:
    """A character tokenizer (enough for text_perplexity)."""

    def __call__(self, text, return_tensors="pt"):
        return type("Enc", (), {"input_ids": torch.tensor([[ord(c) % 96 for c in text]])})()


def test_perplexity_is_exp_of_the_mean_next_token_nll():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 96), ids[:, 1:].reshape(-1))
    assert math.isclose(perplexity(model, [ids]), math.exp(float(nll)), rel_tol=1e-5)
    text = "the quick brown fox jumps over the lazy dog"
    assert text_perplexity(model, _Chars(), text, seq_len=8) == perplexity(
        model, chained_windows(_Chars()(text).input_ids[0], 8))
