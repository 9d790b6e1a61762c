"""Rebuild the example pairs shipped with the built-in few-shot tasks (``mimo_audio/fewshot_tasks``).

The pairs are made here, offline, by real TTS engines (flite, espeak-ng) and sox, so the built-in tasks work out of
the box: ``mimo-audio vc query.wav --task voice_conversion``. Three short pairs per task keep the package small;
the official evaluation uses 16, so pass your own pairs (``--example IN OUT``) for serious use.

    python -m apps.scripts.make_fewshot_examples            # rewrites the wavs and the "examples" of 5 tasks
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("mimo-audio.fewshot-examples")

TASK_DIR = Path(__file__).resolve().parents[2] / "mimo_audio" / "fewshot_tasks"
SAMPLE_RATE = 16000  # enough for speech prompts, and a third of the bytes of 24 kHz

SENTENCES = (
    "The garden looks lovely after the rain.",
    "Please close the window before you leave.",
    "We walked along the river until sunset.",
)


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _flite(voice: str, text: str, out: Path) -> None:
    _run(["flite", "-voice", voice, "-t", text, "-o", str(out)])


def _espeak(voice: str, text: str, out: Path) -> None:
    _run(["espeak-ng", "-v", voice, text, "-w", str(out)])


def _to_prompt_wav(src: Path, dst: Path, *effects: str) -> None:
    """Mono 16 kHz int16, silence trimmed at both ends, optional sox effects (tempo, ...); no dither."""
    _run(["sox", "-D", str(src), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(dst),
          "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse", *effects])


def _add_noise(clean: Path, dst: Path, tmp: Path) -> None:
    """Clean speech plus pink noise about 10 dB below it (fixed sox seed, so the file is reproducible)."""
    dur = subprocess.run(["soxi", "-D", str(clean)], check=True, capture_output=True, text=True).stdout.strip()
    noise = tmp / "noise.wav"
    _run(["sox", "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(noise),
          "synth", dur, "pinknoise", "vol", "0.08"])
    _run(["sox", "-D", "-m", str(clean), str(noise), str(dst)])


def build(task_dir: Path = TASK_DIR) -> dict[str, list[dict[str, str]]]:
    for tool in ("flite", "espeak-ng", "sox", "soxi"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} is not installed (make sysdeps)")
    audio_dir = task_dir / "examples"
    audio_dir.mkdir(exist_ok=True)
    tasks: dict[str, list[dict[str, str]]] = {t: [] for t in ("voice_conversion", "speed_up", "slow_down",
                                                              "denoise", "whisper")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i, text in enumerate(SENTENCES):
            raw_src, raw_tgt, raw_plain, raw_whisper = (tmp / f"{k}.wav" for k in ("src", "tgt", "plain", "wh"))
            _flite("slt", text, raw_src)
            _flite("awb", text, raw_tgt)
            _espeak("en-us", text, raw_plain)
            _espeak("en-us+whisper", text, raw_whisper)

            def out(name: str, i: int = i) -> Path:
                return audio_dir / f"{name}_{i}.wav"

            _to_prompt_wav(raw_src, out("slt"))
            _to_prompt_wav(raw_tgt, out("awb"))
            _to_prompt_wav(raw_src, out("slt_fast"), "tempo", "1.5")
            _to_prompt_wav(raw_src, out("slt_slow"), "tempo", "0.7")
            _add_noise(out("slt"), out("slt_noisy"), tmp)
            _to_prompt_wav(raw_plain, out("espeak"))
            _to_prompt_wav(raw_whisper, out("espeak_whisper"))

            def pair(a: str, b: str, i: int = i, text: str = text) -> dict[str, str]:
                return {"input": f"examples/{a}_{i}.wav", "output": f"examples/{b}_{i}.wav", "output_text": text}

            tasks["voice_conversion"].append(pair("slt", "awb"))
            tasks["speed_up"].append(pair("slt", "slt_fast"))
            tasks["slow_down"].append(pair("slt", "slt_slow"))
            tasks["denoise"].append(pair("slt_noisy", "slt"))
            tasks["whisper"].append(pair("espeak", "espeak_whisper"))
    for name, examples in tasks.items():
        path = task_dir / f"{name}.json"
        data = json.loads(path.read_text())
        data["examples"] = examples
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        log.info("%s: %d example pairs", path.name, len(examples))
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-dir", type=Path, default=TASK_DIR, help="few-shot task folder to update")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.task_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
