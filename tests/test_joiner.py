"""Tests for audio/output/joiner.py: exact lengths, exact crossfade samples, pauses without crossfades, edge trim."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.output.joiner import crossfade_len, join, joined_length, trim_edges


def ramp(n: int, start: float = 0.0) -> np.ndarray:
    """Distinct, non-zero-ish samples so any misplaced copy shows up."""
    return (start + np.arange(n, dtype=np.float32) / max(n, 1) * 0.5 + 0.1).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# joined_length and crossfade_len


@pytest.mark.parametrize(
    ("lengths", "pauses", "crossfade", "expected"),
    [
        pytest.param([[100]], [0], 40, 100, id="single-chunk"),
        pytest.param([[100, 200, 300]], [0], 50, 600 - 50 - 50, id="three-chunks-one-segment"),
        pytest.param([[100, 200, 300]], [0], 0, 600, id="no-crossfade"),
        pytest.param([[100], [200]], [0, 30], 50, 100 + 30 + 200, id="two-segments-no-crossfade-across"),
        pytest.param([[100, 200], [50, 60, 70]], [0, 1000], 40, 300 - 40 + 1000 + 180 - 40 - 40, id="mixed"),
        pytest.param([[10, 3, 10]], [0], 5, 23 - 3 - 3, id="chunk-shorter-than-crossfade"),
        pytest.param([[4, 10]], [0], 5, 14 - 4, id="first-chunk-shorter-than-crossfade"),
        pytest.param([[10, 0, 10]], [0], 5, 20, id="empty-chunk-breaks-the-crossfade"),
        pytest.param([[10]], [999], 5, 10, id="first-pause-ignored"),
        pytest.param([[10], [20], [30]], [7, 100, 200], 5, 10 + 100 + 20 + 200 + 30, id="three-segments"),
        pytest.param([[], [5]], [0, 10], 5, 15, id="empty-first-segment"),
        pytest.param([], [], 5, 0, id="no-segments"),
    ],
)
def test_joined_length(lengths, pauses, crossfade, expected):
    assert joined_length(lengths, pauses, crossfade) == expected


@pytest.mark.parametrize(
    ("a", "b", "crossfade", "expected"),
    [
        pytest.param(100, 100, 40, 40, id="both-long"),
        pytest.param(10, 100, 40, 10, id="left-short"),
        pytest.param(100, 7, 40, 7, id="right-short"),
        pytest.param(0, 100, 40, 0, id="left-empty"),
        pytest.param(100, 100, 0, 0, id="zero-crossfade"),
        pytest.param(100, 100, -5, 0, id="negative-crossfade"),
    ],
)
def test_crossfade_len(a, b, crossfade, expected):
    assert crossfade_len(a, b, crossfade) == expected


# --------------------------------------------------------------------------------------------------------------
# join: lengths


@pytest.mark.parametrize(
    ("lengths", "pauses", "crossfade"),
    [
        pytest.param([[100]], [0], 40, id="single-chunk"),
        pytest.param([[100, 200, 300]], [0], 50, id="three-chunks"),
        pytest.param([[100, 200], [50, 60, 70]], [0, 1000], 40, id="two-segments"),
        pytest.param([[10, 3, 10]], [0], 5, id="middle-chunk-shorter-than-crossfade"),
        pytest.param([[2, 3, 1, 50]], [0], 8, id="all-short-chunks"),
        pytest.param([[10, 4, 10]], [0], 3, id="middle-chunk-shorter-than-two-fades"),
        pytest.param([[10, 0, 10]], [0], 5, id="empty-chunk"),
        pytest.param([[], [5]], [0, 10], 5, id="empty-segment"),
        pytest.param([[30], [30], [30]], [0, 0, 0], 10, id="zero-pauses"),
    ],
)
def test_join_length_matches_joined_length(lengths, pauses, crossfade):
    segments = [[ramp(n, start=i) for i, n in enumerate(seg)] for seg in lengths]
    out = join(segments, pauses, crossfade)
    assert len(out) == joined_length(lengths, pauses, crossfade)
    assert out.dtype == np.float32


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.lists(st.integers(0, 60), min_size=0, max_size=5), min_size=1, max_size=4),
    pause=st.integers(0, 50),
    crossfade=st.integers(0, 30),
)
def test_join_length_property(lengths, pause, crossfade):
    segments = [[np.ones(n, dtype=np.float32) for n in seg] for seg in lengths]
    pauses = [pause] * len(lengths)
    out = join(segments, pauses, crossfade)
    assert len(out) == joined_length(lengths, pauses, crossfade)
    assert np.isfinite(out).all()


def test_join_without_crossfade_is_concatenation():
    a, b, c = ramp(10), ramp(20, 1.0), ramp(5, 2.0)
    np.testing.assert_array_equal(join([[a, b, c]], [0], 0), np.concatenate([a, b, c]))


def test_join_copies_the_parts_outside_the_fade_exactly():
    a, b = ramp(100), ramp(80, 1.0)
    out = join([[a, b]], [0], 16)
    assert len(out) == 164
    np.testing.assert_array_equal(out[:84], a[:84])
    np.testing.assert_array_equal(out[100:], b[16:])


# --------------------------------------------------------------------------------------------------------------
# join: the equal-power crossfade


def fade_gains(n: int) -> tuple[list[float], list[float]]:
    """The fade-out (cos) and fade-in (sin) gains the joiner documents, sampled at sample centres."""
    t = [(k + 0.5) / n for k in range(n)]
    return [math.cos(x * math.pi / 2) for x in t], [math.sin(x * math.pi / 2) for x in t]


@pytest.mark.parametrize("n", [pytest.param(8, id="even-crossfade"), pytest.param(9, id="odd-crossfade")])
def test_crossfade_of_two_constant_chunks(n):
    out = join([[np.ones(100, np.float32), np.ones(100, np.float32)]], [0], n)
    assert len(out) == 200 - n
    np.testing.assert_array_equal(out[: 100 - n], np.ones(100 - n, np.float32))
    np.testing.assert_array_equal(out[100:], np.ones(100 - n, np.float32))
    fade_out, fade_in = fade_gains(n)
    expected = [c + s for c, s in zip(fade_out, fade_in, strict=True)]
    np.testing.assert_allclose(out[100 - n : 100], expected, rtol=0, atol=1e-6)


def test_crossfade_midpoint_is_sqrt_2():
    # An odd crossfade has a sample at t = 0.5 exactly: cos(pi/4) + sin(pi/4) = sqrt(2).
    out = join([[np.ones(50, np.float32), np.ones(50, np.float32)]], [0], 9)
    assert out[50 - 9 + 4] == pytest.approx(math.sqrt(2), abs=1e-6)
    # And the first and last fade samples, written out.
    assert out[41] == pytest.approx(math.cos(math.pi / 36) + math.sin(math.pi / 36), abs=1e-6)
    assert out[49] == pytest.approx(math.cos(17 * math.pi / 36) + math.sin(17 * math.pi / 36), abs=1e-6)
    assert out[41] == pytest.approx(1.08335, abs=1e-5)


@pytest.mark.parametrize("n", [1, 2, 9, 960])
def test_crossfade_is_equal_power(n):
    ones, zeros = np.ones(2 * n, np.float32), np.zeros(2 * n, np.float32)
    fade_out = join([[ones, zeros]], [0], n)[n : 2 * n]  # the first chunk's gain through the fade
    fade_in = join([[zeros, ones]], [0], n)[n : 2 * n]  # the second chunk's gain through the fade
    np.testing.assert_allclose(fade_out.astype(np.float64) ** 2 + fade_in.astype(np.float64) ** 2, 1.0, atol=1e-6)
    expected_out, expected_in = fade_gains(n)
    np.testing.assert_allclose(fade_out, expected_out, atol=1e-6)
    np.testing.assert_allclose(fade_in, expected_in, atol=1e-6)
    # Mirror images: the fade-in is the fade-out reversed, and both are strictly monotonic.
    np.testing.assert_allclose(fade_in, fade_out[::-1], atol=1e-6)
    if n > 1:
        assert (np.diff(fade_in) > 0).all()
        assert (np.diff(fade_out) < 0).all()


def test_crossfade_shortened_by_a_short_chunk():
    # The second chunk (3 samples) is shorter than the 5-sample crossfade: it is faded in over all 3.
    a, b = np.ones(10, np.float32), np.full(3, 2.0, np.float32)
    out = join([[a, b]], [0], 5)
    assert len(out) == 10
    fade_out, fade_in = fade_gains(3)
    expected = [1.0] * 7 + [c * 1.0 + s * 2.0 for c, s in zip(fade_out, fade_in, strict=True)]
    np.testing.assert_allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# join: pauses between segments, never a crossfade across them


def test_pause_between_segments_is_exact_silence():
    a, b = ramp(100), ramp(80, 1.0)
    out = join([[a], [b]], [0, 50], 40)
    assert len(out) == 230
    np.testing.assert_array_equal(out[:100], a)
    np.testing.assert_array_equal(out[100:150], np.zeros(50, np.float32))
    assert out[150] == b[0]
    np.testing.assert_array_equal(out[150:], b)


def test_zero_pause_butts_segments_without_crossfade():
    a, b = ramp(100), ramp(80, 1.0)
    np.testing.assert_array_equal(join([[a], [b]], [0, 0], 40), np.concatenate([a, b]))


def test_crossfades_inside_segments_pauses_between():
    a1, a2 = np.ones(100, np.float32), np.ones(100, np.float32)
    b1, b2 = np.full(60, 0.5, np.float32), np.full(60, 0.5, np.float32)
    out = join([[a1, a2], [b1, b2]], [0, 25], 10)
    assert len(out) == 190 + 25 + 110
    fade_out, fade_in = fade_gains(10)
    np.testing.assert_allclose(out[90:100], [c + s for c, s in zip(fade_out, fade_in, strict=True)], atol=1e-6)
    np.testing.assert_array_equal(out[100:190], np.ones(90, np.float32))
    np.testing.assert_array_equal(out[190:215], np.zeros(25, np.float32))
    assert out[215] == 0.5
    np.testing.assert_array_equal(out[215:265], np.full(50, 0.5, np.float32))
    np.testing.assert_allclose(out[265:275], [0.5 * (c + s) for c, s in zip(fade_out, fade_in, strict=True)], atol=1e-6)
    np.testing.assert_array_equal(out[275:], np.full(50, 0.5, np.float32))


def test_each_pause_goes_before_its_segment():
    a, b, c = np.ones(10, np.float32), np.full(10, 2.0, np.float32), np.full(10, 3.0, np.float32)
    out = join([[a], [b], [c]], [99, 5, 7], 0)
    expected = [1.0] * 10 + [0.0] * 5 + [2.0] * 10 + [0.0] * 7 + [3.0] * 10
    np.testing.assert_array_equal(out, np.array(expected, np.float32))


def test_join_one_hour_is_linear():
    rate = 24_000
    chunk = np.full(10 * rate, 0.25, np.float32)  # 10 s; the same array 360 times keeps memory to the output
    segments = [[chunk] * 60 for _ in range(6)]  # 6 segments x 60 chunks = 60 minutes
    pauses = [rate // 2] * 6
    crossfade = rate * 40 // 1000
    lengths = [[len(c) for c in seg] for seg in segments]
    started = time.perf_counter()
    out = join(segments, pauses, crossfade)
    elapsed = time.perf_counter() - started
    assert len(out) == joined_length(lengths, pauses, crossfade) == 360 * 10 * rate - 354 * crossfade + 5 * rate // 2
    assert out[0] == 0.25
    assert out[-1] == 0.25
    assert elapsed < 10.0


# --------------------------------------------------------------------------------------------------------------
# trim_edges

RATE = 24_000
FRAME = RATE // 100  # 240 samples = 10 ms


def burst(lead: int, loud: int, tail: int, level: float = 0.5, floor: float = 0.0) -> np.ndarray:
    return np.concatenate(
        [np.full(lead, floor, np.float32), np.full(loud, level, np.float32), np.full(tail, floor, np.float32)]
    )


def test_trim_keeps_pad_around_loud_audio():
    samples = burst(RATE, 4800, RATE)  # 1 s silence, 0.2 s loud, 1 s silence
    out = trim_edges(samples, RATE, threshold_db=-50, pad_ms=60)
    pad = 1440  # 60 ms at 24 kHz
    assert len(out) == 4800 + 2 * pad
    np.testing.assert_array_equal(out, samples[RATE - pad : RATE + 4800 + pad])
    np.testing.assert_array_equal(out[:pad], np.zeros(pad, np.float32))
    np.testing.assert_array_equal(out[pad : pad + 4800], np.full(4800, 0.5, np.float32))


def test_trim_with_zero_pad_cuts_to_the_loud_frames():
    samples = burst(10 * FRAME, 5 * FRAME, 10 * FRAME)
    out = trim_edges(samples, RATE, threshold_db=-50, pad_ms=0)
    np.testing.assert_array_equal(out, np.full(5 * FRAME, 0.5, np.float32))


def test_trim_pad_is_clamped_at_the_edges():
    samples = burst(FRAME, 10 * FRAME, FRAME)  # 10 ms of silence each side, pad 60 ms
    out = trim_edges(samples, RATE, threshold_db=-50, pad_ms=60)
    np.testing.assert_array_equal(out, samples)


def test_trim_treats_audio_below_threshold_as_silence():
    # -66 dBFS hiss before and after: below the -50 dB threshold, so trimmed like silence.
    samples = burst(RATE, 4800, RATE, floor=0.0005)
    out = trim_edges(samples, RATE, threshold_db=-50, pad_ms=0)
    np.testing.assert_array_equal(out, np.full(4800, 0.5, np.float32))


def test_trim_keeps_quiet_audio_above_threshold():
    # -40 dBFS is quiet but above the threshold: nothing is cut.
    samples = burst(RATE, 4800, RATE, floor=0.01)
    np.testing.assert_array_equal(trim_edges(samples, RATE, threshold_db=-50, pad_ms=0), samples)


def test_trim_cuts_a_silent_partial_last_frame():
    # 10.5 frames, the 120-sample tail silent: it is measured like any frame and trimmed.
    samples = np.concatenate([np.zeros(5 * FRAME, np.float32), np.full(5 * FRAME + 120, 0.5, np.float32)])
    samples[-120:] = 0.0
    out = trim_edges(samples, RATE, threshold_db=-50, pad_ms=0)
    np.testing.assert_array_equal(out, samples[5 * FRAME : -120])


def test_trim_never_cuts_loud_samples_in_the_partial_last_frame():
    rate = 1000  # 10 samples per 10 ms frame
    samples = np.zeros(1005, np.float32)
    samples[100:200] = 0.5  # loud frames 10..19
    samples[1000:] = 0.5  # loud audio in the 5-sample partial frame at the end
    out = trim_edges(samples, rate, threshold_db=-50, pad_ms=50)
    np.testing.assert_array_equal(out, samples[50:])


@pytest.mark.parametrize(
    "samples",
    [
        pytest.param(np.zeros(RATE, np.float32), id="all-zeros"),
        pytest.param(np.full(RATE, 0.0005, np.float32), id="all-below-threshold"),
        pytest.param(np.full(FRAME - 1, 0.5, np.float32), id="shorter-than-a-frame"),
        pytest.param(np.zeros(0, np.float32), id="empty"),
    ],
)
def test_trim_returns_input_unchanged(samples):
    out = trim_edges(samples, RATE, threshold_db=-50, pad_ms=60)
    assert len(out) == len(samples)
    np.testing.assert_array_equal(out, samples)


def test_trim_threshold_is_peak_not_rms():
    # One loud sample in a frame makes the frame loud.
    samples = np.zeros(20 * FRAME, np.float32)
    samples[10 * FRAME + 7] = 0.5
    out = trim_edges(samples, RATE, threshold_db=-50, pad_ms=0)
    np.testing.assert_array_equal(out, samples[10 * FRAME : 11 * FRAME])


def test_trim_negative_samples_count_as_loud():
    samples = burst(10 * FRAME, 2 * FRAME, 10 * FRAME, level=-0.5)
    out = trim_edges(samples, RATE, threshold_db=-50, pad_ms=0)
    np.testing.assert_array_equal(out, np.full(2 * FRAME, -0.5, np.float32))
