"""Speech-LM subcommands: ``tts``, ``asr``, ``chat``, ``vc`` (few-shot voice conversion), ``continue``,
and ``voice`` (the voice registry).

Each writes its audio as a 24 kHz wav (``-o``; ``asr -o`` writes the transcripts as text) and a JSON summary
(``--json``, or stdout). Output paths and ``--device`` are checked before any model is loaded. Without
``--lm-path`` they run the embedded default model shipped with the package (and say so once per run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from apps.checks import check_device, check_outputs, fail, note_default_model
from apps.commands.options import dtype_option, torch_dtype

logger = logging.getLogger("mimo-audio")

# Stated default lengths (mirrors of mimo_audio's; the library is imported only when a command runs)
VC_LENGTH_FACTOR = 2.0  # mimo_audio.api.VC_LENGTH_FACTOR
VC_MARGIN_PATCHES = 25  # mimo_audio.api.VC_MARGIN_PATCHES
CONTINUATION_PATCHES = 125  # mimo_audio.formats.TASKS["speech_continuation"].max_new_patches

LM_ENV = "MIMO_AUDIO_LM_PATH"
TOKENIZER_ENV = "MIMO_AUDIO_TOKENIZER_PATH"


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)  # argparse type: an integer >= 1 (0 is not "the default")
non_negative_int = _int_at_least(0)  # argparse type: an integer >= 0


def _common(p: argparse.ArgumentParser, needs_audio_tokenizer: bool = True, length_default: str = "",
            output_help: str = "write the generated audio to this file (.wav or .flac)") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--lm-path", default=os.environ.get(LM_ENV),
                   help=f"speech-LM directory (config.json, safetensors, text tokenizer); default ${LM_ENV}, "
                   "else the embedded default model shipped with the package")
    g.add_argument("--tokenizer-path", default=os.environ.get(TOKENIZER_ENV),
                   help=f"audio tokenizer directory; default ${TOKENIZER_ENV}, else the embedded default tokenizer "
                   "when --lm-path is not given either"
                   + ("" if needs_audio_tokenizer else " (only needed for audio in or out)"))
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", type=dtype_option(("auto", "fp32", "bf16", "fp16")), default="auto",
                   help="weights dtype: auto, fp32, bf16 or fp16 (auto keeps the checkpoint's; fp32 for the embedded "
                   "default)")
    g.add_argument("--voices-dir", default=None, help="voice registry folder (default $MIMO_AUDIO_HOME/voices)")
    s = p.add_argument_group("generation")
    s.add_argument("--max-new-patches", type=positive_int, default=None,
                   help="length limit, >= 1 (6.25 patches = 1 s of audio); default: "
                   + (length_default or "the task's"))
    s.add_argument("--min-new-patches", type=int, default=0, help="stop tokens are blocked before this length")
    s.add_argument("--preset", default=None, help="sampler preset (default: the task's; 'greedy' = deterministic)")
    s.add_argument("--temperature", type=float, default=None,
                   help="text sampling temperature, overriding the preset's (0 = greedy)")
    s.add_argument("--top-p", type=float, default=None, help="text nucleus sampling mass, overriding the preset's "
                   "(1 = off; filters only while sampling)")
    s.add_argument("--top-k", type=int, default=None, help="text top-k, overriding the preset's (0 = off)")
    s.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", default=None, help=output_help)
    o.add_argument("--json", dest="json_path", default=None, help="write a JSON summary here (.json; default: stdout)")


def _load(args: argparse.Namespace, need_tokenizer: bool):
    from mimo_audio import MimoAudio

    # No LM given: the embedded default model (LM + its audio tokenizer). An explicit LM is never paired
    # with the embedded tokenizer implicitly: its tokenizer must be named too.
    if args.lm_path and need_tokenizer and not args.tokenizer_path:
        raise ValueError(f"this command needs the audio tokenizer of {args.lm_path}: pass --tokenizer-path or set "
                         f"${TOKENIZER_ENV} (the embedded tokenizer is used only with the embedded LM)")
    dtype = torch_dtype(args.dtype)
    if not args.lm_path:
        note_default_model()
    return MimoAudio.from_pretrained(
        args.lm_path or None, args.tokenizer_path or None, device=args.device, dtype=dtype,
        voices_dir=args.voices_dir,
    )


def _gen(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"min_new_patches": args.min_new_patches}
    for key in ("max_new_patches", "preset", "seed", "temperature", "top_k", "top_p"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if getattr(args, "speculative", 0):
        out["speculative"] = args.speculative
        out["adaptive_draft"] = not args.fixed_draft
    return out


def _add_speculative(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speculative", type=int, default=0, metavar="K",
                   help="MTP speculative decoding of text output, up to K draft tokens per step (needs "
                        "mtp.safetensors beside the LM: `mimo-audio train mtp`); greedy output is unchanged. "
                        "Adaptive: drafting is shortened or switched off while it does not pay")
    p.add_argument("--fixed-draft", action="store_true",
                   help="with --speculative: always draft K tokens (for measurements; can be slower than plain)")


def _spec_summary(m) -> dict[str, Any]:
    stats = getattr(m, "last_draft_stats", None) or []
    if not stats:
        return {}
    return {"speculative": [{"accept_per_position": [round(a, 3) for a in s.acceptance_per_position],
                             "accept_length": round(s.acceptance_length, 3),
                             "tokens_per_forward": round(s.tokens_per_forward, 3),
                             "draft_rounds": s.draft_rounds, "plain_steps": s.plain_steps} for s in stats]}


def _emit(args: argparse.Namespace, result, elapsed: float, extra: dict[str, Any] | None = None) -> int:
    summary: dict[str, Any] = {
        "text": result.text,
        "thinking": result.thinking,
        "stop_reason": result.stop_reason,
        "prompt_patches": result.prompt_patches,
        "generated_patches": result.num_patches,
        "audio_frames": int(result.codes.shape[1]),
        "audio_seconds": round(result.seconds, 3),
        "elapsed_s": round(elapsed, 3),
    }
    if result.seconds:
        summary["real_time_factor"] = round(elapsed / result.seconds, 3)
    if result.thinking_unclosed:
        summary["thinking_unclosed"] = True
    missing = bool(getattr(args, "output", None)) and (result.audio is None or result.audio.numel() == 0)
    if getattr(args, "output", None) and not missing:
        summary["audio"] = str(result.save_audio(args.output))
    summary.update(extra or {})
    _write_summary(args, summary)
    if missing:
        logger.error("no speech was generated, so %s was not written (the reply is in the summary; try another "
                     "--seed, or --reply text)", args.output)
        return 1
    return 0


def _write_summary(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    """The JSON summary of a command: to ``--json FILE`` when given, else to stdout."""
    text = json.dumps(summary, ensure_ascii=False, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")
    return 0


def _tts(args: argparse.Namespace) -> int:
    check_outputs(args, inputs=[args.voice])
    m = _load(args, need_tokenizer=True)
    t0 = time.perf_counter()
    gen = _gen(args)
    if args.min_speech_patches is not None:
        gen["min_speech_patches"] = args.min_speech_patches
    r = m.tts(args.text, instruct=args.instruct, voice=args.voice, **gen)
    return _emit(args, r, time.perf_counter() - t0)


def _asr(args: argparse.Namespace) -> int:
    check_outputs(args, audio=False, inputs=args.audio)
    m = _load(args, need_tokenizer=True)
    t0 = time.perf_counter()
    texts = m.asr_batch(args.audio, language=args.language, **_gen(args))
    elapsed = time.perf_counter() - t0
    summary = {"transcripts": [{"audio": a, "text": t} for a, t in zip(args.audio, texts)], "elapsed_s": elapsed}
    summary.update(_spec_summary(m))
    if args.output:  # one transcript per line, in the order of the inputs (a silent clip gives an empty line)
        Path(args.output).write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
        summary["output"] = args.output
    return _write_summary(args, summary)


def _chat(args: argparse.Namespace) -> int:
    if not args.text and not args.audio:
        fail("give the user turn with --text and/or --audio")
    if args.output and args.reply == "text":
        fail("-o writes the spoken reply: use it with --reply audio or --reply both")
    check_outputs(args, inputs=[args.audio, args.voice])
    m = _load(args, need_tokenizer=bool(args.audio) or args.reply != "text")
    content: list[dict[str, Any]] = []
    if args.audio:
        content.append({"type": "audio", "audio": args.audio})
    if args.text:
        content.append({"type": "text", "text": args.text})
    t0 = time.perf_counter()
    r = m.chat([{"role": "user", "content": content}], output=args.reply, thinking=args.thinking,
               voice=args.voice, system_prompt=args.system_prompt, **_gen(args))
    return _emit(args, r, time.perf_counter() - t0, _spec_summary(m) if args.speculative else None)


def _vc(args: argparse.Namespace) -> int:
    if not args.example and not args.task:
        fail("give example pairs with --example IN OUT [TRANSCRIPT], or a library task with --task")
    check_outputs(args, inputs=[args.audio] + [f for ex in args.example or [] for f in ex[:2]])
    m = _load(args, need_tokenizer=True)
    examples = None
    if args.example:
        examples = []
        for ex in args.example:
            if len(ex) not in (2, 3):
                raise ValueError(f"--example takes IN OUT [TRANSCRIPT], got {len(ex)} values")
            examples.append(tuple(ex))
    t0 = time.perf_counter()
    r = m.few_shot(examples, args.audio, instruction=args.instruction, task=args.task, **_gen(args))
    return _emit(args, r, time.perf_counter() - t0)


def _continue(args: argparse.Namespace) -> int:
    check_outputs(args, inputs=[args.audio])
    m = _load(args, need_tokenizer=True)
    t0 = time.perf_counter()
    r = m.continue_speech(args.audio, **_gen(args))
    return _emit(args, r, time.perf_counter() - t0)


def _voice(args: argparse.Namespace) -> int:
    from mimo_audio.voices import VoiceRegistry

    registry = VoiceRegistry(args.voices_dir)
    if args.action == "list":
        out = []
        for name in registry.names():
            _, info = registry.load(name)
            out.append({"name": name, "seconds": round(info.seconds, 2), "source": info.source,
                        "description": info.description})
        sys.stdout.write(json.dumps({"registry": str(registry.root), "voices": out}, indent=2) + "\n")
        return 0
    if not args.name:
        raise ValueError(f"voice {args.action} needs a NAME")
    if args.action == "remove":
        registry.remove(args.name)  # an unknown name is an error
        sys.stdout.write(json.dumps({"removed": args.name, "registry": str(registry.root)}) + "\n")
        return 0
    if not args.audio:
        fail("voice add needs NAME and AUDIO")
    if not args.force:
        registry.check_new(args.name)  # before loading anything
    check_device(args.device)
    from mimo_audio.api import SILENCE_PEAK
    from mimo_audio.audio_io import encode_audio
    from mimo_audio.config import SpeechLMConfig
    from mimo_audio.defaults import default_model_dir
    from mimo_audio.voices import check_voice_fits
    from tokenizer import AudioTokenizer
    from tokenizer.audio import load_audio

    lm_path = args.lm_path or os.environ.get(LM_ENV)
    if not args.tokenizer_path and lm_path:  # as in _load: no implicit pairing with an explicit LM
        fail(f"--lm-path / ${LM_ENV} names a speech LM: pass its audio tokenizer with --tokenizer-path "
             f"or set ${TOKENIZER_ENV}, so the voice is encoded with the tokenizer that LM reads")
    max_patches, group = _lm_context(lm_path)
    lm_dir = Path(lm_path) if lm_path else default_model_dir()
    channels = SpeechLMConfig.from_json_file(lm_dir / "config.json").audio_channels  # the codebooks that LM reads
    if not Path(args.audio).is_file():
        raise FileNotFoundError(f"audio file not found: {args.audio}")
    wav, sr = load_audio(args.audio)
    if float(wav.abs().max()) < SILENCE_PEAK:
        fail(f"{args.audio} is silent")
    tok = AudioTokenizer.from_pretrained(args.tokenizer_path or None, device=args.device)
    # refuse what cannot fit before encoding it (a 10-minute prompt would make every later TTS fail)
    check_voice_fits(int(wav.shape[-1] / sr * tok.frame_rate), max_patches, group, float(tok.frame_rate))
    codes = encode_audio((wav, sr), tok, channels)  # the same validation and encoding as MimoAudio.register_voice
    check_voice_fits(codes.shape[1], max_patches, group, float(tok.frame_rate))
    path = registry.register(args.name, codes, float(tok.frame_rate), str(args.audio), args.description,
                             overwrite=args.force)
    _, info = registry.load(args.name)
    sys.stdout.write(json.dumps({"name": args.name, "path": str(path), "seconds": round(info.seconds, 2)}) + "\n")
    return 0


def _lm_context(lm_path: str | None) -> tuple[int, int]:
    """(context in patches, frames per patch) of the LM the voice is for (default: the embedded one)."""
    from mimo_audio.config import SpeechLMConfig
    from mimo_audio.defaults import default_model_dir

    directory = Path(lm_path) if lm_path else default_model_dir()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a speech-LM directory (config.json missing)")
    cfg = SpeechLMConfig.from_json_file(directory / "config.json")
    return int(cfg.max_position_embeddings), int(cfg.group_size)


def register(subparsers) -> None:
    p = subparsers.add_parser("tts", help="text to speech with the speech LM",
                              description="Synthesise speech from text (optionally a style and a voice).")
    p.add_argument("text", help="the text to speak")
    p.add_argument("--instruct", default=None, help="style description, e.g. 'whispering, slowly'")
    p.add_argument("--voice", default=None, help="registered voice name or a wav file to clone")
    _common(p)
    p.add_argument("--min-speech-patches", type=non_negative_int, default=None,
                   help="the reply cannot end before this much speech (6.25 patches = 1 s); default: 0.1 per "
                   "non-space character of the text, a fifth of a normal speaking rate; 0 = no floor")
    p.set_defaults(func=_tts)

    p = subparsers.add_parser("asr", help="speech recognition with the speech LM",
                              description="Transcribe one or more audio files (batched).")
    p.add_argument("audio", nargs="+", help="audio files")
    p.add_argument("--language", choices=("en", "zh"), default="en", help="language of the instruction sentence")
    _common(p, output_help="write the transcripts to this text file (.txt), one line per input; a silent clip "
            "gives an empty line")
    _add_speculative(p)
    p.set_defaults(func=_asr)

    p = subparsers.add_parser("chat", help="one chat turn (text and/or speech in; text and/or speech out)",
                              description="Answer one user turn; --reply audio/both speaks the answer.")
    p.add_argument("--text", default=None, help="user text")
    p.add_argument("--audio", default=None, help="user speech (audio file)")
    p.add_argument("--reply", choices=("text", "audio", "both"), default="text", help="reply modality")
    p.add_argument("--thinking", action="store_true", help="let the model think first (text replies)")
    p.add_argument("--system-prompt", default=None, help="system prompt (put before the first user turn)")
    p.add_argument("--voice", default=None, help="voice for spoken replies (registered name or wav)")
    _common(p, needs_audio_tokenizer=False)
    _add_speculative(p)
    p.set_defaults(func=_chat)

    p = subparsers.add_parser("vc", help="few-shot voice conversion / speech-to-speech from example pairs",
                              description="In-context speech-to-speech (base model): converts AUDIO the way "
                              "the example pairs show (voice, emotion, speed, noise).")
    p.add_argument("audio", help="the speech to convert")
    p.add_argument("--example", nargs="+", action="append", metavar="IN OUT [TRANSCRIPT]",
                   help="an example pair: input wav, output wav, optional transcript of the output (repeatable)")
    p.add_argument("--task", default=None, help="few-shot library task (e.g. voice_conversion, speed_up)")
    p.add_argument("--instruction", default=None, help="instruction text after '[Int]:'")
    _common(p, length_default=f"{VC_LENGTH_FACTOR:g} x the query's length + {VC_MARGIN_PATCHES} patches "
            f"({VC_MARGIN_PATCHES / 6.25:g} s), within the task's own limit")
    p.set_defaults(func=_vc)

    p = subparsers.add_parser("voice", help="manage the voice registry (voices for --voice NAME)",
                              description="add: encode AUDIO once and store it as NAME; list; remove NAME.")
    p.add_argument("action", choices=("add", "list", "remove"))
    p.add_argument("name", nargs="?", help="voice name (letters, digits, _ - .)")
    p.add_argument("audio", nargs="?", help="audio file (for add)")
    p.add_argument("--description", default="", help="free text stored with the voice")
    p.add_argument("--tokenizer-path", default=os.environ.get(TOKENIZER_ENV),
                   help=f"audio tokenizer directory (for add); default ${TOKENIZER_ENV}, else the embedded default "
                   "tokenizer: encode voices with the tokenizer of the LM that will use them")
    p.add_argument("--device", default=None, help="device for encoding")
    p.add_argument("--voices-dir", default=None, help="registry folder (default $MIMO_AUDIO_HOME/voices)")
    p.add_argument("--force", action="store_true", help="add: replace an existing voice of that name")
    p.add_argument("--lm-path", default=None,
                   help=f"add: the speech LM the voice is for (default ${LM_ENV}, else the embedded default): a "
                   "voice may take at most half its context")
    p.set_defaults(func=_voice)

    p = subparsers.add_parser("continue", help="continue a speech prompt (base model)",
                              description="Generate a spoken continuation of AUDIO.")
    p.add_argument("audio", help="the speech prompt")
    _common(p, length_default=f"{CONTINUATION_PATCHES} patches ({CONTINUATION_PATCHES / 6.25:g} s)")
    p.set_defaults(func=_continue)
