"""Tiny random speech-LM checkpoints for tests.

``make_tiny_checkpoint(dir)`` writes a complete LM directory in the official layout: ``config.json``,
``model.safetensors`` and a small byte-level BPE text tokenizer (256 byte symbols plus every MiMo-Audio
special token), so ``SpeechLM.from_pretrained`` and ``MimoAudio.from_pretrained`` load it like the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mimo_audio.config import SpeechLMConfig
from mimo_audio.modeling import SpeechLM
from mimo_audio.text_tokenizer import SpecialTokens
from mimo_audio.text_vocab import make_byte_text_tokenizer


def make_tiny_checkpoint(
    path: str | Path, seed: int = 0, config: SpeechLMConfig | None = None, empty_boost: float = 3.0
) -> Path:
    """Write a tiny random MiMo-Audio LM directory at ``path`` and return the path.

    Weights are N(0, 0.1) so that logits are well separated (greedy decoding is then robust to
    float noise). ``empty_boost`` scales the ``<|empty|>`` row of ``lm_head`` so that a random model
    emits a mix of text and speech patches, exercising both branches of generation.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_byte_text_tokenizer(path)
    special = SpecialTokens.from_tokenizer(tokenizer)
    config = config or SpeechLMConfig.named("tiny")
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tiny tokenizer has {len(tokenizer)} tokens, more than vocab_size {config.vocab_size}")
    gen = torch.Generator().manual_seed(seed)
    model = SpeechLM(config, special.empty)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for c, e in enumerate(config.speech_zeroemb_idx):
            model.speech_embeddings[c].weight[e].zero_()  # padding_idx rows are zero, as in nn.Embedding
        model.lm_head.weight[special.empty] *= empty_boost
    model.save_pretrained(path)
    return path
