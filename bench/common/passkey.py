"""Pass-key retrieval prompts shared by the sparse-attention and healing benches."""

from __future__ import annotations

import random

import torch


def passkey_prompts(tok, filler: str, length: int, trials: int, seed: int) -> list[tuple[torch.Tensor, str]]:
    """Pass-key prompts of ``length`` tokens: a 5-digit key hidden at a random depth of ``filler``."""
    rng = random.Random(seed)
    head = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
            "I will quiz you about the pass key.\n\n")
    filler_ids = tok(filler, add_special_tokens=False).input_ids
    out = []
    for _ in range(trials):
        key = str(rng.randint(10000, 99999))
        needle = tok(f"\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n",
                     add_special_tokens=False).input_ids
        tail = tok("\n\nWhat is the pass key? The pass key is", add_special_tokens=False).input_ids
        head_ids = tok(head, add_special_tokens=False).input_ids
        budget = length - len(head_ids) - len(needle) - len(tail)
        start = rng.randint(0, len(filler_ids) - budget - 1)
        body = filler_ids[start : start + budget]
        depth = rng.randint(int(0.1 * budget), int(0.9 * budget))
        out.append((torch.tensor([head_ids + body[:depth] + needle + body[depth:] + tail]), key))
    return out
