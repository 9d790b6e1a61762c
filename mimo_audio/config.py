"""Configuration of the patch-based speech LM, compatible with the official MiMo-Audio ``config.json``.

The official checkpoint stores a plain Qwen2 config (``model_type: "qwen2"``) plus a few speech fields
whose list values are dash-separated strings (``"1025-1025-129-..."``). :class:`SpeechLMConfig` reads and
writes exactly that format and builds the three :class:`~transformers.Qwen2Config` objects of the model:
the backbone, the patch decoder (``local_config``) and the patch encoder (``input_local_config``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Qwen2Config

logger = logging.getLogger(__name__)

# Fields of config.json that belong to the Qwen2 backbone.
_QWEN2_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "hidden_act",
    "tie_word_embeddings",
    "rope_scaling",
)
# Speech fields stored as "a-b-c" strings in the official config.json.
_DASHED_FIELDS = ("speech_vocab_size", "speech_zeroemb_idx", "delay_pattern")


def _parse_dashed(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split("-"))
        except ValueError as exc:
            raise ValueError(f"config field {name!r}: cannot parse {value!r} as dash-separated integers") from exc
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    raise ValueError(f"config field {name!r}: expected a string like '1-2-3' or a list, got {value!r}")


@dataclass
class SpeechLMConfig:
    """All hyper-parameters of the speech LM (names as in the official ``config.json``)."""

    # Qwen2 backbone (MiMo-7B).
    vocab_size: int = 151680
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    max_position_embeddings: int = 8192
    rope_theta: float = 640000.0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    rope_scaling: dict[str, Any] | None = None
    # Speech part.
    speech_vocab_size: tuple[int, ...] = (1025, 1025, 129, 129, 129, 129, 129, 129)
    speech_zeroemb_idx: tuple[int, ...] = (1024, 1024, 128, 128, 128, 128, 128, 128)
    delay_pattern: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    group_size: int = 4
    audio_channels: int = 8
    local_dim: int = 1024
    local_layers: int = 16
    local_attn_heads: int = 64
    local_ffn_dim: int = 4096
    local_attn_dropout: float = 0.1
    input_local_layers: int = 6
    input_local_dim: int | None = 1024  # None = local_dim (official code default)
    input_full_attention: bool = True  # official code default None = causal; the released config says true
    # Fields of config.json this class does not interpret, kept so that save_pretrained round-trips them.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _DASHED_FIELDS:
            setattr(self, name, _parse_dashed(getattr(self, name), name))
        if self.input_local_dim is None:
            self.input_local_dim = self.local_dim
        self.validate()

    def validate(self) -> None:
        n = self.audio_channels
        for name in _DASHED_FIELDS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"config field {name!r} has {len(getattr(self, name))} entries, expected {n}")
        for c, (v, e) in enumerate(zip(self.speech_vocab_size, self.speech_zeroemb_idx)):
            if not 0 <= e < v:
                raise ValueError(f"channel {c}: empty id {e} is outside its vocabulary of {v}")
        if self.local_dim % self.local_attn_heads or self.input_local_dim % self.local_attn_heads:
            raise ValueError("local_dim and input_local_dim must be divisible by local_attn_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    # ----------------------------------------------------------------- named sizes
    # (In mimo_audio "preset" means a sampler preset only: mimo_audio.sampling.PRESETS.)
    @classmethod
    def named(cls, name: str) -> SpeechLMConfig:
        """Named sizes: ``official`` (MiMo-Audio-7B, 8.0 B parameters), ``small`` (the embedded default's size, 5 M
        with a 320-symbol text vocabulary) and ``tiny`` (tests, 0.3 M).

        ``tiny`` keeps the official codebook sizes so that it pairs with any audio tokenizer, tiny or real.
        """
        if name == "official":
            return cls()
        if name == "small":
            return cls(
                vocab_size=320,
                hidden_size=256,
                intermediate_size=768,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=64,
                max_position_embeddings=2048,
                local_dim=128,
                local_layers=2,
                local_attn_heads=4,
                local_ffn_dim=384,
                input_local_layers=2,
                input_local_dim=128,
            )
        if name == "tiny":
            return cls(
                vocab_size=320,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=512,
                local_dim=32,
                local_layers=2,
                local_attn_heads=4,
                local_ffn_dim=64,
                input_local_layers=2,
                input_local_dim=32,
            )
        raise ValueError(f"unknown SpeechLMConfig size {name!r}; choose 'official', 'small' or 'tiny'")

    @classmethod
    def preset(cls, name: str) -> SpeechLMConfig:
        """Deprecated spelling of :meth:`named`."""
        return cls.named(name)

    # ------------------------------------------------------------ derived
    @property
    def patch_decoder_steps(self) -> int:
        """Patch-decoder transformer calls per patch: ``group_size + max(delay_pattern)`` (11 officially)."""
        return self.group_size + max(self.delay_pattern)

    def _qwen2(self, **overrides: Any) -> Qwen2Config:
        kwargs = {name: getattr(self, name) for name in _QWEN2_FIELDS}
        kwargs.update(use_sliding_window=False, sliding_window=None, attention_dropout=0.0)
        kwargs.update(overrides)
        cfg = Qwen2Config(**kwargs)
        cfg._attn_implementation = "sdpa"
        return cfg

    def backbone_config(self) -> Qwen2Config:
        return self._qwen2()

    def local_config(self) -> Qwen2Config:
        """Patch decoder: a Qwen2 stack of width ``local_dim``; everything else inherited (RoPE theta, eps)."""
        return self._qwen2(
            hidden_size=self.local_dim,
            num_hidden_layers=self.local_layers,
            num_attention_heads=self.local_attn_heads,
            num_key_value_heads=self.local_attn_heads,
            head_dim=self.local_dim // self.local_attn_heads,
            intermediate_size=self.local_ffn_dim,
            attention_dropout=self.local_attn_dropout,
        )

    def input_local_config(self) -> Qwen2Config:
        """Patch encoder: heads are ``local_attn_heads`` (the paper's "16 heads" contradicts the code)."""
        return self._qwen2(
            hidden_size=self.input_local_dim,
            num_hidden_layers=self.input_local_layers,
            num_attention_heads=self.local_attn_heads,
            num_key_value_heads=self.local_attn_heads,
            head_dim=self.input_local_dim // self.local_attn_heads,
            intermediate_size=4 * self.input_local_dim,
            attention_dropout=self.local_attn_dropout,
        )

    # ------------------------------------------------------------ json I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeechLMConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        extra = {k: v for k, v in data.items() if k not in names}
        if data.get("rope_scaling") is not None:
            known["rope_scaling"] = data["rope_scaling"]
        if data.get("input_local_dim") is None:
            known["input_local_dim"] = known.get("local_dim", cls.local_dim)
        if data.get("input_full_attention") is None and "local_dim" in data:
            # The official code reads a missing/null value as False: a causal patch encoder.
            logger.warning("config.json has no input_full_attention: using a causal patch encoder as the official code")
            known["input_full_attention"] = False
        if data.get("use_sliding_window"):
            raise ValueError("use_sliding_window=true is not supported (MiMo-Audio uses full attention)")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.setdefault("model_type", "qwen2")
        out.setdefault("architectures", ["MiMoAudioModel"])
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = "-".join(str(v) for v in value) if f.name in _DASHED_FIELDS else value
        out["use_sliding_window"] = False
        out["sliding_window"] = None
        out.setdefault("rope_scaling", None)
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> SpeechLMConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
