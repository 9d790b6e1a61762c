"""The official MiMo-Audio prompt formats (spec §3), as data plus small builders of segment lists.

Every literal of the official prompts lives once in this module; the builders only arrange them.
Instruction sentences are the eval wrapper's fixed ones (the demo picks one at random from a list),
so prompts are deterministic; each builder accepts an override.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .prompts import Segment, Speech, Stream, Text

# ---------------------------------------------------------------- literals
IM_START = "<|im_start|>"
IM_END = "<|im_end|>\n"
THINK_EMPTY = "<think>\n\n</think>\n"  # thinking off: an empty, closed think block
THINK_OPEN = "<think>\n"  # thinking on (and instruct TTS): the model writes its reasoning, then </think>
SOSTM = "<|sostm|>"

ASR_INSTRUCTION = {"en": "Transcribe the following voice message.", "zh": "请将这段语音转换为文字."}
TTS_INSTRUCTION = {"en": "Please convert this text to speech", "zh": "请将这段文字转换为语音"}
TTS_STYLE_SYSTEM = "你需要根据指定的风格指令和文本内容来生成语音。"
TTS_STYLE_VOICE_SYSTEM = "你需要根据指定的风格指令和文本内容来生成和语音prompt具有相同音色的语音。你的音色应该是："
DIALOGUE_VOICE_SYSTEM = "Your voice should be:"
THINK_HINT = "You can think about the question briefly and then answer it."  # eval wrapper, thinking on
ICL_PREFIX = "[Int]:"
SPEECH_ONLY_PREFIX = "<Spe>:"
QA_QUESTION = "Question: {q}"
QA_ANSWER = "Answer: {a}\n\n"
QA_ANSWER_OPEN = "\nAnswer:"


# ---------------------------------------------------------------- tasks: sampler preset + stop tokens
@dataclass(frozen=True)
class TaskSpec:
    preset: str  # key of mimo_audio.sampling.PRESETS
    stop: tuple[str, ...]  # stop tokens as strings ("eos" = the tokenizer's eos token)
    max_new_patches: int = 1024


TEXT_STOP = ("eos", "<|im_end|>")
SPEECH_STOP = ("eos", "<|eostm|>", "<|im_end|>")

TASKS: dict[str, TaskSpec] = {
    "asr": TaskSpec("asr", TEXT_STOP, 512),
    "tts": TaskSpec("tts", SPEECH_STOP, 2048),
    "audio_understanding": TaskSpec("audio_understanding", TEXT_STOP, 1024),
    "spoken_dialogue": TaskSpec("spoken_dialogue", SPEECH_STOP, 2048),
    "speech2text_dialogue": TaskSpec("text_chat", TEXT_STOP, 1024),
    "text_dialogue": TaskSpec("text_chat", TEXT_STOP, 1024),
    "in_context_learning_s2s": TaskSpec("in_context_learning_s2s", ("eos", "<|eostm|>"), 2048),
    "few_shot_qa": TaskSpec("qa", ("eos", "<|sosp|>"), 256),
    # 125 patches = 20 s: a continuation has no natural end, so the default length is stated, not runaway
    "speech_continuation": TaskSpec("in_context_learning_s2s", ("eos", "<|eostm|>"), 125),
}


def detect_language(text: str) -> str:
    """"zh" iff the text contains a CJK unified ideograph (official rule), else "en"."""
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def normalize_case(text: str) -> str:
    """Official ``preprocess_input``: an all-lower or all-upper string is capitalised."""
    return text.capitalize() if text.islower() or text.isupper() else text


def turn(role: str) -> Text:
    return Text(f"{IM_START}{role}\n")


def assistant_prefix(output: str, thinking: bool) -> list[Segment]:
    """Open the assistant turn: ``<|sostm|>`` for speech output, else the think block."""
    head = [turn("assistant")]
    if output in ("audio", "both"):
        return head + [Text(SOSTM)]
    return head + [Text(THINK_OPEN if thinking else THINK_EMPTY)]


# ---------------------------------------------------------------- instruct-model prompts (§3.2)
def asr(codes: torch.Tensor, instruction: str | None = None, language: str = "en") -> list[Segment]:
    instruction = instruction or ASR_INSTRUCTION[language]
    return [turn("user"), Speech(codes), Text(instruction), Text(IM_END), *assistant_prefix("text", False)]


def tts(
    text: str,
    instruct: str | None = None,
    voice: torch.Tensor | None = None,
    instruction: str | None = None,
    natural: bool = False,
) -> list[Segment]:
    """Plain TTS, style-instructed TTS (``instruct``), with an optional voice prompt (codes).

    ``natural=True`` is the official natural-instruction mode: ``text`` holds the instruction and the content
    together and is sent as is.
    """
    if not text.strip():
        raise ValueError("TTS text is empty")
    text = normalize_case(text)
    instruction = instruction or TTS_INSTRUCTION[detect_language(text)]
    user = text if natural else f"{instruction}: {text}" + (f"({instruct})" if instruct else "")
    if instruct is None and voice is None and not natural:
        return [turn("user"), Text(user), Text(IM_END), turn("assistant"), Text(SOSTM)]
    if voice is not None:
        system: list[Segment] = [turn("system"), Text(TTS_STYLE_VOICE_SYSTEM), Speech(voice), Text(IM_END)]
    else:
        system = [turn("system"), Text(TTS_STYLE_SYSTEM), Text(IM_END)]
    return [*system, turn("user"), Text(user), Text(IM_END), turn("assistant"), Text(THINK_OPEN)]


def audio_understanding(
    codes: torch.Tensor, question: str, thinking: bool = False, think_hint: bool = False
) -> list[Segment]:
    """``think_hint`` (with ``thinking``): the eval wrapper's extra segment after the question."""
    if not question.strip():
        raise ValueError("the question is empty")
    hint = [Text(THINK_HINT)] if thinking and think_hint else []
    return [turn("user"), Speech(codes), Text(question), *hint, Text(IM_END), *assistant_prefix("text", thinking)]


