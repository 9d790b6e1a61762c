"""The intra-patch delay pattern of the patch decoder.

A patch holds ``group_size`` frames of ``len(delays)`` RVQ channels. The patch decoder emits it in
``group_size + max(delays)`` steps: channel ``c`` emits frame ``t - delays[c]`` at step ``t`` when
``0 <= t - delays[c] < group_size``. With the official pattern 0-1-2-...-7 and 4 frames that is 11 steps,
channel 0 starting at step 0 and channel 7 finishing at step 10. Each patch is generated completely
before the backbone moves on; the delay never crosses a patch boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class DelayPattern:
    delays: tuple[int, ...]
    group_size: int

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.delays):
            raise ValueError(f"delays must be >= 0, got {self.delays}")
        if self.group_size < 1:
            raise ValueError("group_size must be >= 1")

    @property
    def num_channels(self) -> int:
        return len(self.delays)

    @property
    def num_steps(self) -> int:
        return self.group_size + max(self.delays)

    @cached_property
    def schedule(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """``schedule[t]`` = the ``(channel, frame)`` pairs emitted at step ``t``, channels in ascending order."""
        steps = []
        for t in range(self.num_steps):
            steps.append(
                tuple((c, t - d) for c, d in enumerate(self.delays) if 0 <= t - d < self.group_size)
            )
        return tuple(steps)

    def describe(self) -> str:
        """Human-readable schedule, e.g. ``t0 c0(0) · t1 c0(1) c1(0) · ...``."""
        return " · ".join(
            f"t{t} " + " ".join(f"c{c}({f})" for c, f in emits) for t, emits in enumerate(self.schedule)
        )
