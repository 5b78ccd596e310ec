"""The long-form guard: how long a chunk should take to say, and whether its generation loops, stalls or hums.

Pure functions and small classes on plain values (numpy arrays of codec tokens, float samples), used by the
generator (expected durations, the band, the budget) and, through `audio.speech.FrameGuard`, inside the fast
engine's frame loop (a looping or stalled row leaves its batch at once).

Expected duration = spoken weight (audio/text/spoken.py: 1 per Latin character, 3 per CJK one) × a speaking rate
in seconds per unit. The rate starts from a prior per language (`SPEAKING_RATE_S_PER_UNIT`) and, within a job,
becomes the median rate of the chunks already accepted in the same voice.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from audio.text.spoken import spoken_weight

# Seconds per unit of spoken weight at a narrator's pace, per language. Where each number comes from:
# - English: audiobook narration is planned at ~9,300 words per hour (ACX's and the audiobook trade's production
#   rule, ~155 words/min) and English prose has ~5.9 characters per word with its space and punctuation:
#   155 × 5.9 / 60 ≈ 15.2 characters/s → 0.066 s per character.
# - The others: read-speech syllable rates of Pellegrino, Coupé & Marsico, "A cross-language perspective on speech
#   information rate", Language 87(3), 2011 (syllables/s: Mandarin 5.18, Japanese 7.84, Spanish 7.82, French
#   7.18, Italian 6.99, German 5.97, English 6.19), scaled by English's narration/read ratio (15.2 / 6.19 /
#   ~2.95 characters per syllable ≈ 0.83) and each language's characters per syllable of running text
#   (Mandarin and Korean 1 character = 1 syllable, weight 3; Japanese ~1.3 morae per character in mixed kana/kanji;
#   Latin-script languages 2.4-3.1 characters per syllable with spaces). Korean (not in that study) and
#   Portuguese and Russian (not in it either) take the values of their nearest neighbours in it (Mandarin's
#   syllable timing for Korean; Spanish for Portuguese; German for Russian).
# The band around the expected length is wide (see GuardLimits) and the job's own measured rate replaces the
# prior after its first accepted chunk in a voice, so these only have to be right to within ~30 %.
SPEAKING_RATE_S_PER_UNIT: dict[str, float] = {
    "English": 0.066,
    "Chinese": 0.078,  # 5.18 × 0.83 ≈ 4.3 characters/s, 3 units each
    "Japanese": 0.067,  # 7.84 × 0.83 / 1.3 ≈ 5.0 characters/s, 3 units each
    "Korean": 0.078,  # as Mandarin: one syllable per character
    "Spanish": 0.063,  # 7.82 × 0.83 × 2.45 ≈ 15.9 characters/s
    "Portuguese": 0.063,
    "French": 0.062,  # 7.18 × 0.83 × 2.7 ≈ 16.1 characters/s
    "Italian": 0.070,  # 6.99 × 0.83 × 2.45 ≈ 14.2 characters/s
    "German": 0.065,  # 5.97 × 0.83 × 3.1 ≈ 15.4 characters/s
    "Russian": 0.065,
}
DEFAULT_RATE_S_PER_UNIT = 0.066  # "Auto" and any language without its own prior
PRIOR_SLACK = 1.5  # the band against a prior is this much wider (0.33×-2.7× by default)


@dataclass(frozen=True)
class GuardLimits:
    """The guard's settings (QWEN_TTS_GUARD_* in audio/settings.py)."""

    enabled: bool = True
    band_low: float = 0.5  # a chunk shorter than this × its expected length is cut short
    band_high: float = 1.8  # longer than this × expected: it drags, repeats or hums
    budget_multiple: float = 2.5  # once a voice's rate is measured, the frame budget is this × expected
    loop_min_s: float = 1.0  # the shortest repeated stretch that counts as a loop
    loop_max_s: float = 6.0  # the longest stretch looked for
    loop_repeats: int = 3  # how many times the stretch must be said in a row
    loop_match: float = 0.9  # the share of tokens that must agree between repeats (a loop is rarely exact)
    stall_s: float = 1.5  # one frame (its first-codebook token) repeated this long: a stall or a hum
    max_silence_s: float = 2.0  # an internal silence longer than this (the worker's own pauses are 0.1-0.3 s)
    check_every_frames: int = 6  # how often the fast engine shows the guard a row's new frames


@dataclass
class RateModel:
    """A job's speaking rates: the prior per language until a voice has accepted chunks, then their median."""

    measured: dict[Hashable, list[float]] = field(default_factory=dict)

    def rate_s_per_unit(self, voice: Hashable, language: str) -> float:
        rates = self.measured.get(voice)
        return statistics.median(rates) if rates else prior_rate_s_per_unit(language)

    def expected_s(self, voice: Hashable, language: str, weight: float) -> float:
        return weight * self.rate_s_per_unit(voice, language)

    def known(self, voice: Hashable) -> bool:
        return bool(self.measured.get(voice))

    def accept(self, voice: Hashable, weight: float, duration_s: float) -> None:
        if weight > 0 and duration_s > 0:
            self.measured.setdefault(voice, []).append(duration_s / weight)


def prior_rate_s_per_unit(language: str) -> float:
    return SPEAKING_RATE_S_PER_UNIT.get(language, DEFAULT_RATE_S_PER_UNIT)