@dataclass
class RenderTurn:
    """One turn of a conversation, already reduced to text and codes."""

    role: str  # "system" | "user" | "assistant"
    parts: list[str | torch.Tensor]  # text pieces and [8, T] code tensors, in order


def chat(
    turns: Sequence[RenderTurn],
    output: str = "text",
    thinking: bool = False,
    voice: torch.Tensor | None = None,
    system_prompt: str | None = None,
) -> list[Segment]:
    """Multi-turn chat (spoken dialogue, speech-to-text and text dialogue share this shape).

    ``voice`` adds the official voice-prompt system turn; ``system_prompt`` is put, followed by a blank
    line, at the start of the first user turn (official spoken-dialogue rule). Assistant turns holding
    speech are rendered as a stream of their text and codes.
    """
    segs: list[Segment] = []
    if voice is not None:
        segs += [turn("system"), Text(DIALOGUE_VOICE_SYSTEM), Speech(voice), Text(IM_END)]
    first_user = True
    for t in turns:
        if t.role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown chat role {t.role!r}; use system, user or assistant")
        segs.append(turn(t.role))
        if t.role == "user" and first_user and system_prompt:
            segs += [Text(system_prompt), Text("\n\n")]  # two segments, as the official code tokenises them
        if t.role == "user":
            first_user = False
        if t.role == "assistant" and any(isinstance(p, torch.Tensor) for p in t.parts):
            text = "".join(p for p in t.parts if isinstance(p, str))
            codes = torch.cat([p for p in t.parts if isinstance(p, torch.Tensor)], dim=1)
            segs.append(Stream(text, codes))
        else:
            for p in t.parts:
                segs.append(Speech(p) if isinstance(p, torch.Tensor) else Text(p))
        segs.append(Text(IM_END))
    if not turns or turns[-1].role != "user":
        raise ValueError("a chat must end with a user turn")
    return segs + assistant_prefix(output, thinking)


# ---------------------------------------------------------------- base-model prompts (§3.3)
@dataclass(frozen=True)
class SpeechPair:
    """One in-context example: input speech, output speech and the output's transcription."""

    input: torch.Tensor
    output: torch.Tensor
    output_text: str = ""


def in_context_s2s(
    examples: Sequence[SpeechPair], query: torch.Tensor, instruction: str | None = None
) -> list[Segment]:
    """Few-shot speech-to-speech (voice conversion, style, speed, denoising): demo wrapper format."""
    if not examples:
        raise ValueError("few-shot speech-to-speech needs at least one example pair")
    segs: list[Segment] = [Text(f"{ICL_PREFIX}{instruction}\n" if instruction else ICL_PREFIX)]
    for ex in examples:
        segs += [Speech(ex.input), Text("\n"), Stream(ex.output_text, ex.output), Text(" \n\n")]
    return segs + [Speech(query), Text("\n"), Text(SOSTM)]


@dataclass(frozen=True)
class QAExample:
    audio: torch.Tensor
    question: str
    answer: str


def few_shot_qa(examples: Sequence[QAExample], audio: torch.Tensor, question: str) -> list[Segment]:
    """Few-shot audio QA (eval ``few_shots_qa``); with no examples it is the zero-shot QA prompt."""
    if not question.strip():
        raise ValueError("the question is empty")
    segs: list[Segment] = [Text(ICL_PREFIX)]
    for ex in examples:
        segs += [Speech(ex.audio), Text(QA_QUESTION.format(q=ex.question)), Text(QA_ANSWER.format(a=ex.answer))]
    return segs + [Speech(audio), Text(QA_QUESTION.format(q=question)), Text(QA_ANSWER_OPEN)]


def speech_continuation(codes: torch.Tensor) -> list[Segment]:
    """Base-model speech continuation. No official prompt exists (spec §3.3); this one is our choice:
    ``<Spe>:`` then the speech as an input segment, then ``<|sostm|>``."""
    return [Text(SPEECH_ONLY_PREFIX), Speech(codes), Text(SOSTM)]
