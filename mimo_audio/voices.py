"""Voice registry: a voice prompt encoded once, stored as ``<name>.safetensors`` (codes) + ``<name>.json``.

The folder is ``$MIMO_AUDIO_HOME/voices`` (default ``~/.cache/mimo-audio/voices``) unless given.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_home() -> Path:
    return Path(os.environ.get("MIMO_AUDIO_HOME", Path.home() / ".cache" / "mimo-audio"))


@dataclass
class VoiceInfo:
    name: str
    frames: int
    frame_rate: float
    source: str  # where the audio came from (path or "array")
    created: float
    description: str = ""

    @property
    def seconds(self) -> float:
        return self.frames / self.frame_rate


class VoiceRegistry:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_home() / "voices"

    def _paths(self, name: str) -> tuple[Path, Path]:
        if not _NAME.match(name):
            raise ValueError(
                f"invalid voice name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter/digit"
            )
        return self.root / f"{name}.safetensors", self.root / f"{name}.json"

    def save(self, name: str, codes: torch.Tensor, info: VoiceInfo, overwrite: bool = True) -> Path:
        tensors, meta = self._paths(name)
        if not overwrite and tensors.exists():
            raise ValueError(f"voice {name!r} already exists in {self.root}")
        if codes.dim() != 2 or codes.shape[1] == 0:
            raise ValueError(f"voice codes must be a non-empty [channels, frames] tensor, got {tuple(codes.shape)}")
        self.root.mkdir(parents=True, exist_ok=True)
        save_file({"codes": codes.detach().to(torch.int64).contiguous().cpu()}, str(tensors))
        meta.write_text(json.dumps(asdict(info), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return tensors

    def load(self, name: str) -> tuple[torch.Tensor, VoiceInfo]:
        tensors, meta = self._paths(name)
        if not tensors.is_file() or not meta.is_file():
            known = ", ".join(self.names()) or "none"
            raise ValueError(f"unknown voice {name!r} (registry {self.root}; known voices: {known})")
        codes = load_file(str(tensors)).get("codes")
        if codes is None:
            raise ValueError(f"voice file {tensors} holds no 'codes' tensor")
        try:
            info = VoiceInfo(**json.loads(meta.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"voice metadata {meta} is malformed: {exc}") from exc
        return codes, info

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.safetensors") if (p.with_suffix(".json")).is_file())

    def remove(self, name: str) -> None:
        for p in self._paths(name):
            p.unlink(missing_ok=True)

    def register(self, name: str, codes: torch.Tensor, frame_rate: float, source: str, description: str = "",
                 overwrite: bool = True) -> Path:
        """Store encoded voice ``codes`` as ``name`` (with its info); returns the codes file."""
        return self.save(name, codes, self.make_info(name, codes, frame_rate, source, description), overwrite)

    @staticmethod
    def make_info(name: str, codes: torch.Tensor, frame_rate: float, source: str, description: str = "") -> VoiceInfo:
        return VoiceInfo(
            name=name, frames=int(codes.shape[1]), frame_rate=frame_rate, source=source, created=time.time(),
            description=description,
        )
