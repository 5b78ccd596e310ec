"""Per-chunk quality checks: is a generated chunk usable audio of a plausible length for its text?

Pure functions on plain values. A chunk's frame budget (`max_new_tokens`) is derived from its text here
too, so the runaway check and the budget agree: a generation that uses its whole text-derived budget
never found its end of speech.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QualityLimits:
    silence_threshold_db: float = -50.0
    min_s_per_char: float = 0.02  # faster than this is a truncated chunk (an early, silent EOS)
    max_s_per_char: float = 0.25  # slower than this is a runaway generation
    slack_s: float = 2.0


def frame_budget(text_weight: float, frame_rate_hz: float, limits: QualityLimits) -> int:
    """The most frames a chunk of this text may plausibly need."""
    return max(1, math.ceil((limits.max_s_per_char * text_weight + limits.slack_s) * frame_rate_hz))


def rms_db(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def loudest_frame_db(samples: np.ndarray, sample_rate: int, frame_ms: float = 50.0) -> float:
    """RMS level of the loudest `frame_ms` frame: a short word in a mostly quiet chunk is still speech, where
    the RMS of the whole chunk would call it silent."""
    frame = max(1, int(sample_rate * frame_ms / 1000.0))
    if samples.size <= frame:
        return rms_db(samples)
    n = samples.size // frame
    frames = np.square(samples[: n * frame], dtype=np.float64).reshape(n, frame).mean(axis=1)
    tail = samples[n * frame :]
    loudest = max(float(frames.max()), float(np.mean(np.square(tail, dtype=np.float64))) if tail.size else 0.0)
    return 10.0 * math.log10(loudest) if loudest > 0 else -math.inf


def check_chunk(
    samples: np.ndarray,
    sample_rate: int,
    *,
    text_weight: float,
    frames: int,
    budget_frames: int,
    user_capped: bool,
    limits: QualityLimits,
) -> str | None:
    """Why this chunk is unusable, or None when it passes.

    `frames` is what the model generated, `budget_frames` the chunk's `max_new_tokens`. When the caller's own
    `params.max_new_tokens` set the budget, reaching it is what they asked for, not a runaway.
    """
    if samples.size == 0:
        return "no audio was generated"
    if not np.isfinite(samples).all():
        return "the audio contains invalid (non-finite) samples"
    level = loudest_frame_db(samples, sample_rate)
    if level < limits.silence_threshold_db:
        return f"the audio is silent ({level:.0f} dBFS)"
    duration_s = len(samples) / sample_rate
    if frames >= budget_frames:
        if user_capped:
            return None
        return f"runaway generation: no end of speech within {duration_s:.1f} s"
    min_s = limits.min_s_per_char * text_weight
    if duration_s < min_s:
        return f"truncated: {duration_s:.2f} s of audio is too short for the text (at least {min_s:.2f} s)"
    return None
