"""time_stretch: the tempo changes by `speed`, the pitch does not, and nothing of the input is lost."""

import shutil

import numpy as np
import pytest

from audio.errors import InputError
from audio.output import postprocess
from audio.output.postprocess import _atempo_chain, time_stretch

SR = 24000
HAVE_FFMPEG = shutil.which("ffmpeg") is not None
needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg not installed")
SPEEDS = [0.25, 0.5, 0.8, 1.25, 2.0, 4.0]


def _tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(round(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    """The frequency of the strongest FFT bin (Hann-windowed); bins are SR / len(x) wide."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spectrum)) * SR / x.shape[0]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@needs_ffmpeg
@pytest.mark.parametrize("speed", SPEEDS, ids=lambda s: f"speed={s}")
def test_tempo_changes_and_pitch_stays(speed):
    x = _tone(1000, 1.0)
    y = time_stretch(x, SR, speed)
    assert y.dtype == np.float32
    assert y.shape[0] == round(x.shape[0] / speed)  # exact; the brief allows ±2%
    bin_hz = SR / y.shape[0]
    assert abs(_peak_hz(y) - 1000) <= 2 * bin_hz
    # The tone holds its level (within 0.5 dB) throughout: no dropouts, no phasing (librosa's phase vocoder
    # comes out 13 dB down at 0.25 here). The last tenth ends in atempo's fade into the appended silence.
    for block in np.array_split(y, 10):
        assert _rms(block) == pytest.approx(0.5 / np.sqrt(2), rel=0.06)


@needs_ffmpeg
@pytest.mark.parametrize("speed", SPEEDS, ids=lambda s: f"speed={s}")
def test_the_end_of_the_input_survives(speed):
    # 0.5 s at 1 kHz, then 0.2 s at 3 kHz: the last 10% of the output is still the 3 kHz part, loud.
    x = np.concatenate([_tone(1000, 0.5), _tone(3000, 0.2)])
    y = time_stretch(x, SR, speed)
    end = y[-y.shape[0] // 10 :]
    assert abs(_peak_hz(end) - 3000) <= 2 * SR / end.shape[0]
    assert _rms(end) > 0.3


@needs_ffmpeg
@pytest.mark.parametrize("n", [1, 100, 7529], ids=lambda n: f"n={n}")
def test_short_and_odd_lengths(n):
    x = _tone(1000, 1.0)[:n]
    for speed in (0.5, 3.0):
        assert time_stretch(x, SR, speed).shape[0] == round(n / speed)


@needs_ffmpeg
def test_other_sample_rate_and_float64_in():
    t = np.arange(16000) / 16000
    y = time_stretch(0.5 * np.sin(2 * np.pi * 500 * t), 16000, 2.0)
    assert (y.dtype, y.shape[0]) == (np.float32, 8000)
    assert abs(float(np.argmax(np.abs(np.fft.rfft(y * np.hanning(8000))))) * 2 - 500) <= 4
    y[0] = 0.0  # writable


def test_speed_one_returns_the_input_itself_without_ffmpeg(monkeypatch):
    monkeypatch.setattr(postprocess.shutil, "which", lambda name: None)
    x = _tone(1000, 0.5).astype(np.float32)
    assert time_stretch(x, SR, 1.0) is x  # no copy of what may be an hour of audio


def test_empty_input_stays_empty():
    assert time_stretch(np.zeros(0, dtype=np.float32), SR, 2.0).shape == (0,)


def test_without_ffmpeg_other_speeds_are_invalid_input(monkeypatch):
    monkeypatch.setattr(postprocess.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match=r"speed 1\.5 needs ffmpeg.*use speed 1\.0") as info:
        time_stretch(_tone(1000, 0.1), SR, 1.5)
    assert info.value.code == "invalid_input"


@pytest.mark.parametrize(
    ("speed", "chain"),
    [(4.0, [2.0, 2.0]), (0.25, [0.5, 0.5]), (3.0, [2.0, 1.5]), (0.3, [0.5, 0.6]), (1.5, [1.5]), (0.5, [0.5])],
    ids=lambda v: repr(v),
)
def test_atempo_chain_keeps_each_instance_within_half_to_double(speed, chain):
    assert _atempo_chain(speed) == pytest.approx(chain)


@pytest.mark.parametrize("speed", [0.0, -1.0, float("nan"), float("inf")], ids=repr)
def test_bad_speed_is_a_caller_bug(speed):
    with pytest.raises(ValueError, match="speed"):
        time_stretch(_tone(1000, 0.1), SR, speed)


def test_stereo_is_a_caller_bug():
    with pytest.raises(ValueError, match="mono"):
        time_stretch(np.zeros((100, 2), dtype=np.float32), SR, 2.0)
