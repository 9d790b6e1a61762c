"""Tabs that listen: ASR, audio understanding (with thinking), and the multi-turn spoken dialogue."""

from __future__ import annotations

import gradio as gr

from .audio_io import check_text, read_audio
from .backend import Speed
from .plots import codes_image, wave_image
from .tabs_speech import _audio_in, _speed
from .ui import (
    NO_VOICE,
    AudioStreamer,
    Ctx,
    Throttle,
    example,
    guarded,
    max_patches,
    picture,
    result_audio,
    seed_arg,
    voice_arg,
)


def _heard(ctx: Ctx, path, what: str):
    """Read and encode an input once: (clip, codes, waveform picture, codes picture). The codes go to the model."""
    clip = read_audio(path, what, ctx.max_input_seconds)
    codes = ctx.backend.encode(clip.wav, clip.sample_rate)
    return (clip, codes, wave_image(clip.wav, clip.sample_rate, "input"),
            codes_image(codes, "input codes (what the model hears)", ctx.backend.codebook_sizes))


# ---------------------------------------------------------------------------------------------------- ASR
def asr_tab(ctx: Ctx) -> None:
    gr.Markdown("Speech recognition from the microphone or a file.")
    with gr.Row():
        audio = _audio_in("Speech", example("slt_0"), "asr-in")
        with gr.Column():
            language = gr.Radio(["en", "zh"], value="en", label="Language of the instruction")
            go = gr.Button("Transcribe", variant="primary", elem_id="asr-run")
            text = gr.Textbox(label="Transcript", lines=4, interactive=False, elem_id="asr-text")
            speed = _speed("asr")
    with gr.Row():
        wave = picture("input", "wave-img")
        codes = picture("input codes", "codes-img")
    gr.Examples([[example("slt_0")], [example("awb_1")], [example("espeak_2")], [example("slt_noisy_1")]], [audio],
                label="Examples")

    @guarded
    def run(audio, language):
        _clip, c, w, ci = _heard(ctx, audio, "the speech to transcribe")
        speed_, out, throttle = Speed.start(), "", Throttle()
        yield "", ctx.speed_md(speed_), w, ci  # a fresh "running" status: the last run's "done" must not stand
        for ev in ctx.backend.stream("asr", c, language=language):
            speed_.update(ev)
            out = ev.result.text if ev.result is not None else out + ev.text
            if ev.result is not None:
                yield out, ctx.speed_md(speed_), w, ci
            elif throttle.due():
                yield out, ctx.speed_md(speed_), gr.skip(), gr.skip()
        if not out.strip():
            gr.Warning("The model returned an empty transcript.")

    go.click(run, [audio, language], [text, speed, wave, codes], api_name="asr")


# ---------------------------------------------------------------------------------------------------- understanding
def understanding_tab(ctx: Ctx) -> None:
    gr.Markdown("Ask a question about a recording. With *thinking* on, the model reasons first; its thinking is "
                "shown apart from the answer.")
    with gr.Row():
        audio = _audio_in("Audio", example("slt_noisy_0"))
        with gr.Column():
            question = gr.Textbox(label="Question", value="Is the speaker in a quiet room? Describe the audio.")
            thinking = gr.Checkbox(label="Thinking", value=True)
            seed = gr.Number(label="Seed (empty = random)", value=0, precision=0)
    go = gr.Button("Ask", variant="primary", elem_id="understand-run")
    with gr.Row():
        thought = gr.Textbox(label="Thinking", lines=5, interactive=False, elem_id="understand-thinking")
        answer = gr.Textbox(label="Answer", lines=5, interactive=False, elem_id="understand-answer")
    speed = _speed("understand")
    with gr.Row():
        wave = picture("input", "wave-img")
        codes = picture("input codes", "codes-img")
    gr.Examples([[example("slt_noisy_0"), "Is the speaker in a quiet room? Describe the audio.", True],
                 [example("espeak_whisper_1"), "Is the speaker whispering?", False],
                 [example("awb_0"), "What did the speaker say?", True]], [audio, question, thinking],
                label="Examples")

    @guarded
    def run(audio, question, thinking, seed):
        question = check_text(question, "the question")
        _clip, c, w, ci = _heard(ctx, audio, "the audio to ask about")
        speed_, th, ans, throttle = Speed.start(), "", "", Throttle()
        yield "", "", ctx.speed_md(speed_), w, ci
        for ev in ctx.backend.stream("understand", c, question, thinking=bool(thinking), gen={"seed": seed_arg(seed)}):
            speed_.update(ev)
            if ev.result is not None:
                th, ans = ev.result.thinking or "", ev.result.text
                if th and ans == th:  # never closed </think>: the library repeats the thinking as the text
                    ans = ""
            else:
                th, ans = th + ev.thinking, ans + ev.text
                if throttle.due():
                    yield th, ans, ctx.speed_md(speed_), gr.skip(), gr.skip()
        if thinking and not ans.strip():
            ans = "(no answer: the model did not close its thinking block before it stopped)"
        if thinking and not th.strip():
            th = "(empty: the model closed its thinking block at once)"
        yield th if thinking else "(thinking off)", ans, ctx.speed_md(speed_), w, ci

    go.click(run, [audio, question, thinking, seed], [thought, answer, speed, wave, codes], api_name="understand")


# ---------------------------------------------------------------------------------------------------- dialogue
def _new_state():
    from mimo_audio import Conversation

    return {"conv": Conversation(), "display": []}