def prior_speech_s(text: str, language: str) -> float:
    """How long `text` takes to say at `language`'s prior rate, before any chunk of it is measured."""
    return spoken_weight(text) * prior_rate_s_per_unit(language)


def band_failure(duration_s: float, expected_s: float, limits: GuardLimits, *, measured: bool = True) -> str | None:
    """Why a chunk of `duration_s` is implausible against its expected length, or None. Against a prior rate
    (`measured` False: no chunk of the voice accepted yet) the band is `PRIOR_SLACK` times wider: a described
    or cloned voice may speak much slower or faster than the language's average."""
    if expected_s <= 0:
        return None
    slack = 1.0 if measured else PRIOR_SLACK
    ratio = duration_s / expected_s
    if ratio < limits.band_low / slack:
        return f"too short: {duration_s:.2f} s against an expected {expected_s:.2f} s ({ratio:.2f}×)"
    if ratio > limits.band_high * slack:
        return f"too long: {duration_s:.2f} s against an expected {expected_s:.2f} s ({ratio:.2f}×)"
    return None


def guarded_budget(budget_frames: int, expected_s: float, frame_rate_hz: float, limits: GuardLimits) -> int:
    """A chunk's frame budget tightened to `budget_multiple` × its expected length (never looser than before)."""
    return max(1, min(budget_frames, math.ceil(limits.budget_multiple * expected_s * frame_rate_hz)))


def find_loop(tokens: np.ndarray, min_period: int, max_period: int, repeats: int, match: float) -> int | None:
    """The period (in frames) of a loop at the end of `tokens` (first-codebook ids), or None: the last
    `repeats` stretches of `period` frames agree with their neighbours on at least `match` of their tokens.
    Periods from `min_period` to `max_period` are tried; the shortest that loops is returned."""
    tokens = np.asarray(tokens)
    n = tokens.size
    for period in range(max(1, min_period), min(max_period, n // repeats) + 1):
        span = tokens[n - repeats * period :]
        if float(np.mean(span[period:] == span[:-period])) >= match:
            return period
    return None


def find_stall(tokens: np.ndarray, min_frames: int) -> bool:
    """Whether the last `min_frames` first-codebook tokens are one token repeated (a stall or a hum)."""
    tokens = np.asarray(tokens)
    return min_frames > 0 and tokens.size >= min_frames and bool(np.all(tokens[-min_frames:] == tokens[-1]))


def longest_internal_silence_s(
    samples: np.ndarray, sample_rate: int, threshold_db: float, frame_ms: float = 50.0
) -> float:
    """The longest run of quiet `frame_ms` frames between the first and the last loud one, in seconds."""
    frame = max(1, int(sample_rate * frame_ms / 1000.0))
    n = samples.size // frame
    if n == 0:
        return 0.0
    power = np.square(samples[: n * frame], dtype=np.float64).reshape(n, frame).mean(axis=1)
    loud = power > 10.0 ** (threshold_db / 10.0)
    idx = np.flatnonzero(loud)
    if idx.size < 2:
        return 0.0
    gaps = np.diff(idx) - 1
    return float(gaps.max()) * frame / sample_rate


class RowWatch:
    """One row's first-codebook tokens as the engine makes them, checked for loops and stalls."""

    def __init__(self, frame_rate_hz: float, limits: GuardLimits):
        self.limits = limits
        self.min_period = max(2, round(limits.loop_min_s * frame_rate_hz))
        self.max_period = max(self.min_period, round(limits.loop_max_s * frame_rate_hz))
        self.stall_frames = max(2, round(limits.stall_s * frame_rate_hz))
        self.frame_rate_hz = frame_rate_hz
        self.tokens = np.zeros(0, dtype=np.int64)

    def push(self, tokens: np.ndarray) -> str | None:
        """Add the row's new first-codebook tokens; why it must stop, or None."""
        self.tokens = np.concatenate((self.tokens, np.asarray(tokens, dtype=np.int64).reshape(-1)))
        at_s = self.tokens.size / self.frame_rate_hz
        if find_stall(self.tokens, self.stall_frames):
            return f"stalled: one frame repeated for {self.limits.stall_s:.1f} s (at {at_s:.1f} s)"
        period = find_loop(
            self.tokens, self.min_period, self.max_period, self.limits.loop_repeats, self.limits.loop_match
        )
        if period is not None:
            return (
                f"looping: a {period / self.frame_rate_hz:.1f} s stretch said {self.limits.loop_repeats} times "
                f"(at {at_s:.1f} s)"
            )
        return None


class BatchGuard:
    """An `audio.speech.FrameGuard` for one generate call: a `RowWatch` per request, and why each stopped row
    stopped (`reasons`, by the request's position in the call)."""

    def __init__(self, rows: int, frame_rate_hz: float, limits: GuardLimits):
        self.every_frames = limits.check_every_frames
        self.watches = [RowWatch(frame_rate_hz, limits) for _ in range(rows)]
        self.reasons: dict[int, str] = {}

    def observe(self, row: int, first_codes: np.ndarray) -> bool:
        """The row's new frames' first-codebook tokens; True: stop the row now."""
        if row in self.reasons:
            return True
        reason = self.watches[row].push(first_codes)
        if reason is not None:
            self.reasons[row] = reason
        return reason is not None
