"""The model panel: which model is loaded, where it came from, and what it can (not) do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

EMBEDDED_LIMITS = (
    "**Honest limits of the embedded default model.** It is a 5 M-parameter test bed trained for about "
    "75 minutes on one CPU core, on synthetic speech (flite, festival, espeak-ng; English only). Every tab runs "
    "on it end to end, but **its outputs are not yet meaningful**: measured on held-out sentences, TTS word "
    "error rate 141 % (goal 35 %), ASR 212 % (goal 25 %), few-shot voice conversion closer to the target voice "
    "in 56 % of cases (goal 80 %); chat answers carry no knowledge, and it was never trained on spoken dialogue "
    "(speech in rarely gets speech out). The audio tokenizer is a usable small codec (resynthesis adds "
    "~12 points of WER). Figures: `docs/default_model.md`, `docs/quality.md`. Start the demo with "
    "`--lm-path DIR --tokenizer-path DIR` to run a real checkpoint."
)


def _prov(directory: Path | None) -> dict[str, Any]:
    if directory is None:
        return {}
    from tokenizer.defaults import read_provenance

    return read_provenance(directory)


def _is_embedded(directory: Path | None) -> bool:
    from mimo_audio.defaults import DEFAULT_DIR

    return directory is not None and Path(directory).resolve() == Path(DEFAULT_DIR).resolve()


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def model_markdown(backend) -> str:
    """Markdown for the model panel: identity, provenance, limits and the backend settings in use."""
    m = backend.model
    lm_dir = Path(m.lm_path) if m.lm_path else None
    embedded = _is_embedded(lm_dir)
    cfg = m.lm.config
    n_params = sum(p.numel() for p in m.lm.parameters())
    lines = ["### Loaded model", ""]
    lines.append(f"* **Speech LM:** {'embedded default' if embedded else 'checkpoint'} - `{lm_dir}`")
    lines.append(f"  - {_fmt_params(n_params)} parameters, backbone {cfg.num_hidden_layers} layers x "
                 f"{cfg.hidden_size}, {cfg.group_size}-frame patches, {cfg.audio_channels} audio channels")
    tok = m.audio_tokenizer
    if tok is not None:
        tok_params = sum(p.numel() for p in tok.model.parameters()) if hasattr(tok, "model") else None
        sizes = backend.codebook_sizes
        lines.append(f"* **Audio tokenizer:** {tok.sample_rate} Hz audio, {tok.frame_rate:g} frames/s"
                     + (f", codebooks {sizes}" if sizes else "")
                     + (f", {_fmt_params(tok_params)} parameters" if tok_params else ""))
    prov = _prov(lm_dir)
    if prov:
        lines += ["", "### Provenance (`provenance.json`)", ""]
        if prov.get("placeholder"):
            lines.append("* **PLACEHOLDER WEIGHTS (random): every output is noise.**")
        for key, label in (("name", "name"), ("description", "what"), ("note", "training"),
                           ("exported_utc", "exported"), ("dtype", "stored as")):
            if prov.get(key):
                lines.append(f"* {label}: {prov[key]}")
        train = prov.get("training") if isinstance(prov.get("training"), dict) else {}
        if train.get("steps"):
            lines.append(f"* training steps: {train['steps']}")
        corpus = train.get("corpus") if isinstance(train.get("corpus"), dict) else {}
        if corpus.get("utterances"):
            lines.append(f"* corpus: {corpus['utterances']} utterances of synthetic speech")
        if prov.get("mtp_heads"):
            lines.append("* MTP draft heads shipped (`--speculative K` uses them for text outputs)")
    elif lm_dir is not None:
        lines += ["", f"No `provenance.json` in `{lm_dir}`: nothing is known here about how it was trained."]
    lines += ["", "### Limits", ""]
    lines.append(EMBEDDED_LIMITS if embedded else
                 "A user-supplied checkpoint: its quality is whatever it was measured to be elsewhere; the demo "
                 "adds no claims. The demo caps inputs at the length below and runs on the settings shown.")
    s = backend.settings
    lines += ["", "### Backend", "", f"* {backend.settings_line()}"]
    if backend.load_seconds is not None:
        lines.append(f"* loaded in {backend.load_seconds:.2f} s")
    lines.append(f"* voices registry: `{m.voices.root}` ({len(m.voices.names())} voices)")
    lines.append(f"* few-shot task library: {', '.join(m.tasks.names())} (user folder `{m.tasks.user_dir}`)")
    lines.append(f"* input limit: {getattr(backend, 'max_input_seconds', 60):.0f} s of audio; queue: "
                 f"{backend.concurrency} at a time, {s.max_queue} waiting")
    return "\n".join(lines)
