"""Prometheus text exposition of :meth:`mimo_audio.engine.Engine.stats`."""

from __future__ import annotations

from typing import Any

# stats key -> (metric name, type, help)
METRICS = (
    ("queue_depth", "mimo_audio_queue_depth", "gauge", "requests waiting for a batch slot"),
    ("active", "mimo_audio_active_requests", "gauge", "requests generating now"),
    ("max_batch", "mimo_audio_max_batch", "gauge", "batch slots"),
    ("patches_per_s", "mimo_audio_patches_per_second", "gauge", "generated patches per second (last 10 s)"),
    ("mean_step_ms", "mimo_audio_step_milliseconds", "gauge", "mean time of one batched patch step"),
    ("mean_batch", "mimo_audio_mean_batch_rows", "gauge", "mean rows per patch step"),
    ("merge_ms", "mimo_audio_batch_merge_milliseconds", "gauge", "mean batch-cache rebuild on a join/leave"),
    ("ttfa_s_p50", "mimo_audio_time_to_first_audio_seconds_p50", "gauge", "median time to first audio (recent)"),
    ("ttfa_s_max", "mimo_audio_time_to_first_audio_seconds_max", "gauge", "worst time to first audio (recent)"),
    ("first_patch_s_p50", "mimo_audio_time_to_first_patch_seconds_p50", "gauge", "median time to first patch"),
    ("submitted", "mimo_audio_requests_submitted_total", "counter", "requests accepted into the queue"),
    ("completed", "mimo_audio_requests_completed_total", "counter", "requests finished"),
    ("failed", "mimo_audio_requests_failed_total", "counter", "requests failed by an error"),
    ("cancelled", "mimo_audio_requests_cancelled_total", "counter", "requests cancelled (client left)"),
    ("timed_out", "mimo_audio_requests_timed_out_total", "counter", "requests past their time limit"),
    ("rejected", "mimo_audio_requests_rejected_total", "counter", "requests refused with a full queue"),
    ("patches", "mimo_audio_patches_total", "counter", "patches generated"),
    ("uptime_s", "mimo_audio_uptime_seconds", "gauge", "seconds since the engine started"),
)


def prometheus(stats: dict[str, Any]) -> str:
    lines = []
    for key, name, kind, doc in METRICS:
        value = stats.get(key)
        if value is None:
            continue
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name} {float(value):.6g}"]
    return "\n".join(lines) + "\n"
