"""The task table and task preparation: every task becomes a :class:`Job` before anything runs.

A :class:`Job` is a rendered prompt (``[9, T]`` ids), its :class:`~mimo_audio.generation.GenerationConfig`,
whether its speech is decoded to audio, and the task's name. ``MimoAudio.tts(...)`` is
``run_job(prepare_tts(...))``; the serving engine (:mod:`mimo_audio.engine`) runs the same jobs batched.
Keeping preparation (audio encoding, prompt building, settings) apart from running is what lets one loaded
model serve many requests: preparation happens on the caller's thread, generation in one scheduler.

:class:`TaskTable` joins the official prompt tasks (:data:`mimo_audio.formats.TASKS`: preset, stop tokens,
length) and the few-shot library (:class:`~mimo_audio.fewshot.TaskLibrary`, whose tasks run on the
``in_context_learning_s2s`` or ``few_shot_qa`` prompt with their own preset, length and examples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from . import formats
from .audio_io import AudioInput
from .errors import UserError
from .fewshot import FewShotTask, TaskLibrary
from .formats import QAExample, SpeechPair, TaskSpec
from .generation import GenerationConfig
from .sampling import Sampler, get_preset
from .text_tokenizer import SpecialTokens

OUTPUTS = ("text", "audio", "both")
# Few-shot conversion output defaults to at most this multiple of the query's length, plus a margin
VC_LENGTH_FACTOR = 2.0
VC_MARGIN_PATCHES = 25  # 4 s
# Default floor on the speech of a TTS request: it cannot end before this many speech patches (0.16 s each) per
# non-space character of its text. Normal English speech is ~0.45 patches a character (~14 characters a second);
# the floor is under a quarter of that, so it only blocks an early end, never cuts or pads real speech.
TTS_MIN_SPEECH_PER_CHAR = 0.1
# The few-shot library's modalities run on these prompt tasks.
FEW_SHOT_BASE = {"speech_to_speech": "in_context_learning_s2s", "speech_to_text": "few_shot_qa"}


@dataclass
class Job:
    """One prepared request: everything generation needs, nothing left to encode or render."""

    task: str  # a TaskTable name (e.g. "tts", "asr", "spoken_dialogue", a few-shot task)
    prompt: torch.Tensor  # [9, T] rendered prompt ids
    config: GenerationConfig
    decode_audio: bool  # decode generated speech codes to a waveform
    output: str = "text"  # "text", "audio" or "both"
    conversation: Any = None  # chat from a mimo_audio.api.Conversation: the reply is appended when run

    @property
    def prompt_patches(self) -> int:
        return self.prompt.shape[1] // 4

    def finish(self, result) -> None:
        """Append a chat reply to the job's Conversation (if any)."""
        if self.conversation is not None:
            spoken = self.output != "text" and result.codes.numel()
            self.conversation.add_assistant(result.text, result.codes if spoken else None)


@dataclass(frozen=True)
class TaskEntry:
    """A row of the task table."""

    name: str
    base: str  # the prompt task of formats.TASKS this one runs on
    spec: TaskSpec  # preset, stop tokens and default length
    few_shot: FewShotTask | None = None


class TaskTable:
    """Official prompt tasks plus the few-shot library, looked up by name."""

    def __init__(self, library: TaskLibrary | None = None):
        self.library = library or TaskLibrary()

    def names(self) -> list[str]:
        return sorted(set(formats.TASKS) | set(self.library.names()))

    def get(self, name: str) -> TaskEntry:
        if name in formats.TASKS:
            return TaskEntry(name, name, formats.TASKS[name])
        try:
            fs = self.library.get(name)
        except ValueError:
            raise ValueError(f"unknown task {name!r}; known: {', '.join(self.names())}") from None
        base = FEW_SHOT_BASE[fs.modality]
        spec = formats.TASKS[base]
        spec = TaskSpec(fs.preset, spec.stop, fs.max_new_patches or spec.max_new_patches)
        return TaskEntry(name, base, spec, fs)


