"""Speech-LM MTP recipe: heads learn, resume is bit-exact, the result loads and drafts losslessly."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_lm import make_tiny_checkpoint
from safetensors.torch import load_file

from apps.train.mtp_speech import MTPTrainConfig, train_mtp
from mimo_audio import MimoAudio


def _cfg(lm, corpus, out, **kw) -> MTPTrainConfig:
    base = dict(heads=2, steps=6, batch_size=2, max_patches=160, lr=3e-3, warmup=1, window=16, save_every=2,
                eval_items=0, progress=False, tokenizer_preset="tiny")
    return MTPTrainConfig(lm=str(lm), corpus=str(corpus), out=str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("mtp_lm"), seed=1)


def test_heads_learn_resume_and_load(tiny_lm_dir, mini_corpus, tmp_path):
    straight = train_mtp(_cfg(tiny_lm_dir, mini_corpus, tmp_path / "a", eval_items=2, eval_new_patches=12))
    hist = straight["history"]
    assert hist[-1]["step"] == 6
    ev = straight["eval"]
    assert set(ev) == {"K=1", "K=2"} and all(e["greedy_equal"] for e in ev.values())
    assert len(ev["K=2"]["accept_per_position"]) == 2

    codes = tmp_path / "a"  # reuse the encoded corpus
    train_mtp(_cfg(tiny_lm_dir, mini_corpus, tmp_path / "b", codes=str(codes), stop_at=2))
    resumed = train_mtp(_cfg(tiny_lm_dir, mini_corpus, tmp_path / "b", codes=str(codes)))
    assert resumed["step"] == 6
    a, b = load_file(str(tmp_path / "a" / "mtp.safetensors")), load_file(str(tmp_path / "b" / "mtp.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resume replays the same steps

    m = MimoAudio.from_pretrained(tiny_lm_dir, device="cpu")
    m.load_mtp(tmp_path / "a")
    codes8 = torch.randint(0, 128, (8, 12))
    plain = m.asr(codes8, preset="greedy", max_new_patches=16)
    assert m.asr(codes8, preset="greedy", max_new_patches=16, speculative=2) == plain


def test_loss_goes_down(tiny_lm_dir, mini_corpus, tmp_path):
    state = train_mtp(_cfg(tiny_lm_dir, mini_corpus, tmp_path, steps=12, batch_size=3, lr=5e-3, save_every=100))
    losses = [h["loss"] for h in state["history"]]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses


def test_bad_arguments(tiny_lm_dir, mini_corpus, tmp_path):
    with pytest.raises(ValueError, match="heads"):
        train_mtp(_cfg(tiny_lm_dir, mini_corpus, tmp_path, heads=0))
    with pytest.raises(FileNotFoundError):
        train_mtp(_cfg(tmp_path / "no_lm", mini_corpus, tmp_path))


def test_patch_head_recipe_measures_and_learns(tiny_lm_dir, mini_corpus, tmp_path):
    from apps.train.mtp_patch import PatchTrainConfig, train_patch_head
    from apps.train.patch_draft import PatchDraftHead, draft_positions

    tc = PatchTrainConfig(lm=str(tiny_lm_dir), corpus=str(mini_corpus), out=str(tmp_path), steps=8, batch_size=2,
                          max_patches=160, lr=1e-2, window=16, eval_items=2, progress=False)
    state = train_patch_head(tc)
    for when in ("before", "after"):
        res = state[when]
        assert set(res) == {"head", "stale", "repeat"}
        for r in res.values():
            assert r["patches"] > 0 and all(0.0 <= r[k] <= 1.0 for k in ("ch0_code", "ch0_patch", "patch"))
        assert res["head"]["ch0_entropy"] > 0 and 0.0 <= res["head"]["p_accept_sampled"] <= 1.0
        assert 0.0 <= res["head"]["p_accept_sampling_drafter"] <= 1.0
    losses = [h["loss"] for h in state["history"]]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    m = MimoAudio.from_pretrained(tiny_lm_dir, device="cpu")
    assert PatchDraftHead.load(m.lm, tmp_path).cfg.sliding_window == 16
    with pytest.raises(FileNotFoundError, match="mtp-patch"):
        PatchDraftHead.load(m.lm, tmp_path / "nowhere")
    # row i drafts patch i+2: only learned speech patches count
    empty = m.lm.empty_token_id
    ids = torch.zeros(9, 4 * 6, dtype=torch.long)
    ids[0, ::4] = torch.tensor([1, 2, empty, empty, 3, empty])
    learn = torch.tensor([False, False, True, True, True, True])
    assert draft_positions(ids, learn, empty).tolist() == [0, 1, 3]


def test_held_out_codes_encode_only_a_subset(tiny_lm_dir, mini_corpus, tmp_path):
    from apps.train.mtp_speech import load_codes
    from mimo_audio.modeling import SpeechLM

    lm = SpeechLM.from_pretrained(tiny_lm_dir)
    codes = load_codes(_cfg(tiny_lm_dir, mini_corpus, tmp_path), lm, "test", limit=1)
    assert len(codes) == 1 and (tmp_path / "codes-test-1.safetensors").is_file()
    (key, c), = codes.items()
    assert key.startswith("test/") and c.shape[0] == 8
    again = load_codes(_cfg(tiny_lm_dir, mini_corpus, tmp_path), lm, "test", limit=1)  # from the cache
    assert torch.equal(again[key], c)
