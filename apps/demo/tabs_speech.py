"""Tabs whose output is speech: TTS, voice cloning, few-shot speech-to-speech, continuation, tokenizer round trip."""

from __future__ import annotations

import time

import gradio as gr
import numpy as np

from .audio_io import InputError, check_text, read_audio
from .backend import Speed
from .plots import codes_image, wave_image
from .ui import NO_VOICE, AudioStreamer, Ctx, example, guarded, max_patches, picture, result_audio, seed_arg, voice_arg

TTS_EXAMPLES = [
    ["The birch canoe slid on the smooth planks.", ""],
    ["Please close the window before you leave.", "whispering, slowly"],
    ["We walked along the river until sunset.", "happy and excited, fast"],
]


def _audio_in(label: str, value: str | None = None, elem_id: str | None = None) -> gr.Audio:
    # format=None: the file reaches the handler untouched, and read_audio explains what is wrong with it
    return gr.Audio(label=label, type="filepath", sources=["upload", "microphone"], value=value, format=None,
                    elem_id=elem_id)


def _speech_outputs(label: str, key: str):
    """A streaming player next to the full result file (the file keeps the model's own level)."""
    with gr.Row():
        stream = gr.Audio(label=f"{label} (streaming)", streaming=True, autoplay=True, interactive=False,
                          elem_id=f"{key}-stream", elem_classes=["stream-out"])
        full = gr.Audio(label=f"{label} (complete wav)", type="filepath", interactive=False, elem_id=f"{key}-out",
                        elem_classes=["full-out"])
    return stream, full


def _speed(key: str) -> gr.Markdown:
    return gr.Markdown(elem_id=f"{key}-speed", elem_classes=["speed"])


def _pictures():
    with gr.Row():
        wave = picture("waveform and spectrogram", "wave-img")
        codes = picture("RVQ codes", "codes-img")
    return wave, codes


def _stream_speech(ctx: Ctx, events, label: str):
    """Drive a speech-producing task: yields (chunk, full, wave, codes, speed) tuples; the last one is complete."""
    speed, streamer = Speed.start(), AudioStreamer(ctx.sr)
    result = None
    for ev in events:
        speed.update(ev)
        chunk = streamer.push(ev.audio)
        if chunk is not None:
            yield chunk, gr.skip(), gr.skip(), gr.skip(), ctx.speed_md(speed)
        if ev.result is not None:
            result = ev.result
    tail = streamer.flush()
    wav = result_audio(result, streamer)
    if wav.size == 0:
        gr.Warning(f"The model produced no speech for {label} (it stopped after {result.num_patches} patches).")
        yield tail, None, wave_image(wav, ctx.sr, f"{label}: no speech"), None, ctx.speed_md(speed)
        return
    path = ctx.out.wav(wav, ctx.sr, label.replace(" ", "_"))
    yield (tail, path, wave_image(wav, ctx.sr, label),
           codes_image(result.codes, f"{label}: generated codes", ctx.backend.codebook_sizes), ctx.speed_md(speed))


# ---------------------------------------------------------------------------------------------------- TTS
def tts_tab(ctx: Ctx) -> None:
    gr.Markdown("Text to speech. Pick a saved voice (make one in *Voice cloning*), describe a style, and listen "
                "while it is generated.")
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(label="Text", value=TTS_EXAMPLES[0][0], lines=3, elem_id="tts-text")
            instruct = gr.Textbox(label="Style (instruct, optional)", placeholder="e.g. whispering, slowly")
        with gr.Column(scale=2):
            voice = gr.Dropdown(label="Voice", choices=ctx.voice_choices(), value=NO_VOICE, allow_custom_value=False)
            ctx.voice_pickers.append(voice)
            seed = gr.Number(label="Seed (empty = random)", value=0, precision=0)
            max_s = gr.Slider(2, 60, value=20, step=1, label="Max length (s)")
    go = gr.Button("Speak", variant="primary", elem_id="tts-run")
    stream, full = _speech_outputs("TTS", "tts")
    speed = _speed("tts")
    wave, codes = _pictures()
    gr.Examples(TTS_EXAMPLES, [text, instruct], label="Examples")

    @guarded
    def run(text, instruct, voice, seed, max_s):
        text = check_text(text, "the text to speak")
        instruct = check_text(instruct, "the style", required=False) or None
        events = ctx.backend.stream("tts", text, instruct=instruct, voice=voice_arg(voice),
                                    gen={"seed": seed_arg(seed), "max_new_patches": max_patches(max_s)})
        yield from _stream_speech(ctx, events, "TTS")

    go.click(run, [text, instruct, voice, seed, max_s], [stream, full, wave, codes, speed], api_name="tts")


