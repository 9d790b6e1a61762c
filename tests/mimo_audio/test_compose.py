"""Composition: LUT weights + sparse attention backbone + MTP drafting runs, and drafting stays lossless."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_lm import make_tiny_checkpoint

from efficient.attention import HybridAttentionCache
from efficient.quant import QuantLinear
from efficient.spec import MTPConfig, MTPDrafter
from mimo_audio import MimoAudio, formats
from mimo_audio.compose import compose_backbone
from mimo_audio.config import SpeechLMConfig
from mimo_audio.speculative import SpeechLMTarget

from .conftest import random_codes

G = {"preset": "greedy", "max_new_patches": 20}
ATTN = dict(window=8, block_size=4, top_k=2)


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory):
    """A tiny 4-layer LM (room for a full / sparse / sparse / full layout) with two random MTP heads."""
    cfg = SpeechLMConfig(**{**SpeechLMConfig.named("tiny").__dict__, "num_hidden_layers": 4, "extra": {}})
    d = make_tiny_checkpoint(tmp_path_factory.mktemp("deep_lm"), seed=2, config=cfg)
    m = MimoAudio.from_pretrained(d, device="cpu")
    target = SpeechLMTarget(m.lm)
    torch.manual_seed(1)
    drafter = MTPDrafter(MTPConfig.from_target(target.config, num_heads=2, sliding_window=8, draft_slack=8),
                         target.embed, target.final_norm, target.lm_head)
    drafter.init_from_target(m.lm.model.layers[-1])
    drafter.save(d)
    target.close()
    return d


def test_composed_backbone_runs_and_mtp_greedy_is_lossless(deep_dir):
    torch.set_num_threads(1)
    m = MimoAudio.from_pretrained(deep_dir, device="cpu")
    prompts = [random_codes(40 + 8 * s, seed=s) for s in range(2)]  # 40+ prompt patches: sparse blocks matter
    compose_backbone(m.lm, quant="w4g32", attention="FSSF", **ATTN)
    assert isinstance(m.lm.model.layers[0].mlp.up_proj, QuantLinear)
    assert isinstance(m.lm.new_cache(), HybridAttentionCache)
    assert not isinstance(m.lm.lm_head, QuantLinear)  # the text head keeps its weights
    for p in prompts:
        plain = m.asr(p, **G)  # the normal generation loop over the composed backbone
        assert isinstance(plain, str)
        for k in (1, 2, 3):
            assert m.asr(p, speculative=k, **G) == plain, k  # drafting is lossless w.r.t. the same weights
            assert m.last_draft_stats[0].draft_rounds > 0


def test_plain_generation_keeps_the_hybrid_cache(deep_dir):
    """Regression: the loop must get the converted backbone's cache back, not an empty DynamicCache."""
    m = MimoAudio.from_pretrained(deep_dir, device="cpu")
    compose_backbone(m.lm, quant=None, attention="FSSF", **ATTN)
    from mimo_audio.generation import GenerationConfig, prefill

    ids = m.render(formats.asr(random_codes(16)))
    state = prefill(m.lm, ids[None], torch.ones(1, ids.shape[1] // 4, dtype=torch.long))
    assert isinstance(state.cache, HybridAttentionCache) and state.cache.get_seq_length() == ids.shape[1] // 4
    assert GenerationConfig().speculative == 0
