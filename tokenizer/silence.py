"""Silence gate of the decoder: codes of digital silence decode to digital silence.

The encoder is consistent about silence: it gives digital silence one code in the first (semantic) codebook
whatever surrounds it, and the vocoder decodes runs of it to (near) zeros. What broke the round trip of a
silent clip (RMS 0.03, peaks near 1.0 on the embedded tokenizer) is the clip's last frame: it covers the
encoder's end padding, gets another code, and the vocoder, trained on speech, answers it with a burst.

The gate finds the silence code once per tokenizer (by encoding a second of zeros) and mutes the decoded
audio of every run of at least ``MIN_RUN_FRAMES`` such frames, and of an edge frame (first or last of the
clip) next to such a run: an edge frame holds only the padding beyond the silence. Short raised-cosine fades
sit inside the run so speech is never cut; a single such frame inside speech is left alone (a word that
happens to share the code).
"""

from __future__ import annotations

import math

import torch

MIN_RUN_FRAMES = 2  # 80 ms at 25 Hz
FADE_SECONDS = 0.01


def silence_code(codes_of_zeros: torch.Tensor) -> int:
    """The first-codebook code of digital silence, from the codes ``[n_q, T]`` of an all-zero clip."""
    row = codes_of_zeros[0]
    inner = row[1:-1] if row.numel() > 2 else row  # the edge frames see the encoder's padding
    return int(torch.mode(inner).values)


def silent_frames(first_codebook: torch.Tensor, code: int, min_run: int = MIN_RUN_FRAMES) -> torch.Tensor:
    """Bool ``[T]``: frames inside a run of at least ``min_run`` frames equal to ``code``, and the first or
    last frame of the clip when it borders such a run."""
    hit = (first_codebook == code).tolist()
    out = [False] * len(hit)
    t = 0
    while t < len(hit):
        if not hit[t]:
            t += 1
            continue
        end = t
        while end < len(hit) and hit[end]:
            end += 1
        if end - t >= min_run:
            out[t:end] = [True] * (end - t)
        t = end
    if len(out) > min_run:
        out[0] = out[0] or out[1]
        out[-1] = out[-1] or out[-2]
    return torch.tensor(out, dtype=torch.bool)


def gate_gain(silent: torch.Tensor, hop: int, fade: int) -> torch.Tensor:
    """Per-sample gain ``[T * hop]``: 0 in silent frames, 1 elsewhere, fading inside each silent run."""
    gain = (~silent).float().repeat_interleave(hop)
    if fade <= 0 or not bool(silent.any()):
        return gain
    ramp = 0.5 * (1 + torch.cos(torch.linspace(0, math.pi, fade)))  # 1 -> 0
    frames = silent.tolist()
    for t, s in enumerate(frames):
        if not s:
            continue
        if t > 0 and not frames[t - 1]:  # run starts after audio: fade out at its start
            seg = slice(t * hop, t * hop + fade)
            gain[seg] = ramp[: gain[seg].numel()]
        if t + 1 < len(frames) and not frames[t + 1]:  # run ends before audio: fade in at its end
            seg = slice((t + 1) * hop - fade, (t + 1) * hop)
            gain[seg] = ramp.flip(0)[-gain[seg].numel():]
    return gain