# ---------------------------------------------------------------------------------------------------- voices
def clone_tab(ctx: Ctx) -> None:
    gr.Markdown("Clone a voice: upload or record a few seconds of speech, name it, and save it into the voice "
                "registry. It is encoded once; every tab's voice picker can then use it.")
    with gr.Row():
        with gr.Column():
            audio = _audio_in("Voice prompt (3-20 s of speech)", example("awb_0"))
            name = gr.Textbox(label="Voice name", value="awb_demo", elem_id="clone-name")
            desc = gr.Textbox(label="Description (optional)", value="flite awb, Scottish English male")
            with gr.Row():
                sample_text = gr.Textbox(label="Try it with this text", value="This is my new voice.", scale=3)
                seed = gr.Number(label="Seed", value=2, precision=0, scale=1)
            go = gr.Button("Save voice and try it", variant="primary", elem_id="clone-run")
        with gr.Column():
            status = gr.Markdown(elem_id="clone-status")
            stream, full = _speech_outputs("Cloned voice", "clone")
            speed = _speed("clone")
            wave = picture("voice prompt", "wave-img")
    gr.Examples([[example("awb_0"), "awb_demo"], [example("espeak_1"), "espeak_demo"],
                 [example("slt_2"), "slt_demo"]], [audio, name], label="Examples")

    @guarded
    def run(audio, name, desc, sample_text, seed):
        name = check_text(name, "the voice name")
        clip = read_audio(audio, "the voice prompt", ctx.max_input_seconds)
        sample_text = check_text(sample_text, "the text to try the voice with")
        path = ctx.backend.register_voice(name, clip.wav, clip.sample_rate, desc or "")
        msg = f"Saved voice **{name}** ({clip.seconds:.1f} s) to `{path}`. Voices: {', '.join(ctx.backend.voices())}"
        pickers = [gr.update(choices=ctx.voice_choices()) for _ in ctx.voice_pickers]
        img = wave_image(clip.wav, clip.sample_rate, "voice prompt")
        events = ctx.backend.stream("tts", sample_text, voice=name, gen={"seed": seed_arg(seed)})
        for chunk, full_path, _w, _c, sp in _stream_speech(ctx, events, f"voice {name}"):
            yield (msg, chunk, full_path, sp, img, *pickers)

    go.click(run, [audio, name, desc, sample_text, seed], [status, stream, full, speed, wave, *ctx.voice_pickers],
             api_name="clone_voice")


# ---------------------------------------------------------------------------------------------------- few-shot
QUERY_CANDIDATES = ("espeak_1", "awb_1", "slt_1")
MAX_PAIRS = 3


def _s2s_tasks(ctx: Ctx) -> list[str]:
    lib = ctx.backend.model.tasks
    return [n for n in lib.names() if lib.get(n).modality == "speech_to_speech"]


def _task_view(ctx: Ctx, name: str):
    """Description, instruction, the library's example pairs (as players) and a held-out default query."""
    spec = ctx.backend.model.tasks.get(name)
    used = {p for e in spec.examples for p in (e["input"], e["output"])}
    query = next((example(c) for c in QUERY_CANDIDATES if example(c) not in used), example(QUERY_CANDIDATES[0]))
    players = []
    for i in range(MAX_PAIRS):
        e = spec.examples[i] if i < len(spec.examples) else None
        players += [gr.update(value=e["input"] if e else None), gr.update(value=e["output"] if e else None)]
    note = f"**{name}**: {spec.description or '(no description)'}  \n"
    note += (f"{len(spec.examples)} example pairs ship with it (below)." if spec.examples else
             "This task ships no example pairs: use *my example pairs*.")
    return (note, spec.instruction, query, *players)