def dialogue_tab(ctx: Ctx) -> None:
    gr.Markdown("Spoken dialogue, multi-turn: speak (or type), the model answers with streamed speech. The whole "
                "conversation stays in context until you clear it.")
    state = gr.State(None)
    chat = gr.Chatbot(label="Conversation", height=360, elem_id="dialogue-chat")
    with gr.Row():
        mic = _audio_in("Your turn (speech)", example("slt_2"), "dialogue-in")
        with gr.Column():
            user_text = gr.Textbox(label="...or type", placeholder="optional text for this turn")
            reply = gr.Radio(["speech", "text"], value="speech", label="Reply as")
            voice = gr.Dropdown(label="Reply voice", choices=ctx.voice_choices(), value=NO_VOICE)
            ctx.voice_pickers.append(voice)
            fallback = gr.Checkbox(value=True, label="If the model gives no speech, speak its text with TTS (marked)")
            thinking = gr.Checkbox(value=False, label="Thinking (text replies)")
            seed = gr.Number(label="Seed (empty = random)", value=0, precision=0)
    with gr.Row():
        go = gr.Button("Send", variant="primary", elem_id="dialogue-run")
        clear = gr.Button("Clear conversation", elem_id="dialogue-clear")
    with gr.Row():
        stream = gr.Audio(label="Reply (streaming)", streaming=True, autoplay=True, interactive=False,
                          elem_id="dialogue-stream", elem_classes=["stream-out"])
        full = gr.Audio(label="Reply (complete wav)", type="filepath", interactive=False, elem_id="dialogue-out",
                        elem_classes=["full-out"])
    speed = _speed("dialogue")

    @guarded
    def run(mic, user_text, reply, voice, fallback, thinking, seed, st):
        st = st or _new_state()
        text = check_text(user_text, "the typed turn", required=False)
        clip = read_audio(mic, "your spoken turn", ctx.max_input_seconds) if mic is not None else None
        if clip is None and not text:
            raise ValueError("say or type something first (record, upload, or type a turn)")
        codes = ctx.backend.encode(clip.wav, clip.sample_rate) if clip is not None else None
        conv, display = st["conv"], st["display"]
        n_conv, n_display = len(conv.messages), len(display)
        conv.add_user(text=text, audio=codes)
        if clip is not None:
            display.append({"role": "user", "content": {"path": ctx.out.wav(clip.wav, clip.sample_rate, "turn"),
                                                        "mime_type": "audio/wav"}})
        if text:
            display.append({"role": "user", "content": text})
        output = "both" if reply == "speech" else "text"
        gen = {"seed": seed_arg(seed), "max_new_patches": max_patches(30) if output == "both" else None}
        speed_, streamer, said, thought, result = Speed.start(), AudioStreamer(ctx.sr), "", "", None
        throttle = Throttle()
        live = {"role": "assistant", "content": ""}
        display.append(live)
        try:
            for ev in ctx.backend.stream("chat", conv, output=output, thinking=bool(thinking) and output == "text",
                                         voice=voice_arg(voice), gen=gen):
                speed_.update(ev)
                chunk = streamer.push(ev.audio)
                if ev.result is not None:
                    result = ev.result
                    said, thought = result.text, result.thinking or ""
                else:
                    said, thought = said + ev.text, thought + ev.thinking
                live["content"] = said or (f"_thinking: {thought}_" if thought else "...")
                if chunk is not None or throttle.due():
                    yield display, chunk, gr.skip(), ctx.speed_md(speed_), st
        except BaseException:
            del conv.messages[n_conv:]  # the user turn got no reply: drop it so the next turn starts clean
            del display[n_display:]
            raise
        if thought:
            if said == thought:  # never closed </think>: the library repeats the thinking as the reply
                said = ""
                live["content"] = "_(no reply: the model did not finish thinking)_"
            else:
                live["content"] = said
            display.insert(len(display) - 1, {"role": "assistant", "content": thought,
                                              "metadata": {"title": "Thinking"}})
        tail = streamer.flush()
        wav = result_audio(result, streamer) if output != "text" else None
        if output != "text" and wav.size == 0 and fallback and said.strip():
            # The embedded model was not trained on spoken dialogue and often answers speech in text only.
            live["content"] = said + "\n\n_(the model gave no speech; spoken here by the TTS task)_"
            yield display, tail, gr.skip(), ctx.speed_md(speed_), st
            tts_streamer, tts_result = AudioStreamer(ctx.sr), None
            tts_gen = {"seed": seed_arg(seed), "max_new_patches": max_patches(30)}
            for ev in ctx.backend.stream("tts", said, voice=voice_arg(voice), gen=tts_gen):
                speed_.update(ev)
                chunk = tts_streamer.push(ev.audio)
                tts_result = ev.result or tts_result
                if chunk is not None:
                    yield display, chunk, gr.skip(), ctx.speed_md(speed_), st
            tail, wav = tts_streamer.flush(), result_audio(tts_result, tts_streamer)
        elif output != "text" and wav.size == 0:
            gr.Warning("The model replied without speech.")
        path = None
        if wav is not None and wav.size:
            path = ctx.out.wav(wav, ctx.sr, "reply")
            display.append({"role": "assistant", "content": {"path": path, "mime_type": "audio/wav"}})
        yield display, tail, path, ctx.speed_md(speed_), st

    def reset():
        return [], None, None, "", _new_state()

    go.click(run, [mic, user_text, reply, voice, fallback, thinking, seed, state], [chat, stream, full, speed, state],
             api_name="dialogue").then(lambda: "", None, user_text, api_visibility="private")
    clear.click(reset, None, [chat, stream, full, speed, state], api_name="dialogue_reset")
