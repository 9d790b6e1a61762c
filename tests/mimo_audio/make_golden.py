"""Regenerate the speech-LM golden fixture in tests/mimo_audio/golden/ (by hand, only when outputs are meant to
change).

    PYTHONPATH=. python tests/mimo_audio/make_golden.py

Writes a tiny SpeechLM with fixed seeded weights (``config.json`` + ``model.safetensors``, ~0.1 MB) and, for a
fixed prompt (a closed formula, no RNG), ``expected.safetensors``: the text logits of the prompt, the
teacher-forced patch-decoder logits of its speech patches, and a greedy continuation with the top-1 minus
top-2 margin of every choice in it (test_golden.py compares greedy choices exactly only where the margin is
large, so rounding on another CPU cannot flip them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from mimo_audio.config import SpeechLMConfig
from mimo_audio.generation import GenerationConfig, decode_one, generate, left_pad, prefill
from mimo_audio.modeling import SpeechLM

GOLDEN = Path(__file__).parent / "golden"
EMPTY = 5  # the text id of <|empty|> in this vocabulary (no text tokenizer is needed)
NEW_PATCHES = 16
CONFIG = SpeechLMConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=256, speech_vocab_size=(33, 33, 17, 17, 17, 17, 17, 17),
    speech_zeroemb_idx=(32, 32, 16, 16, 16, 16, 16, 16), local_dim=16, local_layers=2, local_attn_heads=2,
    local_ffn_dim=32, input_local_layers=1, input_local_dim=16,
)


def golden_prompt(cfg: SpeechLMConfig = CONFIG) -> torch.Tensor:
    """``[9, 24]``: three text patches, then three speech patches (codes from a formula)."""
    G, C = cfg.group_size, cfg.audio_channels
    text = [11, 23, 37, EMPTY, EMPTY, EMPTY]
    ids = torch.empty(C + 1, G * len(text), dtype=torch.long)
    for p, t in enumerate(text):
        ids[0, p * G : (p + 1) * G] = t
        for c in range(C):
            for f in range(G):
                ids[c + 1, p * G + f] = cfg.speech_zeroemb_idx[c] if t != EMPTY else (7 * p + 3 * f + 5 * c) % (
                    cfg.speech_vocab_size[c] - 1)
    return ids


def golden_model() -> SpeechLM:
    """Seeded N(0, 0.5) weights (norms 1 + N(0, 0.1)), zero empty-id rows; the <|empty|> row of the text head
    is scaled so that the greedy run mixes text and speech patches (8 of each with this seed)."""
    gen = torch.Generator().manual_seed(14)
    model = SpeechLM(CONFIG, EMPTY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        for c, e in enumerate(CONFIG.speech_zeroemb_idx):
            model.speech_embeddings[c].weight[e].zero_()
        model.lm_head.weight[EMPTY] *= 2.5
    return model.eval()


def _margin(scores: torch.Tensor) -> float:
    top = scores.float().topk(2).values
    return float(top[0] - top[1])


def _greedy_recording(empty_ids: tuple[int, ...], margins: list[float]):
    """A greedy code chooser (never the empty id) that records the margin of every choice."""

    def choose(logits: torch.Tensor, c: int) -> torch.Tensor:
        scores = logits.float().clone()
        scores[:, empty_ids[c]] = float("-inf")
        margins.append(_margin(scores[0]))
        return scores.argmax(-1)

    return choose


@torch.no_grad()
def greedy_with_margins(model: SpeechLM, prompt: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Greedy patches (text, codes) and the margin of every choice, through the model's own primitives."""
    cfg = model.config
    ids, mask = left_pad([prompt], pad_text_id=0, empty_ids=model.empty_ids)
    state = prefill(model, ids, mask)
    texts, codes = [], []
    text_margin = torch.full((n,), float("inf"))
    code_margin = torch.full((n, cfg.group_size, cfg.audio_channels), float("inf"))
    for i in range(n):
        text = state.text_logits.argmax(-1)
        text_margin[i] = _margin(state.text_logits[0])
        patch = model.empty_ids.view(1, 1, -1).expand(1, cfg.group_size, -1).clone()
        if int(text) == EMPTY:
            margins: list[float] = []
            patch = model.decode_patch(state.local_hidden, _greedy_recording(cfg.speech_zeroemb_idx, margins))
            order = [pair for emits in model.delay.schedule for pair in emits]
            for (c, f), m in zip(order, margins):
                code_margin[i, f, c] = m
        texts.append(int(text))
        codes.append(patch[0])
        state = decode_one(model, state, text, patch)
    return {"greedy_text": torch.tensor(texts), "greedy_codes": torch.stack(codes), "text_margin": text_margin,
            "code_margin": code_margin}


def full_sequence(prompt: torch.Tensor, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The prompt followed by generated patches (``text [N]``, ``codes [N, G, C]``) in the ``[9, T]`` layout."""
    n, G, C = codes.shape
    new = torch.cat([text.repeat_interleave(G)[None], codes.reshape(n * G, C).T], dim=0)
    return torch.cat([prompt, new], dim=1)


@torch.no_grad()
def teacher_forced(model: SpeechLM, full: torch.Tensor) -> dict[str, torch.Tensor]:
    """Text logits at every patch of ``full [9, T]`` and the patch decoder's logits for each speech patch after
    the first one (fed the true codes)."""
    G = model.config.group_size
    out = model(full[None])
    speech = (full[0, ::G] == EMPTY).nonzero().squeeze(-1)
    speech = speech[speech > 0]
    true = torch.stack([full[1:, p * G : (p + 1) * G].T for p in speech.tolist()])  # [N, G, C]
    local = out.local_hidden[0, speech - 1]  # the position before each speech patch predicts it
    result = {"text_logits": out.text_logits[0].float()}
    for c, logits in enumerate(model.patch_decoder_logits(local, true)):
        result[f"patch_logits_{c}"] = logits.float()
    return result


@torch.no_grad()
def outputs(model: SpeechLM, prompt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything the test compares: the prompt, the greedy continuation, and the teacher-forced logits of both."""
    greedy = greedy_with_margins(model, prompt, NEW_PATCHES)
    full = full_sequence(prompt, greedy["greedy_text"], greedy["greedy_codes"])
    return {"prompt": prompt, "full": full, **greedy, **teacher_forced(model, full)}


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    model = golden_model()
    model.save_pretrained(GOLDEN)
    model = SpeechLM.from_pretrained(GOLDEN, device="cpu", empty_token_id=EMPTY).eval()
    prompt = golden_prompt()
    expected = outputs(model, prompt)
    run = generate(model, [prompt], GenerationConfig(max_new_patches=NEW_PATCHES))[0]
    assert run.text_ids == expected["greedy_text"].tolist() and torch.equal(run.codes, expected["greedy_codes"])
    save_file({k: v.contiguous() for k, v in expected.items()}, str(GOLDEN / "expected.safetensors"))
    speech = int((expected["greedy_text"] == EMPTY).sum())
    text_margin, code_margin = float(expected["text_margin"].min()), float(expected["code_margin"].min())
    print(f"wrote {GOLDEN}: {NEW_PATCHES} greedy patches ({speech} speech), smallest text margin "
          f"{text_margin:.3g}, smallest code margin {code_margin:.3g}")


if __name__ == "__main__":
    main()
