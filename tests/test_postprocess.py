"""Post-processing: resampling keeps frequencies and removes what the new rate can't hold; loudness
normalisation lands on the target under the true-peak ceiling."""

import numpy as np
import pytest

from audio.output.postprocess import measure_loudness, normalize_loudness, resample, true_peak_dbtp

SR = 24000


def _tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    x = amplitude * np.sin(2 * np.pi * freq * t)
    fade = round(0.01 * rate)  # no clicks at the ends: their broadband energy would blur the spectra
    ramp = np.sin(np.linspace(0, np.pi / 2, fade)) ** 2
    x[:fade] *= ramp
    x[-fade:] *= ramp[::-1]
    return x


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def _speechlike(seconds: float = 6.0, seed: int = 0) -> np.ndarray:
    """Voiced harmonics on a gliding 120 Hz pitch plus noise bursts, in 4 Hz syllables grouped into words
    with pauses. Its true peak sits ~16 dB above its loudness, like unprocessed speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(SR * seconds)) / SR
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    noise = np.convolve(rng.standard_normal(len(t)), np.ones(3) / 3, mode="same")
    fricatives = 0.3 * noise * (np.sin(2 * np.pi * 1.3 * t) > 0.5)
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    words = np.sin(2 * np.pi * 0.4 * t) > -0.3
    x = syllables * words * (voiced + fricatives)
    return x / np.max(np.abs(x))


def _at_lufs(x: np.ndarray, lufs: float) -> np.ndarray:
    return x * 10 ** ((lufs - measure_loudness(x, SR)) / 20)


# ---- resample -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("to_rate", [16000, 48000, 22050, 44100], ids=lambda r: f"24k-to-{r}")
def test_resample_keeps_a_1khz_tone_at_1khz(to_rate):
    x = _tone(1000, SR)
    y = resample(x, SR, to_rate)
    assert y.dtype == np.float32
    # FFT bins are 1 Hz wide here (1 s of audio): within two bins.
    assert abs(_peak_hz(y, to_rate) - 1000) <= 2 * to_rate / len(y)
    assert abs(np.max(np.abs(y)) - 0.5) < 0.01  # passband gain ~1


@pytest.mark.parametrize("n", [24000, 24001, 12345, 7])
@pytest.mark.parametrize("to_rate", [16000, 48000, 22050], ids=lambda r: f"to-{r}")
def test_resample_length(n, to_rate):
    assert abs(len(resample(np.zeros(n), SR, to_rate)) - round(n * to_rate / SR)) <= 1


def test_resample_same_rate_is_identity():
    x = _tone(1000, SR)
    y = resample(x, SR, SR)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32))


def test_resample_down_removes_what_the_new_rate_cannot_hold():
    # 10 kHz is above 16 kHz's 8 kHz Nyquist: a band-limited resampler removes it; naive decimation or
    # interpolation would fold it to 16 - 10 = 6 kHz.
    x = _tone(10000, SR)
    y = resample(x, SR, 16000).astype(np.float64)
    energy_db = 10 * np.log10(np.sum(y**2) / len(y) / (np.sum(x**2) / len(x)))
    assert energy_db <= -60

    spectrum_in = np.abs(np.fft.rfft(x * np.hanning(len(x)))) / len(x)
    spectrum_out = np.abs(np.fft.rfft(y * np.hanning(len(y)))) / len(y)
    alias_bin = round(6000 * len(y) / 16000)
    alias = spectrum_out[alias_bin - 2 : alias_bin + 3].max()
    assert 20 * np.log10(alias / spectrum_in.max()) <= -60


# ---- measurement --------------------------------------------------------------------------------------


def test_full_scale_1khz_sine_measures_minus_3_lufs():
    # BS.1770's calibration: a 0 dBFS 997 Hz sine reads -3.01 LKFS.
    t = np.arange(5 * 48000) / 48000
    assert measure_loudness(np.sin(2 * np.pi * 997 * t), 48000) == pytest.approx(-3.01, abs=0.05)


def test_loudness_of_silence_is_minus_inf():
    assert measure_loudness(np.zeros(SR), SR) == float("-inf")


def test_loudness_needs_one_gating_block():
    with pytest.raises(ValueError, match="400 ms"):
        measure_loudness(np.ones(round(0.3 * SR)), SR)


def test_true_peak_finds_the_peak_between_samples():
    # A sine at fs/4 with a 45° phase: every sample is ±0.707 (-3 dBFS) but the waveform reaches 1.0.
    n = np.arange(SR)
    x = np.sin(np.pi / 2 * n + np.pi / 4)
    assert 20 * np.log10(np.max(np.abs(x))) == pytest.approx(-3.01, abs=0.01)
    assert true_peak_dbtp(x, SR) == pytest.approx(0.0, abs=0.1)


def test_true_peak_of_a_low_tone_is_its_sample_peak():
    assert true_peak_dbtp(_tone(440, SR, amplitude=0.5), SR) == pytest.approx(-6.02, abs=0.02)


def test_true_peak_of_silence_is_minus_inf():
    assert true_peak_dbtp(np.zeros(100), SR) == float("-inf")


# ---- normalize_loudness -------------------------------------------------------------------------------


@pytest.mark.parametrize("source_lufs", [-30.0, -10.0], ids=lambda v: f"from{v:+.0f}")
@pytest.mark.parametrize("target_lufs", [-16.0, -23.0], ids=lambda v: f"to{v:+.0f}")
def test_normalize_lands_on_target_under_the_ceiling(source_lufs, target_lufs):
    x = _at_lufs(_speechlike(), source_lufs)
    y = normalize_loudness(x, SR, target_lufs)
    assert y.dtype == np.float32 and len(y) == len(x)
    assert not np.isnan(y).any()
    assert measure_loudness(y, SR) == pytest.approx(target_lufs, abs=1.0)
    assert true_peak_dbtp(y, SR) <= -1.0


def test_normalize_limits_peaks_that_plain_gain_would_push_over_the_ceiling():
    x = _at_lufs(_speechlike(), -30.0)
    plain = _at_lufs(x, -16.0)
    assert true_peak_dbtp(plain, SR) > 0.0  # so the limiter had real work to do
    y = normalize_loudness(x, SR, -16.0)
    assert measure_loudness(y, SR) == pytest.approx(-16.0, abs=0.1)
    assert true_peak_dbtp(y, SR) <= -1.0
    # Only the peaks were touched: away from them the signal is the plain-gain one.
    untouched = np.isclose(y, plain, rtol=1e-4, atol=1e-6)
    assert untouched.mean() > 0.5


def test_normalize_without_limiting_is_plain_gain():
    x = _at_lufs(_speechlike(), -30.0)
    y = normalize_loudness(x, SR, -23.0)
    np.testing.assert_allclose(y, _at_lufs(x, -23.0), rtol=1e-5, atol=1e-7)


def test_normalize_honours_a_lower_ceiling():
    y = normalize_loudness(_at_lufs(_speechlike(), -20.0), SR, -18.0, true_peak_dbtp=-3.0)
    assert measure_loudness(y, SR) == pytest.approx(-18.0, abs=1.0)
    assert true_peak_dbtp(y, SR) <= -3.0


def test_normalize_falls_short_rather_than_squash_or_break_the_ceiling():
    # -8 LUFS under a -1 dBTP ceiling would take ~30 dB of limiting on this signal's 16 dB crest factor;
    # the make-up gain is capped at 3 dB, so it stops near -14.4 LUFS (plain gain + limiter alone: -14.6).
    y = normalize_loudness(_at_lufs(_speechlike(), -20.0), SR, -8.0)
    assert true_peak_dbtp(y, SR) <= -1.0
    assert -15.0 < measure_loudness(y, SR) < -14.0


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(np.zeros(SR * 2), id="silence"),
        pytest.param(1e-5 * _tone(440, SR), id="below-the-70-lufs-gate"),
    ],
)
def test_normalize_returns_unmeasurable_audio_unchanged(x):
    y = normalize_loudness(x, SR, -16.0)
    np.testing.assert_array_equal(y, x)


def test_normalize_never_produces_nan():
    x = _at_lufs(_speechlike(2.0), -20.0)
    x[1000:1010] = np.nan
    y = normalize_loudness(x, SR, -16.0)
    assert np.isfinite(y).all()
    assert true_peak_dbtp(y, SR) <= -1.0


def test_normalize_zeroes_nan_even_in_silent_audio():
    x = np.zeros(SR, dtype=np.float32)
    x[10] = np.nan
    y = normalize_loudness(x, SR, -16.0)
    np.testing.assert_array_equal(y, np.zeros(SR, dtype=np.float32))


@pytest.mark.parametrize("seconds", [pytest.param(0.1, id="100ms"), pytest.param(0.32, id="320ms")])
def test_audio_shorter_than_a_gating_block_is_normalised_as_if_looped(seconds):
    x = _at_lufs(_speechlike(2.0), -30.0)[: int(SR * seconds)]
    y = normalize_loudness(x, SR, -20.0)
    looped = np.tile(y, -(-int(0.4 * SR) // len(y)))
    assert measure_loudness(looped, SR) == pytest.approx(-20.0, abs=1.0)
    assert true_peak_dbtp(y, SR) <= -1.0


def test_normalize_rejects_multichannel():
    with pytest.raises(ValueError, match="mono"):
        normalize_loudness(np.zeros((SR, 2)), SR, -16.0)
