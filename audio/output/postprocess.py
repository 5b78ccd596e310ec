"""Sample-level post-processing of synthesized mono audio: resampling, tempo change with the pitch kept
(the OpenAI `speed`), loudness measurement and normalisation to a target integrated loudness under a
true-peak ceiling.

Loudness follows ITU-R BS.1770 (integrated LUFS via pyloudnorm; true peak from 4x oversampling, annex 2).
Everything here is a pure function of numpy arrays and numbers (time_stretch pipes them through the
ffmpeg binary); outputs are float32.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pyloudnorm
import soxr

from audio.errors import InputError

_TRUE_PEAK_OVERSAMPLING = 4
_BS1770_BLOCK_S = 0.4  # gating block; pyloudnorm refuses anything shorter

# Limiter timing. The gain is held down for _LIMIT_HOLD_S either side of every over-ceiling peak and ramps
# over 2 * _LIMIT_RAMP_S. A 10 ms hold bridges consecutive pitch pulses (voices >= 100 Hz), so the gain
# stays down through a loud vowel instead of pumping at the pitch rate, which would be heard as distortion.
# Longer holds are smoother but give up loudness: on the test speech, 20 ms tops out near -15.5 LUFS at a
# -1 dBTP ceiling, 10 ms near -14.2. The ramp must not exceed the hold (see _limit).
_LIMIT_HOLD_S = 0.010
_LIMIT_RAMP_S = 0.005
_LOUDNESS_TOLERANCE_LU = 0.05
# Aim this far under the ceiling so the float32 rounding of the result can't put a peak a hair above it.
_CEILING_MARGIN_DB = 0.01
_MAX_PASSES = 5
# Make-up gain beyond plain normalisation that the limiter may be asked to absorb. Once peaks are limited
# hard, each further dB buys a fraction of a LU while squashing the waveform (test speech, -14 LUFS target:
# 3 dB of make-up bring +0.5 LU; uncapped at -8 LUFS, 30 dB brought +0.4 LU), so past this it stops short.
_MAX_MAKEUP_DB = 3.0


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr, very high quality); float32 out, the input itself when rates are equal."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    x = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate or x.size == 0:
        return x  # no copy: an hour of audio is ~350 MB
    return soxr.resample(x, from_rate, to_rate, quality="VHQ").astype(np.float32, copy=False)


# Tempo change: ffmpeg's atempo filter, which is WSOLA (overlap-add of ~40 ms Hann windows, each taken from
# where the input best continues the output so far). For speech that keeps formants and transients clean;
# a phase vocoder smears transients and sounds phasey, and librosa's (the one at hand) also loses level on
# slow-downs: a 1 kHz tone at 24 kHz comes out 1 dB quieter at speed 0.5 and 13 dB quieter at 0.25. ffmpeg
# is already the aac encoder's runtime dependency (in the image) and runs this in C, far faster than real
# time. Without it, speed != 1 is an InputError saying so, like aac. Each atempo instance is kept within
# 0.5-2.0: that is all ffmpeg < 5 accepts, and ffmpeg >= 5 skips input above 2.0 rather than blending it
# (its docs recommend chaining instead).
_ATEMPO_MIN, _ATEMPO_MAX = 0.5, 2.0
_STRETCH_TIMEOUT_S = 300  # an hour of speech takes under a minute even at speed 0.25; this only stops a hang
_STRETCH_TAIL_S = 0.2  # silence fed after the input so atempo's flush loses none of it (it lost <= 0.1 s)


def check_time_stretch(speed: float) -> None:
    """Raise the InputError `time_stretch` would for this speed, before any audio is generated."""
    if speed != 1.0 and shutil.which("ffmpeg") is None:
        raise InputError(f"speed {speed:g} needs ffmpeg, which this worker image lacks; use speed 1.0")


def time_stretch(samples: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Play mono samples `speed` times faster (2.0 = half as long), keeping the pitch; float32 out.

    The result is exactly round(n / speed) samples long and keeps the very end of the input: atempo drops
    up to its last ~100 ms of output when it flushes, so the input goes in with 200 ms of silence appended
    and the output is cut (or, in theory, zero-padded) to that length.
    speed 1.0 returns the (float32) input itself and needs no ffmpeg. InputError if ffmpeg isn't installed;
    ValueError (a caller bug) for a non-positive or non-finite speed or samples that aren't 1-D;
    RuntimeError if ffmpeg fails.
    """
    if not np.isfinite(speed) or speed <= 0:
        raise ValueError(f"speed must be a positive finite number, got {speed!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {x.shape}")
    if speed == 1.0 or x.size == 0:
        return x
    check_time_stretch(speed)
    ffmpeg = shutil.which("ffmpeg")
    target = round(x.shape[0] / speed)
    tail = np.zeros(round(_STRETCH_TAIL_S * sample_rate), dtype=np.float32)
    y = _atempo(ffmpeg, np.concatenate([x, tail]), sample_rate, float(speed))[:target]
    if y.shape[0] < target:
        y = np.pad(y, (0, target - y.shape[0]))
    return y


