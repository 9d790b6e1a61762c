"""The task API: ``MimoAudio`` (chat, TTS, ASR, understanding, few-shot, continuation, voices, streaming).

``chat`` is the core: OpenAI-like messages with text and audio parts in, text (plus the thinking text
separately) and/or audio out. The task helpers build the official prompts of :mod:`mimo_audio.formats`
and run them with the task's sampler preset and stop tokens. Multi-turn state lives only in an explicit
:class:`Conversation` object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import formats, tasks
from .audio_io import SILENCE_PEAK, AudioInput, encode_audio  # noqa: F401 (SILENCE_PEAK: re-exported)
from .errors import SilentAudioError, UserError, check_device
from .fewshot import TaskLibrary
from .formats import QAExample, RenderTurn, SpeechPair
from .generation import GenerationConfig, generate, iter_patches
from .modeling import SpeechLM
from .postprocess import OutputParser
from .prompts import PromptRenderer, Segment
from .sampling import Sampler
from .tasks import Job, TaskTable, build_config
from .text_tokenizer import SpecialTokens, load_text_tokenizer
from .voices import VoiceRegistry, check_voice_fits

logger = logging.getLogger(__name__)

VC_LENGTH_FACTOR = tasks.VC_LENGTH_FACTOR  # few-shot conversion length bound (see mimo_audio.tasks)
VC_MARGIN_PATCHES = tasks.VC_MARGIN_PATCHES

OUTPUTS = tasks.OUTPUTS


@dataclass
class ChatResult:
    text: str  # the answer; when thinking_unclosed, the unfinished thinking text instead
    thinking: str | None  # None unless the prompt opened a think block
    codes: torch.Tensor  # [8, frames] generated speech codes (frames at 25 Hz)
    audio: torch.Tensor | None  # [samples] waveform, when decoded
    sample_rate: int
    stop_reason: str  # "stop_token" or "max_length"
    num_patches: int
    prompt_patches: int
    # The model thought and never wrote </think> (it hit the length limit or stopped inside the block):
    # there is no answer, so ``text`` holds the thinking text produced, and this flag marks it.
    thinking_unclosed: bool = False

    @property
    def seconds(self) -> float:
        return self.codes.shape[1] / 25.0

    def save_audio(self, path: str | Path) -> Path:
        import soundfile as sf

        if self.audio is None:
            raise ValueError("this result has no decoded audio")
        sf.write(str(path), self.audio.float().cpu().numpy(), self.sample_rate)
        return Path(path)


@dataclass
class StreamEvent:
    """One step of :meth:`MimoAudio.stream`: deltas since the previous event; ``result`` on the last one."""

    text: str = ""
    thinking: str = ""
    codes: torch.Tensor | None = None  # [8, frames] new speech frames
    audio: torch.Tensor | None = None  # new waveform samples (streaming decoder)
    result: ChatResult | None = None


@dataclass
class Message:
    role: str
    text: str = ""
    audio: AudioInput | None = None  # user speech (any AudioInput)
    codes: torch.Tensor | None = None  # assistant speech codes (history of spoken dialogue)


@dataclass
class Conversation:
    """Explicit multi-turn state. ``MimoAudio.chat(conv, ...)`` appends the reply to ``conv.messages``."""

    system_prompt: str | None = None
    voice: str | AudioInput | None = None  # voice prompt for spoken replies (registry name or audio)
    messages: list[Message] = field(default_factory=list)

    def add_user(self, text: str = "", audio: AudioInput | None = None) -> Conversation:
        if not text and audio is None:
            raise ValueError("a user turn needs text or audio")
        self.messages.append(Message("user", text=text, audio=audio))
        return self

    def add_assistant(self, text: str = "", codes: torch.Tensor | None = None) -> Conversation:
        self.messages.append(Message("assistant", text=text, codes=codes))
        return self

    def clear(self) -> None:
        self.messages.clear()


def _messages_from_openai(messages: Sequence[dict]) -> list[Message]:
    """``[{"role", "content": str | [{"type": "text"|"audio"|"audio_codes", ...}]}]`` -> :class:`Message` list."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
        content = m.get("content", "")
        if isinstance(content, str):
            out.append(Message(m["role"], text=content, codes=m.get("audio_codes")))
            continue
        # A list of parts: split into one Message per part so the order of text and audio is kept.
        for part in content:
            kind = part.get("type")
            if kind == "text":
                out.append(Message(m["role"], text=part["text"]))
            elif kind in ("audio", "input_audio"):
                audio = part.get("audio", part.get("input_audio"))
                if "sample_rate" in part:
                    audio = (audio, part["sample_rate"])
                out.append(Message(m["role"], audio=audio))
            elif kind == "audio_codes":
                target = "codes" if m["role"] == "assistant" else "audio"
                out.append(Message(m["role"], **{target: torch.as_tensor(part["codes"]).long()}))
            else:
                raise ValueError(f"message {i}: unknown content part type {kind!r} (use text, audio, audio_codes)")
    return out


