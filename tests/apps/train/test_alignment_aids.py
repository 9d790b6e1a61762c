"""Training-only alignment aids of the speech-LM recipe: BPE vocabulary, text lead, patch dropout, curriculum,
CTC head, warm start across vocabularies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apps.train.ctc import CHAR_ALPHABET, CTCHead, FrameCapture, char_labels, ctc_greedy, ctc_loss
from apps.train.speech_lm import LMTrainConfig, curriculum_frames, lm_config, parse_text_vocab, prepare, train_lm
from apps.train.text_lead import chunk_leads, text_lead
from apps.train.warm_start import warm_start
from mimo_audio.modeling import SpeechLM
from mimo_audio.text_tokenizer import SpecialTokens, load_text_tokenizer
from mimo_audio.text_vocab import make_bpe_text_tokenizer, make_byte_text_tokenizer
from mimo_audio.training import speech_lm_loss

TEXTS = ["the quick brown fox jumps over the lazy dog", "a dog and a fox are friends", "the dog sleeps"] * 40


def _cfg(corpus, out, **kw):
    base = dict(preset="tiny", tokenizer_preset="tiny", steps=2, batch_size=4, max_patches=192, warmup=1,
                save_every=2, log_every=100, progress=False, device="cpu", eval_items=0)
    return LMTrainConfig(corpus=str(corpus), out=str(out), **{**base, **kw})


def test_bpe_vocabulary_round_trips_and_merges(tmp_path):
    tok = make_bpe_text_tokenizer(TEXTS, 320, tmp_path)
    special = SpecialTokens.from_tokenizer(tok)  # every MiMo-Audio special is there
    assert special.empty != special.eot
    for text in ("the quick brown fox", "Zebra? 42 — ünïcode"):  # unseen characters fall back to bytes
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(tok.encode("the quick brown fox", add_special_tokens=False)) < len("the quick brown fox") / 2
    with pytest.raises(ValueError, match="at least"):
        make_bpe_text_tokenizer(TEXTS, 100, tmp_path / "x")
    assert parse_text_vocab("bytes") is None and parse_text_vocab("bpe:2048") == 2048
    with pytest.raises(ValueError, match="bpe:N"):
        parse_text_vocab("bpe")
    assert lm_config("tiny", 300).vocab_size == 320


def test_text_lead_bytes_fall_behind_bpe_leads(tmp_path):
    # 3 s of speech for 45 characters (15 chars/s): bytes are 5 chars per 0.8 s chunk, behind by more each chunk.
    byte_leads = chunk_leads(list("x" * 45), 3.0)
    assert byte_leads[0] < 0 and byte_leads[1] < byte_leads[0]
    bpe_leads = chunk_leads(["xxxx"] * 11 + ["x"], 3.0)  # ~4 chars a token: all text read within 2 chunks
    assert all(v >= 0 for v in bpe_leads) and math.isinf(bpe_leads[-1])
    rows = [{"text": t} for t in TEXTS[:3]]
    bytes_tok = make_byte_text_tokenizer(tmp_path / "b")
    bpe_tok = make_bpe_text_tokenizer(TEXTS, 320, tmp_path / "p")
    a, b = text_lead(rows, [2.6, 1.7, 1.1], bytes_tok), text_lead(rows, [2.6, 1.7, 1.1], bpe_tok)
    assert b["chars_per_token"] > 2 * a["chars_per_token"]
    assert b["chunks_leading"] > a["chunks_leading"]


def test_patch_dropout_blanks_only_tts_inputs_and_curriculum_caps_length(mini_corpus, tmp_path):
    _, special, data, _ = prepare(_cfg(mini_corpus, tmp_path, text_vocab="bytes"), torch.device("cpu"))
    data.patch_dropout = 0.5
    data.probs = np.array([0.5 if t in ("tts", "asr") else 0.0 for t in data.tasks])
    batch = data.training_batch(8, np.random.default_rng(0), special.eos)
    changed = (batch.inputs != batch.ids).any(dim=1).reshape(8, -1, 4).any(-1)  # [B, patches]
    assert bool(changed.any())
    for b, task in enumerate(batch.tasks):
        speech = batch.ids[b, 0, ::4] == special.empty
        assert not bool((changed[b] & ~(speech & batch.target[b])).any())  # only learned speech patches
        if task != "tts":
            assert not bool(changed[b].any())
        assert batch.ctc[b] is not None  # whole utterances: CTC labels present
    lengths = sorted(v.shape[1] for v in data.codes.values())
    data.max_frames = lengths[0]
    for _ in range(10):
        row = data._pick_row("tts", np.random.default_rng(_))
        assert data.codes[row["id"]].shape[1] <= lengths[0]
    tc = _cfg(mini_corpus, tmp_path, curriculum_steps=100, curriculum_start_s=2.0)
    assert curriculum_frames(tc, 0) == 50 and curriculum_frames(tc, 50) > 50 and curriculum_frames(tc, 100) is None


def test_ctc_head_learns_only_through_its_inputs(mini_corpus, tmp_path):
    config, special, data, _ = prepare(_cfg(mini_corpus, tmp_path, text_vocab="bytes"), torch.device("cpu"))
    torch.manual_seed(0)
    model = SpeechLM(config, special.empty).init_weights(seed=0)
    head = CTCHead(config.local_dim, config.input_local_dim, config.vocab_size)
    capture = FrameCapture(model)
    data.probs = np.array([1.0 if t == "asr" else 0.0 for t in data.tasks])
    batch = data.training_batch(2, np.random.default_rng(0), special.eos)
    res = speech_lm_loss(model, batch.ids, batch.target, batch.mask, inputs=batch.inputs)
    is_speech = batch.inputs[:, 0, ::4] == special.empty
    loss = ctc_loss(head, res.local_hidden, capture.frames, is_speech, batch.ctc)
    assert loss is not None and float(loss.detach()) > 0
    loss.backward()
    assert head.proj.weight.grad.abs().sum() > 0
    assert model.input_local_transformer.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # patch encoder
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # backbone
    assert all(h.weight.grad is None for h in model.local_transformer_lm_heads)  # the patch decoder is untouched
    assert ctc_loss(head, res.local_hidden, capture.frames, is_speech, [None, None]) is None
    # Greedy decoding collapses repeats and drops blanks.
    head.proj.weight.data.zero_()
    head.proj.bias.data.fill_(-10)
    head.proj.bias.data[7] = 10
    frames = capture.frames[:1]
    assert ctc_greedy(head, res.local_hidden[0, :1], frames) == [7]
    capture.remove()


def test_character_ctc_targets_and_upsampled_head(mini_corpus, tmp_path):
    assert "".join(CHAR_ALPHABET[i] for i in char_labels("  Hello, World! It's 42.  ")) == "hello world it's 42"
    assert char_labels("?!") == []
    config, special, data, _ = prepare(_cfg(mini_corpus, tmp_path), torch.device("cpu"))
    data.ctc_labeler = char_labels
    data.probs = np.array([1.0 if t == "asr" else 0.0 for t in data.tasks])
    batch = data.training_batch(2, np.random.default_rng(0), special.eos)
    assert all(lab and max(lab) < len(CHAR_ALPHABET) for lab in batch.ctc)  # characters, not BPE ids
    torch.manual_seed(0)
    model = SpeechLM(config, special.empty).init_weights(seed=0)
    capture = FrameCapture(model)
    res = speech_lm_loss(model, batch.ids, batch.target, batch.mask, inputs=batch.inputs)
    is_speech = batch.inputs[:, 0, ::4] == special.empty
    head = CTCHead(config.local_dim, config.input_local_dim, len(CHAR_ALPHABET), upsample=2)
    n_frames = int(is_speech[0].sum()) * 4
    assert head(res.local_hidden[0, is_speech[0]], capture.frames[: int(is_speech[0].sum())]).shape == (
        2 * n_frames, len(CHAR_ALPHABET) + 1)
    loss = ctc_loss(head, res.local_hidden, capture.frames, is_speech, batch.ctc)
    assert loss is not None and math.isfinite(float(loss.detach()))
    # Lookahead: the frames of patch p are read with the backbone's output at p + k.
    first = int(torch.nonzero(is_speech[0])[0])
    for k in (0, 2):
        hidden = res.local_hidden.detach().requires_grad_(True)
        ctc_loss(head, hidden, capture.frames.detach(), is_speech, batch.ctc, lookahead=k).backward()
        touched = hidden.grad[0].abs().sum(-1) > 0
        assert bool(touched[first]) == (k == 0) and bool(touched[first + k])
    capture.remove()


def test_audio_weight_scales_the_speech_loss_against_the_text(mini_corpus, tmp_path):
    config, special, data, _ = prepare(_cfg(mini_corpus, tmp_path), torch.device("cpu"))
    data.probs = np.array([1.0 if t == "tts" else 0.0 for t in data.tasks])
    batch = data.training_batch(2, np.random.default_rng(0), special.eos)
    model = SpeechLM(config, special.empty).init_weights(seed=0)
    with torch.no_grad():
        one = speech_lm_loss(model, batch.ids, batch.target, batch.mask)
        ten = speech_lm_loss(model, batch.ids, batch.target, batch.mask, audio_weight=10.0)
    w = torch.tensor([12.0, 8, 6, 4, 2, 2, 1, 1])
    for res, aw in ((one, 1.0), (ten, 10.0)):
        audio = float(sum(wc * c for wc, c in zip((w / w.sum()).tolist(), res.channels)))
        assert float(res.loss) == pytest.approx((100 * float(res.text) + aw * audio) / (100 + aw), rel=1e-5)


def test_warm_start_moves_a_byte_model_to_bpe(mini_corpus, tmp_path):
    byte_run = tmp_path / "bytes"
    train_lm(_cfg(mini_corpus, byte_run, text_vocab="bytes", steps=1))
    bpe_run = tmp_path / "bpe"
    state = train_lm(_cfg(mini_corpus, bpe_run, text_vocab="bpe:400", init_from=str(byte_run / "model"), steps=1,
                          lr=0.0))
    assert state["warm_start"]["remapped_rows"] > 300
    src = SpeechLM.from_pretrained(byte_run / "model")
    dst = SpeechLM.from_pretrained(bpe_run / "model")
    old_tok, new_tok = load_text_tokenizer(byte_run / "model"), load_text_tokenizer(bpe_run / "model")
    torch.testing.assert_close(dst.model.layers[0].mlp.up_proj.weight, src.model.layers[0].mlp.up_proj.weight)
    merged = next(t for t, i in new_tok.get_vocab().items() if len(new_tok.convert_tokens_to_string([t])) >= 3
                  and t not in new_tok.get_added_vocab())
    new_id = new_tok.convert_tokens_to_ids(merged)
    old_ids = old_tok.encode(new_tok.convert_tokens_to_string([merged]), add_special_tokens=False)
    torch.testing.assert_close(dst.model.embed_tokens.weight[new_id], src.model.embed_tokens.weight[old_ids].mean(0))
    eot_new, eot_old = new_tok.convert_tokens_to_ids("<|eot|>"), old_tok.convert_tokens_to_ids("<|eot|>")
    torch.testing.assert_close(dst.lm_head.weight[eot_new], src.lm_head.weight[eot_old])
    model = SpeechLM(lm_config("tiny", len(new_tok)), SpecialTokens.from_tokenizer(new_tok).empty)
    counts = warm_start(model, byte_run / "model", new_tok)
    assert counts["copied"] > 10 and not counts["skipped"]


def test_input_reliance_compares_right_and_other_inputs(mini_corpus, tmp_path):
    from apps.train.reliance import input_reliance

    config, special, data, _ = prepare(_cfg(mini_corpus, tmp_path), torch.device("cpu"))
    model = SpeechLM(config, special.empty)
    model.init_weights(seed=0)
    same = input_reliance(model, data.renderer, data.plain, data.codes, items=4, shift=0)
    assert same["items"] == 4 and same["asr"]["gap"] == 0.0 and same["tts"]["gap"] == 0.0
    other = input_reliance(model, data.renderer, data.plain, data.codes, items=4, shift=1)
    assert other["asr"]["text_ce"] == same["asr"]["text_ce"]  # the right-input losses do not depend on the swap
    assert other["asr"]["text_ce_other_audio"] != other["asr"]["text_ce"]  # a random model still sees its input
    assert all(math.isfinite(v) for task in ("asr", "tts") for v in other[task].values())
    assert model.training  # restored


def test_reliance_cli_bad_folder_is_one_clear_error(tmp_path, capsys):
    from apps.train.reliance import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "absent"), "--corpus", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"speech-LM directory not found: {tmp_path / 'absent'}") and "Traceback" not in err[0]


def test_ctc_char_error_rate_probe(mini_corpus, tmp_path):
    from apps.train.ctc import ctc_char_error_rate

    config, special, data, _ = prepare(_cfg(mini_corpus, tmp_path), torch.device("cpu"))
    model = SpeechLM(config, special.empty).init_weights(seed=0)
    head = CTCHead(config.local_dim, config.input_local_dim, len(CHAR_ALPHABET), upsample=2)
    head.proj.weight.data.zero_()
    bias = head.proj.bias.data.view(2, len(CHAR_ALPHABET) + 1)  # both outputs of a frame
    bias.fill_(-10)
    bias[:, len(CHAR_ALPHABET)] = 10  # blank everywhere: every character is deleted
    assert ctc_char_error_rate(model, head, data.renderer, data.plain[:3], data.codes, lookahead=2) == 1.0
    bias[:, len(CHAR_ALPHABET)] = -10
    bias[:, CHAR_ALPHABET.index("e")] = 10  # one "e" per utterance (repeats collapse): all but one char missed
    cer = ctc_char_error_rate(model, head, data.renderer, data.plain[:3], data.codes)
    assert 0.5 < cer < 1.0
    assert model.training and not model.input_local_transformer._forward_hooks  # state restored, hook removed


def test_code_probe_learns_characters_from_codes(mini_corpus, tmp_path):
    from apps.train.code_probe import probe_codes

    config, _, data, _ = prepare(_cfg(mini_corpus, tmp_path), torch.device("cpu"))
    vocab = list(config.speech_vocab_size)
    curve = probe_codes(data.plain, data.codes, vocab, steps=80, eval_every=40, batch_size=8, lr=5e-3)
    assert [c["step"] for c in curve] == [0, 40, 80]
    assert all(math.isfinite(c["cer"]) for c in curve)
    assert curve[-1]["cer"] < curve[0]["cer"]


def test_reliance_cli_missing_ctc_head_fails_before_the_model_runs(tmp_path, capsys):
    from apps.train.reliance import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path), "--corpus", str(tmp_path), "--ctc", str(tmp_path / "ctc.safetensors")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"CTC head not found: {tmp_path / 'ctc.safetensors'}")


def test_bidirectional_ctc_context_sees_the_future_and_round_trips(tmp_path):
    torch.manual_seed(0)
    head = CTCHead(6, 5, len(CHAR_ALPHABET), upsample=2, context=8)
    hidden = torch.randn(3, 6, requires_grad=True)
    frames = torch.randn(3, 4, 5)
    lp = head(hidden, frames)
    assert lp.shape == (3 * 4 * 2, len(CHAR_ALPHABET) + 1)
    lp[0].sum().backward()  # the first output depends on the last patch: the adapter reads both ways
    assert float(hidden.grad[-1].abs().sum()) > 0
    head.save(tmp_path / "ctc.safetensors")
    back = CTCHead.from_file(tmp_path / "ctc.safetensors", 6, 5, len(CHAR_ALPHABET))
    assert (back.upsample, back.context) == (2, 8)
    assert torch.equal(back(hidden, frames), lp)
    plain = CTCHead(6, 5, len(CHAR_ALPHABET), upsample=1)
    plain.save(tmp_path / "plain.safetensors")
    assert CTCHead.from_file(tmp_path / "plain.safetensors", 6, 5, len(CHAR_ALPHABET)).context == 0
    with pytest.raises(ValueError, match="over 7 classes"):
        CTCHead.from_file(tmp_path / "plain.safetensors", 6, 5, 7)


def test_task_weights_parse_and_reach_the_sampler(mini_corpus, tmp_path):
    from apps.train.lm_data import TASK_WEIGHTS, parse_task_weights

    assert parse_task_weights("") is None
    w = parse_task_weights("asr=0.6, text=0")
    assert w == {**TASK_WEIGHTS, "asr": 0.6, "text": 0.0}
    for bad, msg in (("asr", "NAME=WEIGHT"), ("speak=1", "NAME=WEIGHT"), ("asr=x", "not a number"),
                     ("asr=-1", "negative")):
        with pytest.raises(ValueError, match=msg):
            parse_task_weights(bad)
    _, _, data, _ = prepare(_cfg(mini_corpus, tmp_path, task_weights="asr=1,tts=0,continuation=0,fewshot=0,text=0"),
                            torch.device("cpu"))
    assert dict(zip(data.tasks, data.probs.tolist()))["asr"] == 1.0