def few_shot_tab(ctx: Ctx) -> None:
    gr.Markdown("Few-shot speech-to-speech (in-context learning): the model sees example pairs *input -> output* "
                "and transforms your query the same way. Use a task from the library or your own pairs.")
    tasks = _s2s_tasks(ctx)
    first = "voice_conversion" if "voice_conversion" in tasks else tasks[0]
    note0, instr0, query0, *players0 = _task_view(ctx, first)
    with gr.Row():
        task = gr.Dropdown(tasks, value=first, label="Library task")
        source = gr.Radio(["library examples", "my example pairs"], value="library examples", label="Examples from")
    note = gr.Markdown(note0)
    instruction = gr.Textbox(label="Instruction (optional)", value=instr0)
    with gr.Accordion("Library example pairs", open=False):
        lib_players = []
        for i in range(MAX_PAIRS):
            with gr.Row():
                lib_players.append(gr.Audio(label=f"library pair {i + 1}: input", value=players0[2 * i]["value"],
                                            interactive=False, type="filepath"))
                lib_players.append(gr.Audio(label=f"library pair {i + 1}: output",
                                            value=players0[2 * i + 1]["value"], interactive=False, type="filepath"))
    with gr.Accordion("My example pairs (input -> output)", open=False):
        user_pairs = []
        for i in range(MAX_PAIRS):
            with gr.Row():
                user_pairs.append(_audio_in(f"my pair {i + 1}: input"))
                user_pairs.append(_audio_in(f"my pair {i + 1}: output"))
    with gr.Row():
        query = _audio_in("Query (the speech to transform)", query0)
        with gr.Column():
            seed = gr.Number(label="Seed (empty = random)", value=0, precision=0)
            max_s = gr.Slider(2, 60, value=15, step=1, label="Max length (s)")
    go = gr.Button("Transform", variant="primary", elem_id="fewshot-run")
    stream, full = _speech_outputs("Few-shot output", "fewshot")
    speed = _speed("fewshot")
    wave, codes = _pictures()
    task.change(lambda n: _task_view(ctx, n), task, [note, instruction, query, *lib_players],
                api_visibility="private")

    @guarded
    def run(task_name, source, instruction, query, seed, max_s, *pairs):
        q = read_audio(query, "the query", ctx.max_input_seconds)
        gen = {"seed": seed_arg(seed), "max_new_patches": max_patches(max_s)}
        instr = check_text(instruction, "the instruction", required=False) or None
        if source == "my example pairs":
            examples = []
            for i in range(MAX_PAIRS):
                a, b = pairs[2 * i], pairs[2 * i + 1]
                if a is None and b is None:
                    continue
                if a is None or b is None:
                    raise InputError(f"my pair {i + 1} needs both an input and an output")
                ia = read_audio(a, f"my pair {i + 1} input", ctx.max_input_seconds)
                ob = read_audio(b, f"my pair {i + 1} output", ctx.max_input_seconds)
                examples.append(((ia.wav, ia.sample_rate), (ob.wav, ob.sample_rate)))
            if not examples:
                raise InputError("no example pairs given: upload at least one input/output pair, or use the "
                                 "library examples")
            events = ctx.backend.stream("few_shot", examples, (q.wav, q.sample_rate), instruction=instr, gen=gen)
        else:
            events = ctx.backend.stream("few_shot", None, (q.wav, q.sample_rate), instruction=instr, task=task_name,
                                        gen=gen)
        yield from _stream_speech(ctx, events, "few-shot output")

    go.click(run, [task, source, instruction, query, seed, max_s, *user_pairs], [stream, full, wave, codes, speed],
             api_name="few_shot")


