"""Tests for audio/quality.py: exact frame budgets, levels, and every verdict check_chunk can give."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audio.quality import QualityLimits, check_chunk, frame_budget, rms_db

RATE = 24_000
LIMITS = QualityLimits()


def sine(seconds: float, amplitude: float = 0.3, freq: float = 1000.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def check(samples, *, text_weight=10.0, frames=12, budget_frames=54, user_capped=False, limits=LIMITS):
    return check_chunk(
        samples,
        RATE,
        text_weight=text_weight,
        frames=frames,
        budget_frames=budget_frames,
        user_capped=user_capped,
        limits=limits,
    )


# --------------------------------------------------------------------------------------------------------------
# frame_budget: ceil((max_s_per_char * weight + slack_s) * frame_rate), at least 1


@pytest.mark.parametrize(
    ("weight", "frame_rate", "limits", "expected"),
    [
        pytest.param(0, 12, LIMITS, 24, id="no-text-is-the-slack"),
        pytest.param(1, 12, LIMITS, 27, id="one-char"),
        pytest.param(10, 12, LIMITS, 54, id="ten-chars"),
        pytest.param(100, 12, LIMITS, 324, id="hundred-chars"),
        pytest.param(150, 12.5, LIMITS, 494, id="hundred-fifty-chars-12.5-hz-rounds-up"),
        pytest.param(1, 12.5, LIMITS, 29, id="fraction-rounds-up"),
        pytest.param(2.5, 12, LIMITS, 32, id="fractional-weight"),
        pytest.param(10, 12, QualityLimits(max_s_per_char=0.5, slack_s=1.0), 72, id="custom-limits"),
        pytest.param(0, 12, QualityLimits(slack_s=0.0), 1, id="never-below-one"),
        pytest.param(0, 0, LIMITS, 1, id="zero-frame-rate"),
    ],
)
def test_frame_budget(weight, frame_rate, limits, expected):
    assert frame_budget(weight, frame_rate, limits) == expected


def test_quality_limit_defaults():
    assert QualityLimits() == QualityLimits(
        silence_threshold_db=-50.0, min_s_per_char=0.02, max_s_per_char=0.25, slack_s=2.0
    )


# --------------------------------------------------------------------------------------------------------------
# rms_db


def test_rms_db_full_scale_sine():
    assert rms_db(sine(1.0, amplitude=1.0)) == pytest.approx(-3.0103, abs=1e-4)
    assert rms_db(sine(1.0, amplitude=1.0).astype(np.float64)) == pytest.approx(20 * math.log10(0.5**0.5), abs=1e-6)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(np.full(100, 1.0, np.float32), 0.0, id="full-scale-dc"),
        pytest.param(np.full(100, -0.1, np.float32), -20.0, id="minus-20-db-dc"),
        pytest.param(np.full(100, 0.01, np.float64), -40.0, id="minus-40-db-float64"),
        pytest.param(np.array([1.0, -1.0, 0.0, 0.0], np.float32), 20 * math.log10(0.5**0.5), id="half-power"),
    ],
)
def test_rms_db_values(samples, expected):
    assert rms_db(samples) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "samples",
    [pytest.param(np.zeros(RATE, np.float32), id="zeros"), pytest.param(np.zeros(0, np.float32), id="empty")],
)
def test_rms_db_of_nothing_is_minus_infinity(samples):
    assert rms_db(samples) == -math.inf


# --------------------------------------------------------------------------------------------------------------
# check_chunk


@pytest.mark.parametrize(
    ("samples", "kwargs"),
    [
        pytest.param(sine(1.0), {}, id="one-second-for-ten-chars"),
        pytest.param(sine(1.0, amplitude=0.01), {}, id="quiet-but-above-threshold"),
        pytest.param(sine(0.2), {"text_weight": 10.0}, id="exactly-the-minimum-duration"),
        pytest.param(sine(4.4), {"frames": 53, "budget_frames": 54}, id="one-frame-under-budget"),
        pytest.param(sine(0.1), {"frames": 54, "budget_frames": 54, "user_capped": True}, id="user-capped-at-budget"),
        pytest.param(sine(4.5), {"frames": 60, "budget_frames": 54, "user_capped": True}, id="user-capped-over-budget"),
    ],
)
def test_check_chunk_passes(samples, kwargs):
    assert check(samples, **kwargs) is None


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(np.zeros(RATE, np.float32), "the audio is silent (-inf dBFS)", id="zeros"),
        pytest.param(sine(1.0, amplitude=1e-4), "the audio is silent (-83 dBFS)", id="very-quiet-sine"),
        pytest.param(np.full(RATE, 0.003, np.float32), "the audio is silent (-50 dBFS)", id="just-below-threshold"),
    ],
)
def test_check_chunk_silent(samples, expected):
    assert check(samples) == expected


def test_silence_threshold_comes_from_limits():
    samples = np.full(RATE, 0.003, np.float32)  # -50.5 dBFS
    assert check(samples, limits=QualityLimits(silence_threshold_db=-60.0)) is None
    assert check(sine(1.0, amplitude=0.01), limits=QualityLimits(silence_threshold_db=-30.0)) == (
        "the audio is silent (-43 dBFS)"
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_chunk_non_finite(bad):
    samples = sine(1.0)
    samples[100] = bad
    assert check(samples) == "the audio contains invalid (non-finite) samples"


def test_check_chunk_empty():
    assert check(np.zeros(0, np.float32)) == "no audio was generated"


@pytest.mark.parametrize(
    ("frames", "budget"),
    [pytest.param(54, 54, id="frames-reach-budget"), pytest.param(55, 54, id="frames-over-budget")],
)
def test_check_chunk_runaway(frames, budget):
    assert check(sine(4.5), frames=frames, budget_frames=budget) == (
        "runaway generation: no end of speech within 4.5 s"
    )


def test_check_chunk_truncated():
    # 100 characters need at least 2 s; 1 s came back before the budget was reached.
    assert check(sine(1.0), text_weight=100.0, frames=12, budget_frames=324) == (
        "truncated: 1.00 s of audio is too short for the text (at least 2.00 s)"
    )


def test_truncation_uses_min_s_per_char_from_limits():
    limits = QualityLimits(min_s_per_char=0.2)
    assert check(sine(1.5), text_weight=10.0, limits=limits) == (
        "truncated: 1.50 s of audio is too short for the text (at least 2.00 s)"
    )
    assert check(sine(2.0), text_weight=10.0, limits=limits) is None


@pytest.mark.parametrize(
    ("samples", "kwargs", "expected"),
    [
        pytest.param(
            np.zeros(0, np.float32),
            {"frames": 54, "budget_frames": 54},
            "no audio was generated",
            id="empty-before-runaway",
        ),
        pytest.param(
            np.full(RATE, np.nan, np.float32),
            {},
            "the audio contains invalid (non-finite) samples",
            id="non-finite-before-silent",
        ),
        pytest.param(
            np.zeros(RATE, np.float32),
            {"frames": 54, "budget_frames": 54},
            "the audio is silent (-inf dBFS)",
            id="silent-before-runaway",
        ),
        pytest.param(
            sine(0.1),
            {"text_weight": 100.0, "frames": 54, "budget_frames": 54},
            "runaway generation: no end of speech within 0.1 s",
            id="runaway-before-truncated",
        ),
    ],
)
def test_check_chunk_verdict_order(samples, kwargs, expected):
    assert check(samples, **kwargs) == expected