def _atempo_chain(speed: float) -> list[float]:
    """Factors within [0.5, 2.0] whose product is speed, as few as possible (4.0 -> [2.0, 2.0])."""
    factors = []
    while speed > _ATEMPO_MAX:
        factors.append(_ATEMPO_MAX)
        speed /= _ATEMPO_MAX
    while speed < _ATEMPO_MIN:
        factors.append(_ATEMPO_MIN)
        speed /= _ATEMPO_MIN
    return [*factors, speed]


def _atempo(ffmpeg: str, x: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    chain = ",".join(f"atempo={f!r}" for f in _atempo_chain(speed))
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin"]
    cmd += ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]
    cmd += ["-filter:a", chain, "-f", "f32le", "-ac", "1", "pipe:1"]
    proc = subprocess.run(
        cmd, input=x.astype("<f4").tobytes(), capture_output=True, timeout=_STRETCH_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"ffmpeg atempo failed (exit {proc.returncode}): {err}")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)  # a writable copy


def measure_loudness(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (BS.1770-4, gated). -inf for silence (everything below the -70 LUFS gate).

    Raises ValueError for audio shorter than one 400 ms gating block, which has no integrated loudness.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.shape[0] < _min_len(sample_rate):
        raise ValueError(f"integrated loudness needs at least {_BS1770_BLOCK_S * 1000:.0f} ms of audio")
    loudness = float(pyloudnorm.Meter(sample_rate).integrated_loudness(x))
    # pyloudnorm returns -inf or NaN (0/0 in the relative gate) when every block is gated out.
    return loudness if np.isfinite(loudness) else float("-inf")


def true_peak_dbtp(samples: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP: the highest magnitude of the 4x oversampled signal (and of the samples themselves).

    -inf for silence or empty input. 4x is what annex 2 specifies; it can under-read a full-scale tone near
    Nyquist by up to ~0.7 dB, far less for speech, whose energy sits well below Nyquist.
    """
    peak = float(np.max(np.abs(_oversampled(samples, sample_rate)), initial=0.0))
    if peak == 0.0:
        return float("-inf")
    return 20.0 * float(np.log10(peak))


def normalize_loudness(
    samples: np.ndarray, sample_rate: int, target_lufs: float, *, true_peak_dbtp: float = -1.0
) -> np.ndarray:
    """Scale to target_lufs integrated loudness with the true peak at or below true_peak_dbtp.

    Where reaching the target would push the true peak over the ceiling, a look-ahead peak limiter
    (computed on the 4x oversampled signal) takes the peaks down smoothly and make-up gain restores the
    loudness lost with them, iterated until within 0.05 LU. The make-up is capped at 3 dB: a target that
    needs more than that (around -14 LUFS and up at a -1 dBTP ceiling for unprocessed speech) is left
    short rather than squashed. A last static gain-down guarantees the ceiling as this module's true-peak
    meter measures it.

    Audio shorter than one 400 ms BS.1770 block is measured as if looped to that length (a short podcast line
    still matches its neighbours); silent audio (gated out entirely) is returned unchanged. NaN and ±inf
    samples are zeroed first, even then.
    """
    x = np.asarray(samples, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, 0.0)
        samples = x.astype(np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {x.shape}")
    if x.shape[0] == 0:
        return samples
    loudness = _looped_loudness(x, sample_rate)
    if not np.isfinite(loudness):
        return samples
    ceiling = 10.0 ** ((true_peak_dbtp - _CEILING_MARGIN_DB) / 20.0)

    plain_db = target_lufs - loudness
    gain_db = plain_db
    for _ in range(_MAX_PASSES):
        y = _limit(x * 10.0 ** (gain_db / 20.0), sample_rate, ceiling)
        error = target_lufs - _looped_loudness(y, sample_rate)
        next_db = min(gain_db + error, plain_db + _MAX_MAKEUP_DB)
        if abs(error) <= _LOUDNESS_TOLERANCE_LU or not np.isfinite(error) or next_db <= gain_db:
            break
        gain_db = next_db

    out = y.astype(np.float32)
    peak = np.max(np.abs(_oversampled(out, sample_rate)), initial=0.0)
    if peak > ceiling:
        out = (y * (ceiling / peak)).astype(np.float32)
    return out


def _looped_loudness(x: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness, of the audio repeated up to one gating block when it is shorter than that."""
    return measure_loudness(np.tile(x, -(-_min_len(sample_rate) // x.shape[0])), sample_rate)


def _min_len(sample_rate: int) -> int:
    return int(np.ceil(_BS1770_BLOCK_S * sample_rate))


def _oversampled(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The samples followed by their 4x oversampled version, for peak-taking only (float64)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return x
    up = soxr.resample(x, sample_rate, sample_rate * _TRUE_PEAK_OVERSAMPLING, quality="VHQ")
    return np.concatenate([x, up])


def _limit(y: np.ndarray, sample_rate: int, ceiling: float) -> np.ndarray:
    """Look-ahead limiter: y times a smooth gain that keeps every true peak at or below ceiling.

    need[n] is the gain sample n tolerates given the highest oversampled magnitude between n-1 and n+1.
    gain = moving mean (±ramp) of the moving minimum (±hold) of need. Because ramp <= hold, every value
    averaged into gain[n] is a minimum over a window containing n, so gain[n] <= need[n]: the limiter is
    never late, and it starts ramping down before the peak arrives (that's the look-ahead).
    """
    n = y.shape[0]
    factor = _TRUE_PEAK_OVERSAMPLING
    up = np.abs(soxr.resample(y, sample_rate, sample_rate * factor, quality="VHQ"))
    up = np.pad(up, (0, max(0, n * factor - up.shape[0])))[: n * factor]
    # Magnitude over [n, n+1) (the sample and its 3 interpolated successors), then over [n-1, n+1).
    segment = np.maximum(up.reshape(n, factor).max(axis=1), np.abs(y))
    around = np.maximum(segment, np.concatenate([[0.0], segment[:-1]]))
    if around.max(initial=0.0) <= ceiling:
        return y
    need = np.minimum(1.0, ceiling / np.maximum(around, 1e-12))

    hold = max(1, round(_LIMIT_HOLD_S * sample_rate))
    ramp = min(hold, max(1, round(_LIMIT_RAMP_S * sample_rate)))
    held = _sliding_min(np.pad(need, hold, constant_values=1.0), 2 * hold + 1)
    padded = np.pad(held, ramp, mode="edge")
    sums = np.cumsum(np.concatenate([[0.0], padded]))
    gain = (sums[2 * ramp + 1 :] - sums[: -(2 * ramp + 1)]) / (2 * ramp + 1)
    # Float rounding in the running sum can lift a mean a hair above the minimum it came from.
    return y * np.minimum(gain, need)


def _sliding_min(x: np.ndarray, width: int) -> np.ndarray:
    """out[i] = min(x[i : i + width]) for i in range(len(x) - width + 1), in O(n) (van Herk/Gil-Werman)."""
    n = x.shape[0]
    blocks = -(-n // width)
    padded = np.full(blocks * width, np.inf)
    padded[:n] = x
    grid = padded.reshape(blocks, width)
    prefix = np.minimum.accumulate(grid, axis=1).ravel()
    suffix = np.minimum.accumulate(grid[:, ::-1], axis=1)[:, ::-1].ravel()
    count = n - width + 1
    return np.minimum(suffix[:count], prefix[width - 1 : width - 1 + count])