def build_config(
    spec: TaskSpec,
    special: SpecialTokens,
    output: str = "text",
    preset: str | None = None,
    max_new_patches: int | None = None,
    min_new_patches: int = 0,
    min_speech_patches: int | None = 0,
    seed: int | None = None,
    text_sampler: Sampler | None = None,
    audio_sampler: Sampler | None = None,
    stop: Sequence[str] | None = None,
    speculative: bool | int = False,
    adaptive_draft: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> GenerationConfig:
    """A task's preset, stop tokens and length, with any of them overridden (``MimoAudio.generation_config``).

    ``temperature`` / ``top_k`` / ``top_p`` replace those knobs of the text sampler
    (:meth:`~mimo_audio.sampling.Sampler.with_overrides`); the audio channels keep the preset's.
    """
    p = get_preset(preset or spec.preset)
    suppress = (special.empty, special.sostm) if output == "text" else ()
    if max_new_patches is not None and max_new_patches < 1:  # 0 is not "the default": say so
        raise UserError(f"max_new_patches must be >= 1, got {max_new_patches}")
    if min_speech_patches and output == "text":  # speech is suppressed: the stop would never come
        raise UserError("min_speech_patches applies to speech output; this request's output is text")
    if min_speech_patches is not None and min_speech_patches < 0:
        raise UserError(f"min_speech_patches must be >= 0, got {min_speech_patches}")
    return GenerationConfig(
        max_new_patches=spec.max_new_patches if max_new_patches is None else max_new_patches,
        length_is_default=max_new_patches is None,
        min_new_patches=min_new_patches,
        min_speech_patches=min_speech_patches or 0,
        stream_marks=(special.sostm, special.eostm),
        stop_tokens=tuple(special.by_string(s) for s in (stop or spec.stop)),
        text_sampler=(text_sampler or p.text).with_overrides(temperature, top_k, top_p),
        audio_sampler=audio_sampler or p.audio,
        suppress_tokens=suppress,
        seed=seed,
        speculative=speculative,
        adaptive_draft=adaptive_draft,
    )


# ---------------------------------------------------------------------------------------------- preparation
class TaskModel(Protocol):
    """What preparation needs of :class:`~mimo_audio.api.MimoAudio` (the facade imports this module)."""

    special: SpecialTokens
    task_table: TaskTable
    tasks: TaskLibrary
    lm: Any

    def render(self, segments) -> torch.Tensor: ...
    def generation_config(self, task: str, output: str = "text", **gen: Any) -> GenerationConfig: ...
    def encode_audio(self, audio: AudioInput) -> torch.Tensor: ...
    def _voice_codes(self, voice: Any) -> torch.Tensor | None: ...
    def _chat_prompt(self, messages, output, thinking, voice, system_prompt) -> tuple[list, str]: ...


def _job(m: TaskModel, task: str, segs, output: str, gen: dict[str, Any], **extra: Any) -> Job:
    config = m.generation_config(task, output, **gen)
    return Job(task, m.render(segs), config, decode_audio=output != "text", output=output, **extra)


def tts_min_speech_patches(text: str) -> int:
    """The default ``min_speech_patches`` of a TTS request: ``TTS_MIN_SPEECH_PER_CHAR`` speech patches per
    non-space character of ``text``, rounded up (so any text gets at least one patch)."""
    return math.ceil(TTS_MIN_SPEECH_PER_CHAR * sum(not c.isspace() for c in text))


def prepare_tts(
    m: TaskModel, text: str, instruct: str | None = None, voice: str | AudioInput | None = None, **gen: Any
) -> Job:
    """A TTS job (plain, style-instructed, or in a cloned voice). Unless the caller sets ``min_speech_patches``
    (0 turns the floor off), a stop token sampled before the output holds :func:`tts_min_speech_patches` speech
    patches becomes a speech patch: a sampled run cannot end before it has spoken.
    """
    if not isinstance(text, str):
        raise UserError(f"TTS text must be a string, got {type(text).__name__}")
    if gen.get("min_speech_patches") is None:
        gen["min_speech_patches"] = tts_min_speech_patches(text)
    segs = formats.tts(text, instruct=instruct, voice=m._voice_codes(voice))
    return _job(m, "tts", segs, "audio", gen)


def prepare_asr(m: TaskModel, audio: AudioInput, language: str = "en", **gen: Any) -> Job:
    return _job(m, "asr", formats.asr(m.encode_audio(audio), language=language), "text", gen)


def prepare_understand(
    m: TaskModel, audio: AudioInput, question: str, thinking: bool = False, think_hint: bool = False, **gen: Any
) -> Job:
    segs = formats.audio_understanding(m.encode_audio(audio), question, thinking, think_hint)
    return _job(m, "audio_understanding", segs, "text", gen)


def prepare_chat(
    m: TaskModel,
    messages,
    output: str = "text",
    thinking: bool = False,
    voice: str | AudioInput | None = None,
    system_prompt: str | None = None,
    **gen: Any,
) -> Job:
    """A chat job (``MimoAudio.prepare_chat`` attaches a Conversation, whose reply is then appended)."""
    segs, task = m._chat_prompt(messages, output, thinking, voice, system_prompt)
    return _job(m, task, segs, output, gen)


def prepare_few_shot(
    m: TaskModel,
    examples: Sequence[SpeechPair | tuple] | None,
    query: AudioInput,
    instruction: str | None = None,
    task: str | None = None,
    **gen: Any,
) -> Job:
    """In-context speech-to-speech; ``task`` names a few-shot library task (instruction, preset, examples).

    Without ``max_new_patches`` the output is bounded by the query: at most ``VC_LENGTH_FACTOR`` times its
    length plus ``VC_MARGIN_PATCHES`` (and the task's own limit, if it sets one).
    """
    name = "in_context_learning_s2s"
    task_limit = None
    if task is not None:
        entry = m.task_table.get(task)
        spec = entry.few_shot
        if spec is None or spec.modality != "speech_to_speech":
            kind = spec.modality if spec is not None else "a prompt task"
            raise ValueError(f"few-shot task {task!r} is {kind}, not speech_to_speech")
        instruction = instruction if instruction is not None else (spec.instruction or None)
        if examples is None:
            examples = [(e["input"], e["output"], e.get("output_text", "")) for e in spec.examples]
            if not examples:
                raise ValueError(
                    f"few-shot task {task!r} ships no example pairs: pass examples, or copy {spec.source} to "
                    f"{m.tasks.user_dir} and list example pairs in it"
                )
        gen.setdefault("preset", entry.spec.preset)
        task_limit = spec.max_new_patches
        name = task
    pairs = []
    for ex in examples or []:
        if isinstance(ex, SpeechPair):
            pairs.append(ex)
        else:
            inp, out, *rest = ex
            pairs.append(SpeechPair(m.encode_audio(inp), m.encode_audio(out), rest[0] if rest else ""))
    query_codes = m.encode_audio(query)
    job = _job(m, "in_context_learning_s2s", formats.in_context_s2s(pairs, query_codes, instruction), "audio", gen)
    if job.config.length_is_default:  # no length asked for: a multiple of the query, not minutes of babble
        bound = math.ceil(query_codes.shape[1] / m.lm.config.group_size * VC_LENGTH_FACTOR) + VC_MARGIN_PATCHES
        job.config = job.config.with_(max_new_patches=min(bound, task_limit or bound))
    job.task = name
    return job


def prepare_few_shot_qa(
    m: TaskModel, examples: Sequence[QAExample | tuple], audio: AudioInput, question: str, **gen: Any
) -> Job:
    exs = [e if isinstance(e, QAExample) else QAExample(m.encode_audio(e[0]), e[1], e[2]) for e in examples]
    job = _job(m, "few_shot_qa", formats.few_shot_qa(exs, m.encode_audio(audio), question), "text", gen)
    job.config = job.config.with_(suppress_tokens=(m.special.empty,))  # <|sosp|> must stay: it is a stop token
    return job


def prepare_continue(m: TaskModel, audio: AudioInput, **gen: Any) -> Job:
    return _job(m, "speech_continuation", formats.speech_continuation(m.encode_audio(audio)), "audio", gen)
