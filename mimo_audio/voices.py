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

from .errors import UserError

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


def check_voice_fits(frames: int, max_patches: int, group_size: int = 4, frame_rate: float = 25.0) -> None:
    """A voice prompt may fill at most half the LM's context: the other half is for the text and the speech.

    Raises UserError with the longest prompt that fits (a longer one would make every later TTS fail).
    """
    limit = (max_patches // 2) * group_size  # in audio frames
    if frames > limit:
        raise UserError(
            f"voice prompt of {frames / frame_rate:.1f} s is too long for a model with a context of {max_patches} "
            f"patches ({max_patches * group_size / frame_rate:.0f} s): a voice may take at most half of it, "
            f"{limit / frame_rate:.0f} s; trim the audio (5-20 s is typical)"
        )


class VoiceRegistry:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_home() / "voices"

    def _paths(self, name: str) -> tuple[Path, Path]:
        if not _NAME.match(name):
            raise UserError(
                f"invalid voice name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter/digit"
            )
        return self.root / f"{name}.safetensors", self.root / f"{name}.json"

    def save(self, name: str, codes: torch.Tensor, info: VoiceInfo, overwrite: bool = True) -> Path:
        tensors, meta = self._paths(name)
        if not overwrite:
            self.check_new(name)
        if codes.dim() != 2 or codes.shape[1] == 0:
            raise ValueError(f"voice codes must be a non-empty [channels, frames] tensor, got {tuple(codes.shape)}")
        self.root.mkdir(parents=True, exist_ok=True)
        save_file({"codes": codes.detach().to(torch.int64).contiguous().cpu()}, str(tensors))
        meta.write_text(json.dumps(asdict(info), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return tensors

    def check_new(self, name: str) -> None:
        """UserError when voice ``name`` exists already (replacing one must be asked for)."""
        if self._paths(name)[0].exists():
            raise UserError(f"voice {name!r} already exists in {self.root}: pick another name, or replace it "
                            "(--force on the command line, overwrite=True in Python)")

    def load(self, name: str) -> tuple[torch.Tensor, VoiceInfo]:
        tensors, meta = self._paths(name)
        if not tensors.is_file() or not meta.is_file():
            known = ", ".join(self.names()) or "none"
            raise UserError(f"unknown voice {name!r} (registry {self.root}; known voices: {known})")
        try:
            codes = load_file(str(tensors)).get("codes")
        except Exception as exc:  # safetensors raises SafetensorError for truncated/corrupt files
            raise UserError(f"voice file {tensors} is not readable safetensors ({exc}): remove and re-add it") from exc
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
        """Delete voice ``name``; UserError when there is no such voice."""
        paths = self._paths(name)
        if not any(p.exists() for p in paths):
            known = ", ".join(self.names()) or "none"
            raise UserError(f"unknown voice {name!r} (registry {self.root}; known voices: {known})")
        for p in paths:
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
