"""Golden prompt layouts of every task (spec §2.3 and §3) and the [9, T] segment rendering rules."""

from __future__ import annotations

import pytest
import torch

from mimo_audio import formats
from mimo_audio.formats import QAExample, RenderTurn, SpeechPair
from mimo_audio.prompts import IGNORE, PromptRenderer, Speech, Stream, Text, pad_codes
from mimo_audio.text_tokenizer import SpecialTokens

from .conftest import random_codes

EMPTY_IDS = [1024, 1024, 128, 128, 128, 128, 128, 128]
SPEECH3 = ["<|sosp|>", "[3 speech]", "<|eosp|>"]  # a 10-frame clip: padded to 12 frames = 3 patches
USER = ["<|im_start|>", "user\n"]
END = ["<|im_end|>", "\n"]
THINK_OFF = ["<|im_start|>", "assistant\n", "<think>", "\n\n", "</think>", "\n"]
THINK_ON = ["<|im_start|>", "assistant\n", "<think>", "\n"]
SPEAK = ["<|im_start|>", "assistant\n", "<|sostm|>"]


@pytest.fixture(scope="module")
def r(text_tok) -> PromptRenderer:
    return PromptRenderer(text_tok, SpecialTokens.from_tokenizer(text_tok), EMPTY_IDS)


def pieces(r, segs):
    return r.pieces(r.render(segs))


C = random_codes(10)


def test_text_segment_layout(r):
    ids = r.render([Text("ab<|eot|>")])
    toks = r.tokenize("ab") + [r.special.eot]
    assert ids.shape == (9, 12)
    assert ids[0].tolist() == [t for tok in toks for t in (tok, IGNORE, IGNORE, IGNORE)]
    assert torch.equal(ids[1:], torch.tensor(EMPTY_IDS)[:, None].expand(8, 12))


def test_speech_segment_layout_pads_by_repeating_last_frame(r):
    codes = random_codes(6, seed=3)
    ids = r.render([Speech(codes)])
    sp = r.special
    assert ids.shape == (9, 4 + 8 + 4)
    assert ids[0, ::4].tolist() == [sp.sosp, sp.empty, sp.empty, sp.eosp]
    assert (ids[0].reshape(-1, 4)[:, 1:] == IGNORE).all()
    empty = torch.tensor(EMPTY_IDS)[:, None]
    assert torch.equal(ids[1:, :4], empty.expand(8, 4)) and torch.equal(ids[1:, 12:], empty.expand(8, 4))
    assert torch.equal(ids[1:, 4:10], codes)
    assert torch.equal(ids[1:, 10:12], codes[:, -1:].expand(8, 2))
    assert torch.equal(pad_codes(codes), ids[1:, 4:12])


def test_stream_segment_matches_spec_example(r):
    # spec §2.3: "abcdefghijkl" (12 tokens) + 13 patches ->
    # <|sostm|> a b c d e [5 speech] f g h i j [5 speech] k l <|eot|> [3 speech] <|eostm|>
    codes = random_codes(13 * 4)
    ids = r.render([Stream("abcdefghijkl", codes)])
    assert r.pieces(ids) == [
        "<|sostm|>", "abcde", "[5 speech]", "fghij", "[5 speech]", "kl", "<|eot|>", "[3 speech]", "<|eostm|>"
    ]
    # The first speech chunk follows <|sostm|> and 5 text patches: columns 24..43 hold frames 0..19.
    assert torch.equal(ids[1:, 24:44], codes[:, :20])


def test_stream_with_longer_text_appends_leftovers_in_order(r):
    ids = r.render([Stream("abcdefghijklmnop", random_codes(4 * 4))])
    # text chunks fghij, klmno, p<|eot|> follow each other once the speech has run out
    assert r.pieces(ids) == ["<|sostm|>", "abcde", "[4 speech]", "fghijklmnop", "<|eot|>", "<|eostm|>"]


def test_stream_without_text_still_closes_the_text_part(r):
    ids = r.render([Stream("", random_codes(8))])
    assert r.pieces(ids) == ["<|sostm|>", "<|eot|>", "[2 speech]", "<|eostm|>"]


def test_asr(r):
    assert pieces(r, formats.asr(C)) == (
        USER + SPEECH3 + ["Transcribe the following voice message."] + END + THINK_OFF
    )
    assert pieces(r, formats.asr(C, language="zh"))[5] == "请将这段语音转换为文字."