class MimoAudio:
    """A speech LM, its text tokenizer, an audio tokenizer (optional) and the task helpers."""

    def __init__(
        self,
        lm: SpeechLM,
        text_tokenizer,
        audio_tokenizer=None,
        voices: VoiceRegistry | None = None,
        tasks: TaskLibrary | None = None,
    ):
        self.lm = lm
        self.text_tokenizer = text_tokenizer
        self.audio_tokenizer = audio_tokenizer
        self.special = SpecialTokens.from_tokenizer(text_tokenizer)
        if self.special.empty != lm.empty_token_id:
            raise ValueError("the LM's <|empty|> id differs from the text tokenizer's")
        self.renderer = PromptRenderer(text_tokenizer, self.special, lm.config.speech_zeroemb_idx, lm.config.group_size)
        self.voices = voices or VoiceRegistry()
        self.tasks = tasks or TaskLibrary()
        self.task_table = TaskTable(self.tasks)
        self.lm_path: Path | None = None  # set by from_pretrained: where mtp.safetensors is looked for
        self._speculative = None  # mimo_audio.speculative.SpeculativeText, loaded on first use
        self.last_draft_stats: list[Any] = []  # efficient.spec.SpecStats of the last speculative run, per prompt

    @classmethod
    def from_pretrained(
        cls,
        lm_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        voices_dir: str | Path | None = None,
        tasks_dir: str | Path | None = None,
    ) -> MimoAudio:
        """Load the LM directory (weights + text tokenizer) and, if given, the audio tokenizer directory.

        ``lm_path=None`` loads the embedded default model: the small LM shipped with the package and, unless
        ``tokenizer_path`` names another one, the embedded audio tokenizer it was trained with. With an
        explicit ``lm_path`` the audio tokenizer is loaded only from ``tokenizer_path`` (an official LM is
        never paired with the small embedded tokenizer behind the caller's back). ``dtype=None`` keeps the
        checkpoint's dtype, except for the embedded default, which runs in float32 however it is stored.
        """
        if lm_path is None:
            from tokenizer import defaults as tok_defaults

            from .defaults import check_pairing, default_model_dir

            lm_path = default_model_dir()
            logger.info("speech LM: %s", tok_defaults.describe(lm_path, "speech LM"))
            if tokenizer_path is None:
                tokenizer_path = tok_defaults.default_tokenizer_dir()
                logger.info("audio tokenizer: %s", tok_defaults.describe(tokenizer_path, "audio tokenizer"))
            elif Path(tokenizer_path).resolve() != Path(tok_defaults.DEFAULT_DIR).resolve():
                logger.warning("pairing the embedded default speech LM with the audio tokenizer %s: the LM was "
                               "trained on the codes of the embedded tokenizer", tokenizer_path)
            check_pairing(lm_path, tokenizer_path)
            if dtype is None:  # the default may be stored in bf16 to save space; on CPU fp32 runs ~2x faster
                dtype = torch.float32
        device = check_device(device)
        text_tokenizer = load_text_tokenizer(lm_path)
        special = SpecialTokens.from_tokenizer(text_tokenizer)
        lm = SpeechLM.from_pretrained(lm_path, device=device, dtype=dtype, empty_token_id=special.empty)
        audio_tokenizer = None
        if tokenizer_path is not None:
            from tokenizer import AudioTokenizer

            audio_tokenizer = AudioTokenizer.from_pretrained(tokenizer_path, device=device, dtype=dtype)
        m = cls(lm, text_tokenizer, audio_tokenizer, VoiceRegistry(voices_dir), TaskLibrary(tasks_dir))
        m.lm_path = Path(lm_path)
        return m

    @property
    def last_spec_stats(self) -> list[Any]:
        """Old name of :attr:`last_draft_stats` (in this package "spec" means a task's spec)."""
        return self.last_draft_stats

    @last_spec_stats.setter
    def last_spec_stats(self, value: list[Any]) -> None:
        self.last_draft_stats = value

    def load_mtp(self, path: str | Path | None = None, max_draft: int = 3):
        """Load MTP heads (``mtp.safetensors`` in ``path``, default: beside the LM) for ``speculative=K``."""
        from .speculative import SpeculativeText

        path = path if path is not None else self.lm_path
        if path is None:
            raise FileNotFoundError("no MTP heads: pass a path to load_mtp (the LM was not loaded from a directory)")
        self._speculative = SpeculativeText.from_lm(self.lm, path, max_draft=max_draft)
        return self._speculative

    # ------------------------------------------------------------------ audio in / out
    @property
    def sample_rate(self) -> int:
        return int(self.audio_tokenizer.sample_rate) if self.audio_tokenizer is not None else 24000

    def _need_tokenizer(self, what: str):
        if self.audio_tokenizer is None:
            raise ValueError(f"{what} needs an audio tokenizer: pass tokenizer_path to MimoAudio.from_pretrained")
        return self.audio_tokenizer

    def encode_audio(self, audio: AudioInput) -> torch.Tensor:
        """Any audio input -> codes ``[channels, T]`` (the LM's ``audio_channels``; see :mod:`.audio_io`).
        Integer tensors are taken as codes already."""
        return encode_audio(audio, self.audio_tokenizer, self.lm.config.audio_channels, self.sample_rate)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        tok = self._need_tokenizer("decoding audio")
        if codes.shape[1] == 0:
            return torch.zeros(0)
        return tok.decode(codes.to(self.lm.device)).float().cpu()

    def _voice_codes(self, voice: str | AudioInput | None) -> torch.Tensor | None:
        if voice is None:
            return None
        if isinstance(voice, str) and not Path(voice).suffix:
            codes = self.voices.load(voice)[0]
        else:
            codes = self.encode_audio(voice)
        check_voice_fits(codes.shape[1], self.lm.max_patches, self.lm.config.group_size)
        return codes

    def register_voice(self, name: str, audio: AudioInput, description: str = "", overwrite: bool = False) -> Path:
        """Encode ``audio`` once and store it as voice ``name``; ``voice="name"`` then reuses it.

        An existing voice is replaced only with ``overwrite=True``; a prompt longer than half the LM's
        context is refused (it would leave no room for the text and the speech).
        """
        if not overwrite:
            self.voices.check_new(name)  # before the encoding work
        codes = self.encode_audio(audio)
        frame_rate = float(getattr(self.audio_tokenizer, "frame_rate", 25))
        check_voice_fits(codes.shape[1], self.lm.max_patches, self.lm.config.group_size, frame_rate)
        src = str(audio) if isinstance(audio, (str, Path)) else "array"
        return self.voices.register(name, codes, frame_rate, src, description, overwrite=overwrite)

    # ------------------------------------------------------------------ generation core
    def generation_config(
        self,
        task: str,
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
        """The task's preset and stop tokens, with any of them overridden.

        ``temperature`` / ``top_k`` / ``top_p`` replace those knobs of the text sampler (see
        :meth:`Sampler.with_overrides`: 0 = greedy / off / off); the audio channels keep the preset's.

        ``speculative``: MTP drafting for text-only outputs (True = 3 draft tokens, or a number); needs
        ``mtp.safetensors`` beside the LM (or :meth:`load_mtp`). Greedy output is unchanged by it.
        ``task`` is any name of the task table (a prompt task or a few-shot library task).
        ``min_speech_patches`` (speech output): a stop token sampled before the output holds this many speech
        patches becomes a speech patch. ``tts`` / ``prepare_tts`` set it from the text's length by default
        (:func:`mimo_audio.tasks.tts_min_speech_patches`); a config built here has no floor unless given one.
        """
        return build_config(
            self.task_table.get(task).spec, self.special, output, preset=preset, max_new_patches=max_new_patches,
            min_new_patches=min_new_patches, min_speech_patches=min_speech_patches, seed=seed,
            text_sampler=text_sampler, audio_sampler=audio_sampler, stop=stop, speculative=speculative,
            adaptive_draft=adaptive_draft, temperature=temperature, top_k=top_k, top_p=top_p,
        )

    def render(self, segments: Sequence[Segment]) -> torch.Tensor:
        return self.renderer.render(segments)

    def _parser(self, prompt: torch.Tensor) -> OutputParser:
        text = prompt[0, :: self.lm.config.group_size].tolist()
        sp = self.special
        last_open = max((i for i, t in enumerate(text) if t == sp.think_start), default=-1)
        last_close = max((i for i, t in enumerate(text) if t == sp.think_end), default=-1)
        return OutputParser(
            self.text_tokenizer, sp, thinking_open=last_open > last_close, stream_open=text[-1] == sp.sostm
        )

    def _result(self, parser: OutputParser, stop_reason: str, n: int, prompt: torch.Tensor, decode: bool):
        parsed = parser.result(self.lm.config.audio_channels)
        audio = None
        if decode and parsed.codes.shape[1] and self.audio_tokenizer is not None:
            audio = self.decode_codes(parsed.codes)
        elif decode and not parsed.codes.shape[1]:
            logger.warning("the model generated no speech")
        text = parsed.text
        if parsed.thinking_unclosed:
            logger.warning("the model never closed its thinking (</think>): the text is the unfinished thinking")
            text = parsed.thinking or ""
        return ChatResult(
            text=text, thinking=parsed.thinking, codes=parsed.codes, audio=audio, sample_rate=self.sample_rate,
            stop_reason=stop_reason, num_patches=n, prompt_patches=prompt.shape[1] // self.lm.config.group_size,
            thinking_unclosed=parsed.thinking_unclosed,
        )

    def run(
        self, prompts: Sequence[Sequence[Segment]], config: GenerationConfig, decode_audio: bool = True
    ) -> list[ChatResult]:
        """Render and generate a batch of prompts (segment lists) with one configuration."""
        return self._generate_ids([self.render(p) for p in prompts], config, decode_audio)

    def run_job(self, job: Job) -> ChatResult:
        """Run one prepared :class:`~mimo_audio.tasks.Job` (a chat job's Conversation gets the reply)."""
        return self.run_jobs([job])[0]

    def run_jobs(self, jobs: Sequence[Job]) -> list[ChatResult]:
        """Run prepared jobs; jobs with equal settings are generated together as one batch."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.config, job.decode_audio), []).append(i)
        results: list[ChatResult | None] = [None] * len(jobs)
        for (config, decode), idx in groups.items():
            for i, r in zip(idx, self._generate_ids([jobs[i].prompt for i in idx], config, decode)):
                results[i] = r
        for job, r in zip(jobs, results):
            job.finish(r)
        return results  # type: ignore[return-value]

    def _generate_ids(self, ids: list[torch.Tensor], config: GenerationConfig, decode_audio: bool) -> list[ChatResult]:
        outs = self._speculative_run(ids, config) if config.speculative else generate(self.lm, ids, config)
        results = []
        for prompt, out in zip(ids, outs):
            parser = self._parser(prompt)
            for i, (t, c) in enumerate(zip(out.text_ids, out.codes)):
                last = i == out.num_patches - 1
                parser.push(t, c, is_stop=last and out.stop_reason == "stop_token")
            parser.finish()
            results.append(self._result(parser, out.stop_reason, out.num_patches, prompt, decode_audio))
        return results

    def _speculative_run(self, prompts: list[torch.Tensor], config: GenerationConfig) -> list:
        """Text-only generation with MTP drafting, one prompt at a time (stats in ``last_draft_stats``)."""
        if self.special.empty not in config.suppress_tokens:
            raise ValueError("speculative decoding covers text-only outputs (ASR, understanding, text replies); "
                             "this task generates speech")
        if self._speculative is None:
            self.load_mtp()
        outs, self.last_draft_stats = [], []
        for p in prompts:
            out, stats = self._speculative.generate(p, config, max_draft=config.speculative,
                                                    adaptive=config.adaptive_draft)
            outs.append(out)
            self.last_draft_stats.append(stats)
        return outs

    def stream(
        self, segments: Sequence[Segment], config: GenerationConfig, decode_audio: bool = True
    ) -> Iterator[StreamEvent]:
        """Generate one prompt, yielding text/thinking deltas and audio chunks as patches are produced.

        Audio goes through the tokenizer's streaming decoder. Stop early by leaving the loop (or calling
        ``close()`` on the iterator); the last event carries the complete :class:`ChatResult`.
        """
        return self.stream_job(Job("custom", self.render(segments), config, decode_audio))

    def stream_job(self, job: Job) -> Iterator[StreamEvent]:
        """Streaming run of one prepared job (a Conversation is not updated: add the final result yourself)."""
        prompt, config, decode_audio = job.prompt, job.config, job.decode_audio
        parser = self._parser(prompt)
        decoder = None
        if decode_audio and self.audio_tokenizer is not None:
            decoder = self.audio_tokenizer.stream_decoder()
        audio_parts: list[torch.Tensor] = []
        n, reason = 0, "max_length"

        def emit(delta) -> StreamEvent:
            ev = StreamEvent(text=delta.text, thinking=delta.thinking, codes=delta.codes)
            if decoder is not None and delta.codes is not None:
                ev.audio = decoder.push(delta.codes.to(self.lm.device)).float().cpu()
                audio_parts.append(ev.audio)
            return ev

        for step in iter_patches(self.lm, [prompt], config):
            n += 1
            stopped = bool(step.stopped[0])
            reason = "stop_token" if stopped else reason
            ev = emit(parser.push(int(step.text[0]), step.codes[0].cpu(), is_stop=stopped))
            if ev.text or ev.thinking or ev.codes is not None:
                yield ev
        final = emit(parser.finish())
        result = self._result(parser, reason, n, prompt, decode=False)
        if decoder is not None:
            tail = decoder.flush().float().cpu()
            final.audio = tail if final.audio is None else torch.cat([final.audio, tail])
            audio_parts.append(tail)
            result.audio = torch.cat(audio_parts) if audio_parts else torch.zeros(0)
        final.result = result
        yield final

    # ------------------------------------------------------------------ chat
    def _turns(self, messages: Sequence[Message]) -> list[RenderTurn]:
        turns: list[RenderTurn] = []
        for m in messages:
            parts: list[str | torch.Tensor] = []
            if m.text:
                parts.append(m.text)
            if m.audio is not None:
                codes = self.encode_audio(m.audio)
                m.audio = codes  # encode once: later turns of a Conversation reuse the codes
                parts.append(codes)
            if m.codes is not None:
                parts.append(torch.as_tensor(m.codes).long())
            if not parts:
                raise ValueError(f"a {m.role} message has neither text nor audio")
            if turns and turns[-1].role == m.role:
                turns[-1].parts.extend(parts)  # consecutive parts of one message
            else:
                turns.append(RenderTurn(m.role, parts))
        return turns

    def _chat_prompt(self, messages, output, thinking, voice, system_prompt) -> tuple[list[Segment], str]:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if isinstance(messages, Conversation):
            voice = voice if voice is not None else messages.voice
            system_prompt = system_prompt if system_prompt is not None else messages.system_prompt
            msgs = list(messages.messages)
        else:
            msgs = _messages_from_openai(messages)
        if not msgs:
            raise ValueError("no messages to answer")
        turns = self._turns(msgs)
        has_audio = any(isinstance(p, torch.Tensor) for t in turns if t.role == "user" for p in t.parts)
        if output != "text":
            task = "spoken_dialogue"
        else:
            task = "speech2text_dialogue" if has_audio else "text_dialogue"
        segs = formats.chat(turns, output, thinking, self._voice_codes(voice) if output != "text" else None,
                            system_prompt)
        return segs, task

    def chat(
        self,
        messages: Sequence[dict | Message] | Conversation,
        output: str = "text",
        thinking: bool = False,
        voice: str | AudioInput | None = None,
        system_prompt: str | None = None,
        **gen: Any,
    ) -> ChatResult:
        """Answer a conversation. ``output``: "text", "audio" or "both" (speech replies carry their text).

        With a :class:`Conversation`, the reply (text, and codes for speech) is appended to it.
        ``gen`` overrides the generation settings (``max_new_patches``, ``seed``, ``preset``, samplers...).
        """
        return self.run_job(self.prepare_chat(messages, output, thinking, voice, system_prompt, **gen))

    def stream_chat(
        self,
        messages: Sequence[dict | Message] | Conversation,
        output: str = "text",
        thinking: bool = False,
        voice: str | AudioInput | None = None,
        system_prompt: str | None = None,
        **gen: Any,
    ) -> Iterator[StreamEvent]:
        """Streaming :meth:`chat` (a Conversation is not updated; add the final result yourself)."""
        return self.stream_job(self.prepare_chat(messages, output, thinking, voice, system_prompt, **gen))

    # ------------------------------------------------------------------ dialogue helpers (multi-turn)
    def spoken_dialogue(self, conversation: Conversation, voice: str | AudioInput | None = None, **gen) -> ChatResult:
        """Speech (and/or text) in, speech and its text out; the reply is appended to ``conversation``."""
        return self.chat(conversation, output="both", voice=voice, **gen)

    def speech_to_text_dialogue(self, conversation: Conversation, thinking: bool = False, **gen) -> ChatResult:
        """Speech in, text out; the reply is appended to ``conversation``."""
        return self.chat(conversation, output="text", thinking=thinking, **gen)

    def text_dialogue(self, conversation: Conversation, thinking: bool = False, **gen) -> ChatResult:
        """Text in, text out; the reply is appended to ``conversation``."""
        return self.chat(conversation, output="text", thinking=thinking, **gen)

    # ------------------------------------------------------------------ task preparation (see mimo_audio.tasks)
    def prepare_tts(self, text: str, instruct: str | None = None, voice: str | AudioInput | None = None,
                    **gen) -> Job:
        return tasks.prepare_tts(self, text, instruct, voice, **gen)

    def prepare_asr(self, audio: AudioInput, language: str = "en", **gen) -> Job:
        return tasks.prepare_asr(self, audio, language, **gen)

    def prepare_chat(self, messages: Sequence[dict | Message] | Conversation, output: str = "text",
                     thinking: bool = False, voice: str | AudioInput | None = None,
                     system_prompt: str | None = None, **gen) -> Job:
        job = tasks.prepare_chat(self, messages, output, thinking, voice, system_prompt, **gen)
        if isinstance(messages, Conversation):
            job.conversation = messages  # run_job / the engine append the reply to it
        return job

    def prepare_understand(self, audio: AudioInput, question: str, thinking: bool = False, think_hint: bool = False,
                           **gen) -> Job:
        return tasks.prepare_understand(self, audio, question, thinking, think_hint, **gen)

    def prepare_few_shot(self, examples: Sequence[SpeechPair | tuple] | None, query: AudioInput,
                         instruction: str | None = None, task: str | None = None, **gen) -> Job:
        return tasks.prepare_few_shot(self, examples, query, instruction, task, **gen)

    def prepare_few_shot_qa(self, examples: Sequence[QAExample | tuple], audio: AudioInput, question: str,
                            **gen) -> Job:
        return tasks.prepare_few_shot_qa(self, examples, audio, question, **gen)

    def prepare_continue(self, audio: AudioInput, **gen) -> Job:
        return tasks.prepare_continue(self, audio, **gen)

    # ------------------------------------------------------------------ task helpers (prepare + run)
    def tts(self, text: str, instruct: str | None = None, voice: str | AudioInput | None = None, **gen) -> ChatResult:
        """Text to speech; ``instruct`` describes the style, ``voice`` is a registry name or audio to clone.

        The reply cannot end before it has spoken: a stop token sampled before it holds ``min_speech_patches``
        speech patches becomes a speech patch (default: 0.1 per non-space character of ``text``, see
        :func:`mimo_audio.tasks.tts_min_speech_patches`; pass 0 to turn the floor off).
        """
        return self.tts_batch([text], instruct=instruct, voice=voice, **gen)[0]

    def tts_batch(
        self, texts: Sequence[str], instruct: str | None = None, voice: str | AudioInput | None = None, **gen
    ) -> list[ChatResult]:
        if isinstance(texts, str) or texts is None:
            raise UserError("tts_batch takes a list of texts (use tts for one text)")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise UserError(f"TTS text {i} must be a string, got {type(t).__name__}")
        voice_codes = self._voice_codes(voice)  # encoded once for the whole batch
        return self.run_jobs([self.prepare_tts(t, instruct, voice_codes, **gen) for t in texts])

    def asr(self, audio: AudioInput, language: str = "en", **gen) -> str:
        return self.asr_batch([audio], language, **gen)[0]

    def asr_batch(self, audios: Sequence[AudioInput], language: str = "en", **gen) -> list[str]:
        """Transcribe each clip; a silent clip (peak below ``SILENCE_PEAK``) gets "" without running the model."""
        texts: list[str] = [""] * len(audios)
        jobs, rows = [], []
        for i, a in enumerate(audios):
            try:
                jobs.append(self.prepare_asr(a, language, **gen))
            except SilentAudioError:
                logger.info("audio input %d is silent: empty transcript", i)
                continue
            rows.append(i)
        for i, r in zip(rows, self.run_jobs(jobs)):
            texts[i] = r.text
        return texts

    def understand(
        self, audio: AudioInput, question: str, thinking: bool = False, think_hint: bool = False, **gen
    ) -> ChatResult:
        """Answer ``question`` about ``audio``; ``think_hint`` adds the eval wrapper's thinking sentence."""
        return self.run_job(self.prepare_understand(audio, question, thinking, think_hint, **gen))

    def few_shot(
        self,
        examples: Sequence[SpeechPair | tuple] | None,
        query: AudioInput,
        instruction: str | None = None,
        task: str | None = None,
        **gen,
    ) -> ChatResult:
        """In-context speech-to-speech (base model): example pairs ``(input, output[, output_text])``.

        ``task`` names a few-shot library task; its instruction, preset and examples are the defaults.
        Without ``max_new_patches`` the output is bounded by the query: at most ``VC_LENGTH_FACTOR`` times
        its length plus ``VC_MARGIN_PATCHES`` (and the task's own limit, if it sets one).
        """
        return self.run_job(self.prepare_few_shot(examples, query, instruction, task, **gen))

    def few_shot_qa(
        self, examples: Sequence[QAExample | tuple], audio: AudioInput, question: str, **gen
    ) -> ChatResult:
        """Few-shot audio question answering (base model); ``examples`` are ``(audio, question, answer)``."""
        return self.run_job(self.prepare_few_shot_qa(examples, audio, question, **gen))

    def continue_speech(self, audio: AudioInput, **gen) -> ChatResult:
        """Continue a speech prompt (base model); default length: ``formats.TASKS["speech_continuation"]``."""
        return self.run_job(self.prepare_continue(audio, **gen))