# ---------------------------------------------------------------------------------------------------- continuation
def _joined(ctx: Ctx, clip, continuation_path: str) -> str:
    """The prompt (resampled to the model's rate), a short pause, then the continuation: one file to play."""
    import librosa
    import soundfile as sf

    head = librosa.resample(clip.wav, orig_sr=clip.sample_rate, target_sr=ctx.sr)
    cont, _ = sf.read(continuation_path, dtype="float32")
    pause = np.zeros(ctx.sr // 5, np.float32)
    return ctx.out.wav(np.concatenate([head, pause, cont]), ctx.sr, "prompt_and_continuation")


def continuation_tab(ctx: Ctx) -> None:
    gr.Markdown("Speech continuation: the model hears the prompt and keeps talking.")
    with gr.Row():
        prompt = _audio_in("Speech prompt", example("slt_1"))
        with gr.Column():
            seed = gr.Number(label="Seed (empty = random)", value=0, precision=0)
            max_s = gr.Slider(2, 60, value=10, step=1, label="Max length (s)")
    go = gr.Button("Continue", variant="primary", elem_id="continue-run")
    stream, full = _speech_outputs("Continuation", "continue")
    joined = gr.Audio(label="prompt + continuation", type="filepath", interactive=False, elem_id="continue-joined")
    speed = _speed("continue")
    wave, codes = _pictures()
    gr.Examples([[example("slt_1")], [example("awb_2")], [example("espeak_0")]], [prompt], label="Examples")

    @guarded
    def run(prompt, seed, max_s):
        clip = read_audio(prompt, "the speech prompt", ctx.max_input_seconds)
        events = ctx.backend.stream("continue", (clip.wav, clip.sample_rate),
                                    gen={"seed": seed_arg(seed), "max_new_patches": max_patches(max_s)})
        for chunk, path, w, c, sp in _stream_speech(ctx, events, "continuation"):
            yield chunk, path, _joined(ctx, clip, path) if isinstance(path, str) else gr.skip(), w, c, sp

    go.click(run, [prompt, seed, max_s], [stream, full, joined, wave, codes, speed], api_name="continue_speech")


# ---------------------------------------------------------------------------------------------------- round trip
def roundtrip_tab(ctx: Ctx) -> None:
    gr.Markdown("Audio tokenizer round trip: encode to 8 RVQ codebooks at 25 Hz and decode back. Original and "
                "resynthesis side by side.")
    with gr.Row():
        audio = _audio_in("Original", example("slt_0"))
        resynth = gr.Audio(label="Resynthesis", type="filepath", interactive=False, elem_id="roundtrip-out",
                           elem_classes=["full-out"])
    go = gr.Button("Encode and decode", variant="primary", elem_id="roundtrip-run")
    stats = _speed("roundtrip")
    with gr.Row():
        wave_in = picture("original", "wave-img")
        wave_out = picture("resynthesis", "wave-img")
    codes = picture("RVQ codes", "codes-img")
    gr.Examples([[example("slt_0")], [example("awb_1")], [example("slt_noisy_2")], [example("espeak_whisper_0")]],
                [audio], label="Examples")

    @guarded
    def run(audio):
        clip = read_audio(audio, "the audio to round-trip", ctx.max_input_seconds)
        t0 = time.perf_counter()
        c = ctx.backend.encode(clip.wav, clip.sample_rate)
        t1 = time.perf_counter()
        wav = ctx.backend.decode(c)
        t2 = time.perf_counter()
        sizes = ctx.backend.codebook_sizes or []
        bits = sum(float(np.log2(s)) for s in sizes[: c.shape[0]]) * 25.0
        md = (f"{clip.seconds:.2f} s in -> {c.shape[1]} frames x {c.shape[0]} codebooks"
              + (f" = **{bits / 1000:.2f} kbit/s**" if bits else "")
              + f" · encode {t1 - t0:.2f} s, decode {t2 - t1:.2f} s, RTF **{(t2 - t0) / max(clip.seconds, 1e-6):.3f}**"
              + f"  \n<small>backend: {ctx.backend.settings_line()}</small>")
        return (ctx.out.wav(wav, ctx.sr, "resynthesis"), md, wave_image(clip.wav, clip.sample_rate, "original"),
                wave_image(wav, ctx.sr, "resynthesis"), codes_image(c, "codes", sizes))

    go.click(run, [audio], [resynth, stats, wave_in, wave_out, codes], api_name="tokenizer_roundtrip")