def test_tts_plain_instruct_and_voice(r):
    assert pieces(r, formats.tts("hello there")) == [
        "<|im_start|>", "user\nPlease convert this text to speech: Hello there"
    ] + END + SPEAK
    assert pieces(r, formats.tts("Speak up", instruct="whispering")) == [
        "<|im_start|>", "system\n" + formats.TTS_STYLE_SYSTEM, *END,
        "<|im_start|>", "user\nPlease convert this text to speech: Speak up(whispering)", *END, *THINK_ON,
    ]
    assert pieces(r, formats.tts("你好", voice=C)) == [
        "<|im_start|>", "system\n" + formats.TTS_STYLE_VOICE_SYSTEM, *SPEECH3, *END,
        "<|im_start|>", "user\n请将这段文字转换为语音: 你好", *END, *THINK_ON,
    ]
    with pytest.raises(ValueError, match="empty"):
        formats.tts("   ")


def test_audio_understanding_thinking_on_and_off(r):
    assert pieces(r, formats.audio_understanding(C, "What is the mood?")) == (
        USER + SPEECH3 + ["What is the mood?"] + END + THINK_OFF
    )
    assert pieces(r, formats.audio_understanding(C, "What is the mood?", thinking=True))[-4:] == THINK_ON
    hinted = pieces(r, formats.audio_understanding(C, "Why?", thinking=True, think_hint=True))
    assert hinted[5:7] == ["Why?You can think about the question briefly and then answer it.", "<|im_end|>"]


def test_spoken_dialogue_multiturn_with_voice_and_system_prompt(r):
    turns = [
        RenderTurn("user", [C]),
        RenderTurn("assistant", ["hi", random_codes(8)]),
        RenderTurn("user", [C]),
    ]
    got = pieces(r, formats.chat(turns, output="audio", voice=C, system_prompt="Be brief."))
    assert got == [
        "<|im_start|>", "system\nYour voice should be:", *SPEECH3, *END,
        "<|im_start|>", "user\nBe brief.\n\n", *SPEECH3, *END,
        "<|im_start|>", "assistant\n", "<|sostm|>", "hi", "<|eot|>", "[2 speech]", "<|eostm|>", *END,
        *USER, *SPEECH3, *END, *SPEAK,
    ]


def test_system_prompt_and_its_blank_line_are_separate_segments(r):
    # BPE would merge "." and "\n\n" in one segment; the official code tokenises them apart.
    turns = [RenderTurn("user", [C])]
    ids = r.render(formats.chat(turns, output="audio", system_prompt="Be brief."))
    expected = r.tokenize("Be brief.") + r.tokenize("\n\n")
    text = ids[0, ::4].tolist()
    start = text.index(r.special.im_start) + len(r.tokenize("user\n")) + 1
    assert text[start : start + len(expected)] == expected


def test_text_and_speech_to_text_dialogue(r):
    turns = [RenderTurn("user", ["Hello"]), RenderTurn("assistant", ["Hi!"]), RenderTurn("user", [C])]
    assert pieces(r, formats.chat(turns, output="text", thinking=True)) == [
        *USER[:1], "user\nHello", *END, "<|im_start|>", "assistant\nHi!", *END, *USER, *SPEECH3, *END, *THINK_ON
    ]
    with pytest.raises(ValueError, match="end with a user turn"):
        formats.chat(turns[:2])
    with pytest.raises(ValueError, match="unknown chat role"):
        formats.chat([RenderTurn("robot", ["x"])])


def test_in_context_s2s_and_few_shot_qa(r):
    pair = SpeechPair(C, random_codes(8), "ok")
    assert pieces(r, formats.in_context_s2s([pair, pair], C, "Convert the voice")) == [
        "[Int]:Convert the voice\n",
        *(SPEECH3 + ["\n", "<|sostm|>", "ok", "<|eot|>", "[2 speech]", "<|eostm|>", " \n\n"]) * 2,
        *SPEECH3, "\n", "<|sostm|>",
    ]
    assert pieces(r, formats.in_context_s2s([pair], C))[0] == "[Int]:"
    with pytest.raises(ValueError, match="at least one example"):
        formats.in_context_s2s([], C)
    assert pieces(r, formats.speech_continuation(C)) == ["<Spe>:", *SPEECH3, "<|sostm|>"]
    assert pieces(r, formats.few_shot_qa([QAExample(C, "Who?", "Ann")], C, "Why?")) == [
        "[Int]:", *SPEECH3, "Question: Who?Answer: Ann\n\n", *SPEECH3, "Question: Why?\nAnswer:"
    ]


def test_bad_codes_are_rejected(r):
    with pytest.raises(ValueError, match="8 channels"):
        r.render([Speech(torch.zeros(4, 8, dtype=torch.long))])
    with pytest.raises(ValueError, match="channel 2"):
        bad = random_codes(8)
        bad[2, 0] = 128
        r.render([Speech(bad)])
    with pytest.raises(ValueError, match="non-empty"):
        r.render([Speech(torch.zeros(8, 0, dtype=torch.long))])
    with pytest.raises(ValueError, match="empty prompt"):
        r.render([])
