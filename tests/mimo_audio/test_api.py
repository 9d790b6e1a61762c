"""The task API on the tiny LM: chat, thinking split, streaming, conversations, voices, few-shot, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mimo_audio import Conversation, formats
from mimo_audio.fewshot import TaskLibrary, load_task_file
from mimo_audio.postprocess import OutputParser

from .conftest import random_codes

C = random_codes(10)
G = {"preset": "greedy", "max_new_patches": 12}


def test_chat_text_and_openai_messages(mimo):
    msgs = [{"role": "user", "content": [{"type": "audio_codes", "codes": C}, {"type": "text", "text": "Who?"}]}]
    r = mimo.chat(msgs, **G)
    assert isinstance(r.text, str) and r.thinking is None and r.audio is None
    assert r.codes.shape == (8, 0)  # text output never samples speech patches
    # byte-level tiny tokenizer: <|im_start|>user\n (6) + sosp, 3 speech, eosp (5) + "Who?" (4)
    # + <|im_end|>\n (2) + <|im_start|>assistant\n (11) + <think>\n\n</think>\n (5)
    assert r.prompt_patches == 6 + 5 + 4 + 2 + 11 + 5
    again = mimo.chat(msgs, **G)
    assert again.text == r.text and again.num_patches == r.num_patches


def test_thinking_split_from_generated_tokens(mimo, text_tok):
    sp = mimo.special
    parser = OutputParser(text_tok, sp, thinking_open=True, stream_open=False)
    ids = text_tok.encode("let me see", add_special_tokens=False) + [sp.think_end]
    ids += text_tok.encode("\nIt is 4.", add_special_tokens=False) + [sp.im_end]
    empty = mimo.lm.empty_ids.expand(4, 8)
    deltas = [parser.push(t, empty, is_stop=i == len(ids) - 1) for i, t in enumerate(ids)]
    parser.finish()
    out = parser.result()
    assert out.thinking == "let me see" and out.text == "It is 4."
    assert "".join(d.thinking for d in deltas) == "let me see"
    r = mimo.understand(C, "How many?", thinking=True, **G)
    assert isinstance(r.thinking, str)  # a think block was opened by the prompt
    assert mimo.understand(C, "How many?", **G).thinking is None


def test_audio_span_rules(mimo, text_tok):
    sp = mimo.special
    e = mimo.lm.empty_ids.expand(4, 8)
    speech = [torch.full((4, 8), i) for i in range(4)]
    parser = OutputParser(text_tok, sp, thinking_open=True, stream_open=False)
    seq = [(sp.empty, speech[0]), (sp.think_end, e), (sp.sostm, e), (sp.empty, speech[1]), (sp.eot, e),
           (sp.empty, speech[2]), (sp.eostm, e), (sp.empty, speech[3]), (sp.im_end, e)]
    for i, (t, c) in enumerate(seq):
        parser.push(t, c, is_stop=i == len(seq) - 1)
    parser.finish()
    codes = parser.result().codes  # only the speech between the generated <|sostm|> and <|eostm|>
    assert torch.equal(codes, torch.cat([speech[1].T, speech[2].T], dim=1))
    no_stream = OutputParser(text_tok, sp, thinking_open=False, stream_open=False)
    no_stream.push(sp.empty, speech[0], False)
    assert no_stream.finish().codes is not None  # no stream start at all: every speech patch (official)
    assert no_stream.result().codes.shape == (8, 4)


def test_streaming_equals_non_streaming(mimo):
    for seed in (0, 1, 2, 3):
        cfg = mimo.generation_config("tts", "audio", max_new_patches=30, seed=seed)
        full = mimo.run([formats.tts("hello there")], cfg)[0]
        events = list(mimo.stream(formats.tts("hello there"), cfg))
        assert events[-1].result.text == full.text
        assert "".join(e.text for e in events).strip() == full.text
        assert torch.equal(events[-1].result.codes, full.codes)
        chunks = [e.codes for e in events if e.codes is not None]
        assert torch.equal(torch.cat(chunks, dim=1) if chunks else full.codes, full.codes)


def test_stream_stops_when_the_caller_stops(mimo):
    cfg = mimo.generation_config("text_dialogue", "text", max_new_patches=50, preset="greedy")
    it = mimo.stream(formats.chat([formats.RenderTurn("user", ["hi"])]), cfg)
    first = next(it)
    it.close()
    assert first.result is None


def test_conversation_is_explicit_and_grows(mimo):
    conv = Conversation(system_prompt="Be brief.")
    conv.add_user(audio=C)
    r1 = mimo.chat(conv, output="both", **G)
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[1].text == r1.text
    conv.add_user(text="And then?")
    mimo.text_dialogue(conv, **G)
    assert len(conv.messages) == 4
    conv.add_user(audio=C)
    assert mimo.spoken_dialogue(conv, voice=random_codes(8), **G).prompt_patches > r1.prompt_patches
    assert conv.messages[-1].role == "assistant"
    with pytest.raises(ValueError, match="text or audio"):
        conv.add_user()


def test_batch_helpers_equal_single(mimo):
    clips = [C, random_codes(17, seed=5)]
    batch = mimo.asr_batch(clips, **G)
    assert batch == [mimo.asr(c, **G) for c in clips]
    results = mimo.tts_batch(["hello", "good morning"], **G)
    assert [r.codes.shape for r in results] == [mimo.tts(t, **G).codes.shape for t in ["hello", "good morning"]]


def test_voice_registry_roundtrip_and_unknown_voice(mimo, tmp_path):
    path = mimo.register_voice("alice", random_codes(20, seed=9), description="test")
    assert path.is_file() and json.loads(path.with_suffix(".json").read_text())["frames"] == 20
    assert mimo.voices.names() == ["alice"]
    with_voice = mimo.render(formats.tts("hi", voice=mimo._voice_codes("alice")))
    assert mimo.renderer.pieces(with_voice)[2:5] == ["<|sosp|>", "[5 speech]", "<|eosp|>"]
    assert mimo.tts("hi", voice="alice", **G).num_patches >= 1
    with pytest.raises(ValueError, match=r"unknown voice 'bob'.*alice"):
        mimo.tts("hi", voice="bob")
    with pytest.raises(ValueError, match="invalid voice name"):
        mimo.voices.save("../evil", C, mimo.voices.make_info("x", C, 25, "array"))


def test_bad_input_is_rejected_clearly(mimo):
    with pytest.raises(ValueError, match="TTS text is empty"):
        mimo.tts("  ")
    assert mimo.asr(np.zeros(24000, dtype=np.float32)) == ""  # silence: empty transcript, no model run
    with pytest.raises(ValueError, match="silent"):
        mimo.understand(np.zeros(24000, dtype=np.float32), "What?")
    with pytest.raises(ValueError, match="empty"):
        mimo.asr(np.zeros(0, dtype=np.float32))
    with pytest.raises(FileNotFoundError, match="not found"):
        mimo.asr("/nonexistent/clip.wav")
    with pytest.raises(ValueError, match="audio tokenizer"):
        mimo.asr(np.random.default_rng(0).standard_normal(24000).astype(np.float32))
    with pytest.raises(ValueError, match="output must be"):
        mimo.chat([{"role": "user", "content": "hi"}], output="video")
    with pytest.raises(ValueError, match="question is empty"):
        mimo.understand(C, "")
    with pytest.raises(ValueError, match="context"):
        mimo.asr(random_codes(4 * 600), **G)  # 600 patches > the tiny model's 512


def test_few_shot_speech_to_speech_and_qa(mimo):
    pairs = [(random_codes(8, 1), random_codes(8, 2), "ok"), (random_codes(8, 3), random_codes(12, 4))]
    r = mimo.few_shot(pairs, C, instruction="Convert", max_new_patches=10)
    assert r.num_patches <= 10 and r.codes.shape[0] == 8
    with pytest.raises(ValueError, match="at least one example"):
        mimo.few_shot([], C)
    qa = mimo.few_shot_qa([(random_codes(8, 1), "Who?", "Ann")], C, "Why?", max_new_patches=6)
    assert qa.codes.shape == (8, 0) and qa.num_patches <= 6
    cont = mimo.continue_speech(C, max_new_patches=8)
    assert cont.num_patches <= 8


def test_task_library_builtins_user_override_and_validation(tmp_path, mimo):
    lib = TaskLibrary(tmp_path / "tasks")
    assert {"voice_conversion", "denoise", "speed_up", "audio_qa"} <= set(lib.names())
    task = lib.get("voice_conversion")
    assert task.modality == "speech_to_speech" and task.preset == "in_context_learning_s2s"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.wav").write_bytes(b"")
    user = {"name": "voice_conversion", "modality": "speech_to_speech", "instruction": "Mine",
            "examples": [{"input": "a.wav", "output": "a.wav", "output_text": "x"}]}
    (tmp_path / "tasks" / "voice_conversion.json").write_text(json.dumps(user))
    mine = lib.get("voice_conversion")
    assert mine.instruction == "Mine" and mine.examples[0]["input"] == str(tmp_path / "tasks" / "a.wav")
    bad = tmp_path / "tasks" / "broken.json"
    for content, msg in [
        ("{", "invalid JSON"),
        (json.dumps({"name": "broken"}), "'modality' is required"),
        (json.dumps({"name": "broken", "modality": "telepathy"}), "modality 'telepathy'"),
        (json.dumps({"name": "broken", "modality": "speech_to_text", "preset": "wild"}), "unknown sampler preset"),
        (json.dumps({"name": "broken", "modality": "speech_to_speech", "examples": [{"input": "zz.wav"}]}),
         "missing"),
        (json.dumps({"name": "broken", "modality": "speech_to_speech",
                     "examples": [{"input": "zz.wav", "output": "a.wav"}]}), "zz.wav' not found"),
        (json.dumps({"name": "other", "modality": "speech_to_text"}), "must equal the file name"),
        (json.dumps({"name": "broken", "modality": "speech_to_text", "colour": 1}), "unknown field"),
    ]:
        bad.write_text(content)
        with pytest.raises(ValueError, match=msg):
            load_task_file(bad)
    with pytest.raises(ValueError, match="unknown few-shot task 'nope'"):
        lib.get("nope")
    with pytest.raises(ValueError, match="speech_to_text, not speech_to_speech"):
        mimo.few_shot(None, C, task="audio_qa")
    with pytest.raises(ValueError, match="ships no example pairs"):
        mimo.few_shot(None, C, task="emotion_transfer")


def test_from_pretrained_without_audio_tokenizer_serves_text(tiny_dir, tmp_path):
    from mimo_audio import MimoAudio

    m = MimoAudio.from_pretrained(tiny_dir, voices_dir=tmp_path / "v", tasks_dir=tmp_path / "t")
    r = m.chat([{"role": "user", "content": "Hello"}], **G)
    assert r.num_patches == 12 and r.audio is None
    spoken = m.tts("hello", max_new_patches=6, seed=0)
    assert spoken.audio is None  # codes only: there is no audio tokenizer to decode them
    with pytest.raises(ValueError, match="audio tokenizer"):
        m.register_voice("x", np.ones(2400, dtype=np.float32))
