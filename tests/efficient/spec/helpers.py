"""Tiny random models and test doubles shared by the speculative-decoding tests."""

from __future__ import annotations

import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from efficient.spec import CausalLMTarget, MTPConfig, MTPDrafter, SpeculativeDecoder


def tiny_llama(seed: int = 0, vocab: int = 96, tied: bool = True) -> LlamaForCausalLM:
    """``tied=False`` gives varied greedy continuations (the tied, sharpened head mostly repeats the last token)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits than the default init: fewer near-ties, more structure
        model.lm_head.weight.mul_(8.0)
    return model


def tiny_mistral(seed: int = 0, window: int = 8) -> MistralForCausalLM:
    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                        max_position_embeddings=512)
    return MistralForCausalLM(cfg).eval()


def drafter_for(target: CausalLMTarget, heads: int = 2, window: int = 16, seed: int = 1) -> MTPDrafter:
    torch.manual_seed(seed)
    cfg = MTPConfig.from_target(target.config, num_heads=heads, sliding_window=window, draft_slack=8)
    return MTPDrafter(cfg, target.embed, target.final_norm, target.lm_head).eval()


class OracleDecoder(SpeculativeDecoder):
    """Drafts the target's own greedy continuation, corrupted with probability ``corrupt`` per token.

    It still runs the real heads (so their caches are exercised) and then replaces their proposals,
    which gives every acceptance length from 0 to K.
    """

    def __init__(self, *args, corrupt: float = 0.3, seed: int = 0, **kw) -> None:
        super().__init__(*args, **kw)
        self.corrupt, self.rng = corrupt, random.Random(seed)

    def _draft(self, k, toks, hist, caches, params, gen):
        drafts, q = super()._draft(k, toks, hist, caches, params, gen)
        model = self.target.model
        ext = list(toks)
        for _ in range(len(drafts)):
            nxt = int(model(torch.tensor([ext])).logits[0, -1].argmax())
            if self.rng.random() < self.corrupt:
                nxt = (nxt + 1 + self.rng.randrange(model.config.vocab_size - 1)) % model.config.vocab_size
            ext.append(nxt)
        return ext[len(toks):], q if q is None else q
