"""Tokenizer configuration: a typed dataclass that reads and writes the official ``config.json``.

Field names, defaults and meanings follow the official ``MiMoAudioTokenizerConfig``: a ``config.json``
written by the official code loads unchanged, and unknown keys are kept and written back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_TYPE = "mimo_audio_tokenizer"


def _window(value: Any, name: str) -> list[int]:
    if value is None:
        return [-1, -1]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be a [left, right] pair, got {value!r}")
    return [int(value[0]), int(value[1])]


@dataclass
class TokenizerConfig:
    """Hyper-parameters of the MiMo-Audio tokenizer (defaults = the official code's defaults)."""

    max_audio_seconds: int = 1800
    stride_size: int = 2
    avg_pooler: int = 1
    d_model: int = 768
    scale_embedding: bool = True
    kernel_size: int = 3
    activation_function: str = "gelu"
    encoder_layers: int = 8
    encoder_skip_layer_id: int | None = None
    encoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    encoder_causal: bool = False
    encoder_attn_window_size: list[int] | None = None
    decoder_layers: int = 8
    decoder_attention_heads: int = 12
    decoder_ffn_dim: int = 3072
    decoder_kernel_size: int = 3
    decoder_stride_size: int = 2
    decoder_causal: bool = True
    decoder_attn_window_size: list[int] | None = None
    nfft: int = 1024
    vocoder_dim: int = 512
    vocoder_intermediate_dim: int = 4096
    vocoder_num_layers: int = 30
    n_mels: int = 80
    sampling_rate: int = 24000
    hop_length: int = 240
    window_size: int = 1024
    vocoder_padding: str = "same"
    fmin: float = 0
    fmax: float | None = None
    num_quantizers: int = 12
    codebook_size: list[int] | None = None
    threshold_ema_dead_code: int = 10
    position_embedding_type: str = "rope"
    rope_theta: float = 10000
    rope_type: str = "default"
    ln_type: str = "LayerNorm"
    vocoder_attention_heads: int = 4
    vocoder_attn_window_size: list[int] | None = None
    # Keys of config.json that this class does not model (architectures, torch_dtype, ...): kept verbatim.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.encoder_attn_window_size = _window(self.encoder_attn_window_size, "encoder_attn_window_size")
        self.decoder_attn_window_size = _window(self.decoder_attn_window_size, "decoder_attn_window_size")
        if self.vocoder_attn_window_size is None:
            self.vocoder_attn_window_size = [40, 10]
        self.vocoder_attn_window_size = _window(self.vocoder_attn_window_size, "vocoder_attn_window_size")
        # The official config extends a short codebook list by repeating its last entry.
        sizes = self.codebook_size
        if sizes is None:
            sizes = [1024]
        elif isinstance(sizes, int):
            sizes = [sizes]
        sizes = [int(s) for s in sizes]
        if self.num_quantizers > 0 and not sizes:
            raise ValueError("codebook_size must not be empty")
        if len(sizes) < self.num_quantizers:
            sizes = sizes + [sizes[-1]] * (self.num_quantizers - len(sizes))
        self.codebook_size = sizes
        self.validate()

    def validate(self) -> None:
        for name, dim, heads in (
            ("encoder", self.d_model, self.encoder_attention_heads),
            ("decoder", self.d_model, self.decoder_attention_heads),
            ("vocoder", self.vocoder_dim, self.vocoder_attention_heads),
        ):
            if heads <= 0 or dim % heads or (dim // heads) % 2:
                raise ValueError(f"{name}: width {dim} must split into {heads} heads of even size")
        if self.ln_type not in ("LayerNorm", "RMSNorm"):
            raise ValueError(f"ln_type must be LayerNorm or RMSNorm, got {self.ln_type!r}")
        if self.vocoder_padding != "same":
            raise ValueError(f"only vocoder_padding='same' is supported, got {self.vocoder_padding!r}")
        if self.encoder_skip_layer_id is not None and not 1 <= self.encoder_skip_layer_id <= self.encoder_layers:
            raise ValueError(f"encoder_skip_layer_id {self.encoder_skip_layer_id} outside 1..{self.encoder_layers}")
        if self.kernel_size != 3:
            raise ValueError("the encoder convolutions use padding 1, so kernel_size must be 3")
        if self.rope_type != "default":
            raise ValueError(f"only rope_type='default' is supported, got {self.rope_type!r}")
        if self.activation_function != "gelu":
            raise ValueError(f"only activation_function='gelu' is supported, got {self.activation_function!r}")

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per code frame (960 for the released model: 24 kHz / 25 Hz)."""
        return self.hop_length * self.stride_size * self.avg_pooler

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.samples_per_frame

    def mel_frames(self, num_samples: int) -> int:
        """Mel frames of a centred STFT: floor(N / hop) + 1."""
        return num_samples // self.hop_length + 1

    def code_frames_from_mel(self, mel_frames: int) -> int:
        """Code frames produced by the encoder for one sequence of ``mel_frames`` mel frames."""
        l50 = (mel_frames - 1) // self.stride_size + 1
        return -(-l50 // self.avg_pooler)

    def code_frames(self, num_samples: int) -> int:
        return self.code_frames_from_mel(self.mel_frames(num_samples))

    # ---- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        known = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "model_type"}
        if "model_type" in data and data["model_type"] != MODEL_TYPE:
            raise ValueError(f"config.json has model_type {data['model_type']!r}, expected {MODEL_TYPE!r}")
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}
        return {"model_type": MODEL_TYPE, **out, **self.extra}

    @classmethod
    def from_json(cls, path: str | Path) -> TokenizerConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    # ---- named sizes ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> TokenizerConfig:
        """``official`` = the released MiMo-Audio-Tokenizer (1.28 B params); ``tiny`` = a seconds-fast test model."""
        if name not in PRESETS:
            raise ValueError(f"unknown tokenizer preset {name!r}; choose from {sorted(PRESETS)}")
        return cls.from_dict(dict(PRESETS[name]))


_OFFICIAL: dict[str, Any] = dict(
    max_audio_seconds=1800, stride_size=2, avg_pooler=2, d_model=1280, scale_embedding=False, kernel_size=3,
    activation_function="gelu", encoder_layers=32, encoder_skip_layer_id=3, encoder_attention_heads=20,
    encoder_ffn_dim=5120, encoder_causal=False, encoder_attn_window_size=[-1, -1], decoder_layers=32,
    decoder_attention_heads=20, decoder_ffn_dim=5120, decoder_kernel_size=3, decoder_stride_size=2,
    decoder_causal=True, decoder_attn_window_size=[-1, -1], nfft=960, vocoder_dim=256,
    vocoder_intermediate_dim=1024, vocoder_num_layers=16, n_mels=128, sampling_rate=24000, hop_length=240,
    window_size=960, vocoder_padding="same", fmin=0, fmax=None, num_quantizers=20,
    codebook_size=[1024, 1024] + [128] * 18, threshold_ema_dead_code=2, position_embedding_type="rope",
    rope_theta=10000, rope_type="default", ln_type="LayerNorm", vocoder_attention_heads=16,
    vocoder_attn_window_size=[40, 10],
)

# Same structure and front-end as the released model (so every code path and length rule is exercised),
# a few thousand times smaller. Codebook sizes match the released ones so LM code sees real vocabularies.
_TINY: dict[str, Any] = dict(
    _OFFICIAL, d_model=32, encoder_layers=3, encoder_skip_layer_id=1, encoder_attention_heads=2,
    encoder_ffn_dim=64, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=64, vocoder_dim=32,
    vocoder_intermediate_dim=64, vocoder_num_layers=2, vocoder_attention_heads=2, n_mels=128, num_quantizers=10,
    codebook_size=[1024, 1024, 128],
)

PRESETS: dict[str, dict[str, Any]] = {"official": _OFFICIAL, "tiny": _TINY}
