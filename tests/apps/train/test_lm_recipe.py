"""Speech-LM training recipe: examples in the official formats, falling loss, bit-exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from apps.train.speech_lm import LMTrainConfig, prepare, train_lm
from mimo_audio import MimoAudio


def _cfg(corpus, out, steps, **kw):
    base = dict(preset="tiny", tokenizer_preset="tiny", steps=steps, batch_size=3, max_patches=192, lr=3e-3,
                warmup=1, save_every=2, log_every=100, progress=False, device="cpu", eval_items=0)
    return LMTrainConfig(corpus=str(corpus), out=str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def straight(mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_straight")
    return out, train_lm(_cfg(mini_corpus, out, 8, eval_items=1))


def test_examples_follow_the_official_formats(mini_corpus, tmp_path):
    _, special, data, _ = prepare(_cfg(mini_corpus, tmp_path, 1), torch.device("cpu"))
    gen = np.random.default_rng(0)
    r = data.renderer
    for task in data.tasks:
        ids, target = data.example(task, gen)
        assert ids.shape[0] == 9 and ids.shape[1] == 4 * target.shape[0]
        text = ids[0, ::4]
        prompt_text = r.tokenizer.decode(text[~target].tolist(), skip_special_tokens=True)
        if task == "tts":
            assert "Please convert this text to speech: " in prompt_text
            assert int(text[~target][-1]) == special.sostm  # the answer stream starts after <|sostm|>
            assert bool((text[target] == special.empty).any())  # speech patches are learned
        elif task == "asr":
            assert "Transcribe the following voice message." in prompt_text
            answer = r.tokenizer.decode(text[target].tolist(), skip_special_tokens=True)
            assert answer.rstrip("\n") in [row["text"] for row in data.rows]
        elif task == "fewshot":
            assert prompt_text.startswith("[Int]:")
            assert int((text[~target] == special.sosp).sum()) == 2  # example input + query
        elif task == "text":
            assert bool(target.all())
    ids, target, mask, _ = data.batch(4, gen, special.eos)
    assert ids.shape[0] == 4 and mask.shape == target.shape
    assert not bool((target & (mask == 0)).any())


def test_loss_decreases_and_checkpoint_loads(straight):
    out, state = straight
    losses = [h["loss"] for h in state["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    m = MimoAudio.from_pretrained(out / "model", device="cpu")  # official layout + text tokenizer
    assert m.lm.config.hidden_size == 64
    heldout = state["eval"]["test"]  # teacher-forced loss per task on the held-out split
    assert set(heldout) == {"asr", "continuation", "fewshot", "text", "tts"}
    assert set(state["eval"]["reliance"]) == {"items", "asr", "tts"}
    assert all(v["text_ce"] > 0 for v in heldout.values()) and heldout["tts"]["audio0_ce"] > 0


def test_resume_continues_exactly(straight, mini_corpus, tmp_path):
    out, state = straight
    train_lm(_cfg(mini_corpus, tmp_path, 8, stop_at=3))
    resumed = train_lm(_cfg(mini_corpus, tmp_path, 8))
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in state["history"]]
    # provenance: two stretches (3 + 5 steps) whose hours add up
    assert [(s["from_step"], s["to_step"]) for s in resumed["stretches"]] == [(0, 3), (3, 8)]
    assert resumed["train_hours"] == pytest.approx(sum(s["seconds"] for s in resumed["stretches"]) / 3600, abs=1e-3)
    a = load_file(str(out / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "model" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
