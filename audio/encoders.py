"""Turning mono float samples into the bytes of one output format (wav, mp3, flac, opus, aac, pcm).

Owns the format list, their content types, the float -> int16 conversion and which formats this machine
can encode. wav, flac, mp3 and opus are written in process by libsndfile (through soundfile); only aac
needs the ffmpeg binary, so a worker image without ffmpeg still serves every other format.
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess

import numpy as np
import soundfile as sf

from audio.errors import InputError
from audio.postprocess import resample

FORMATS = ("wav", "mp3", "flac", "opus", "aac", "pcm")

CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",  # Ogg-encapsulated Opus (RFC 7845), what browsers and players expect
    "aac": "audio/aac",  # ADTS stream
    # Not audio/L16: RFC 2586 defines L16 as big-endian and requires rate/channels parameters, while these
    # bytes are headerless little-endian s16 mono at the requested rate, which the caller already knows.
    "pcm": "application/octet-stream",
}

MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
AAC_SAMPLE_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)

# Constant bitrates an MP3 frame can declare, by MPEG version (which the sample rate decides).
_MP3_BITRATES_MPEG1 = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_BITRATES_MPEG2 = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MP3_BITRATES_MPEG25 = (8, 16, 24, 32, 40, 48, 56, 64)

_FFMPEG_TIMEOUT_S = 300  # aac of an hour of speech encodes in well under a minute; this only stops a hang


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16: NaN -> 0, out-of-range clipped to ±32767, scaled and rounded."""
    return np.rint(_clean(samples) * 32767.0).astype(np.int16)


def mp3_bitrates(sample_rate: int) -> tuple[int, ...]:
    """The constant bitrates (kbps) an MP3 at this sample rate can use."""
    if sample_rate >= 32000:
        return _MP3_BITRATES_MPEG1
    if sample_rate >= 16000:
        return _MP3_BITRATES_MPEG2
    return _MP3_BITRATES_MPEG25


def default_mp3_bitrate(sample_rate: int) -> int:
    """64 kbps for rates up to 24 kHz (transparent enough for mono speech), 128 kbps above."""
    return 64 if sample_rate <= 24000 else 128


def available_formats() -> list[str]:
    """The formats this machine can encode right now, in FORMATS order."""
    sndfile = _sndfile_support()
    have = {"wav", "flac", "pcm"} | {f for f in ("mp3", "opus") if f in sndfile}
    if _ffmpeg() is not None:
        have.add("aac")
    return [f for f in FORMATS if f in have]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")


def check_encodable(fmt: str, sample_rate: int | None) -> None:
    """Raise the InputError that encoding `fmt` at `sample_rate` would meet, before any audio is generated.

    `sample_rate` None (the model's own rate, not known before it loads) checks the format alone.
    """
    _check_format(fmt)
    if fmt in ("mp3", "opus"):
        _require_sndfile(fmt)
    if fmt == "aac" and _ffmpeg() is None:
        others = "/".join(f for f in ("mp3", "opus", "flac", "wav") if f in available_formats())
        raise InputError(f"aac needs ffmpeg, which this worker image lacks; use {others}")
    # An MP3 frame can only declare MPEG's rates (ADTS likewise its own); resampling silently would hand back
    # audio at a rate the caller didn't ask for, so an unsupported rate is the caller's to fix.
    if sample_rate is None:
        return
    if fmt == "mp3" and sample_rate not in MP3_SAMPLE_RATES:
        raise InputError(f"mp3 supports sample rates {', '.join(map(str, MP3_SAMPLE_RATES))} Hz, not {sample_rate}")
    if fmt == "aac" and sample_rate not in AAC_SAMPLE_RATES:
        raise InputError(f"aac supports sample rates {', '.join(map(str, AAC_SAMPLE_RATES))} Hz, not {sample_rate}")


def encoded_rate(fmt: str, sample_rate: int) -> int:
    """The rate the encoded stream will declare: the requested one, except opus (see _encode_opus)."""
    if fmt == "opus" and sample_rate not in OPUS_SAMPLE_RATES:
        return next((r for r in OPUS_SAMPLE_RATES if r >= sample_rate), OPUS_SAMPLE_RATES[-1])
    return sample_rate


def encode(samples: np.ndarray, sample_rate: int, fmt: str, *, mp3_bitrate_kbps: int | None = None) -> bytes:
    """Encode mono samples (float, nominally [-1, 1]) at sample_rate as fmt.

    Raises InputError for an unknown format, a format this machine can't encode, an mp3 or aac sample rate
    the format doesn't have, an mp3 bitrate MPEG doesn't have at that rate, or mp3_bitrate_kbps given for
    another format. Opus at a rate Opus doesn't take is resampled up to the next one it does (see
    _encode_opus). ValueError (a caller bug) for empty or multi-channel samples.
    """
    _check_format(fmt)
    if mp3_bitrate_kbps is not None and fmt != "mp3":
        raise InputError(f"mp3_bitrate_kbps applies only to mp3, not {fmt}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"sample rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    check_encodable(fmt, sample_rate)
    samples = np.asarray(samples)
    if samples.ndim != 1:
        # A caller bug, not a bad request: the model and post-processing only ever produce mono.
        raise ValueError(f"expected mono 1-D samples, got shape {samples.shape}")
    if samples.size == 0:
        # libsndfile writes nothing at all for an empty flac or mp3 (0 bytes, not a valid file).
        raise ValueError("no samples to encode")

    if fmt == "pcm":
        return to_int16(samples).astype("<i2").tobytes()
    if fmt == "wav":
        return _sndfile_write(to_int16(samples), sample_rate, "WAV", "PCM_16")
    if fmt == "flac":
        return _sndfile_write(to_int16(samples), sample_rate, "FLAC", "PCM_16")
    if fmt == "mp3":
        return _encode_mp3(samples, sample_rate, mp3_bitrate_kbps)
    if fmt == "opus":
        return _encode_opus(samples, sample_rate)
    return _encode_aac(samples, sample_rate)


LOSSY_FORMATS = ("mp3", "opus", "aac")


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decode what `encode` made back to float32 mono and its rate (libsndfile; ffmpeg for aac), e.g. to
    measure what a listener gets from a lossy stream. pcm carries no rate: it comes back as 0."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, 0
    if fmt != "aac":
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return samples.mean(axis=1), int(rate)
    ffmpeg = _ffmpeg()
    if ffmpeg is None:
        raise InputError("decoding aac needs ffmpeg, which this worker image lacks")
    probe = subprocess.run(
        [ffmpeg, "-hide_banner", "-nostdin", "-f", "aac", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "pipe:1"],
        input=data,
        capture_output=True,
        timeout=_FFMPEG_TIMEOUT_S,
        check=False,
    )
    if probe.returncode != 0:
        raise RuntimeError(f"ffmpeg aac decoding failed (exit {probe.returncode})")
    rate = re.search(r"(\d+) Hz", probe.stderr.decode(errors="replace"))
    return np.frombuffer(probe.stdout, dtype="<f4").copy(), int(rate.group(1)) if rate else 0


def _clean(samples: np.ndarray) -> np.ndarray:
    """float64 copy with NaN -> 0 and everything (±inf included) clipped to [-1, 1]."""
    x = np.nan_to_num(np.asarray(samples, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(x, -1.0, 1.0)


@functools.cache
def _sndfile_support() -> frozenset[str]:
    """Which of mp3/opus the loaded libsndfile can write (1.1+ built with lame/mpg123 and libopus)."""
    have = set()
    if "MP3" in sf.available_formats() and "MPEG_LAYER_III" in sf.available_subtypes("MP3"):
        have.add("mp3")
    if "OGG" in sf.available_formats() and "OPUS" in sf.available_subtypes("OGG"):
        have.add("opus")
    return frozenset(have)


def _ffmpeg() -> str | None:
    # Looked up per call, not cached: it's a few stat()s, and tests simulate its absence by patching
    # shutil.which.
    return shutil.which("ffmpeg")


def _sndfile_write(data: np.ndarray, sample_rate: int, container: str, subtype: str, **kwargs) -> bytes:
    # wav/flac get int16 so libsndfile stores the values as they are: fed floats, it would scale them
    # itself and, with clipping off by default, wrap anything above 1.0 around to negative full scale.
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=container, subtype=subtype, **kwargs)
    return buf.getvalue()


def _require_sndfile(fmt: str) -> None:
    if fmt not in _sndfile_support():
        raise InputError(
            f"{fmt} needs libsndfile with {fmt} support, which this worker's libsndfile "
            f"({sf.__libsndfile_version__}) lacks; use one of {', '.join(available_formats())}"
        )


def _mp3_compression_level(sample_rate: int, kbps: int) -> float:
    # libsndfile (mpeg_l3_encode.c) has no bitrate setting: in constant-bitrate mode it sets
    # bitrate = int(hi - level * (hi - lo)) with (lo, hi) = (32, 320) kbps for MPEG-1 rates, (8, 160) for
    # MPEG-2 and (8, 64) for MPEG-2.5. Aim a quarter kbps above the wanted rate so the truncation lands on it.
    bitrates = mp3_bitrates(sample_rate)
    lo, hi = (32, 320) if bitrates is _MP3_BITRATES_MPEG1 else (8, bitrates[-1])
    return min(1.0, max(0.0, (hi - kbps - 0.25) / (hi - lo)))


def _encode_mp3(samples: np.ndarray, sample_rate: int, kbps: int | None) -> bytes:
    # Gotcha: below ~200-byte frames (e.g. 32 kbps at 24 kHz) lame can't fit its Info frame, so decoders get
    # no gapless info and return the encoder delay and padding too (up to ~150 ms at 8 kHz).
    allowed = mp3_bitrates(sample_rate)
    if kbps is None:
        kbps = default_mp3_bitrate(sample_rate)
    elif kbps not in allowed:
        raise InputError(f"mp3 at {sample_rate} Hz supports bitrates {', '.join(map(str, allowed))} kbps, not {kbps}")
    return _sndfile_write(
        _clean(samples).astype(np.float32),
        sample_rate,
        "MP3",
        "MPEG_LAYER_III",
        bitrate_mode="CONSTANT",
        compression_level=_mp3_compression_level(sample_rate, kbps),
    )


def _encode_opus(samples: np.ndarray, sample_rate: int) -> bytes:
    # Opus codes at 48 kHz internally and decoders output 48 kHz; OpusHead's input rate is only a hint, and
    # libsndfile refuses any rate outside OPUS_SAMPLE_RATES. So other rates are resampled (band-limited)
    # up to the next Opus rate (22050 -> 24000, 44100 -> 48000): nothing is lost, and the stream then says
    # that rate. Rates above 48 kHz come down to 48 kHz, Opus's full band.
    x = _clean(samples)
    target = encoded_rate("opus", sample_rate)
    if target != sample_rate:
        x = np.clip(resample(x, sample_rate, target), -1.0, 1.0)
        sample_rate = target
    # Gotcha: libsndfile's Ogg Opus writer doesn't flush the encoder's 6.5 ms look-ahead when the audio ends
    # exactly on a 20 ms frame boundary (the model's 80 ms frames always do): the decoded tail is then a burst
    # of noise. A little trailing silence puts the end mid-frame, where it is flushed cleanly.
    frame = sample_rate // 50
    pad = (frame - x.shape[0] % frame) % frame + frame // 2
    x = np.concatenate([x, np.zeros(pad, dtype=x.dtype)])
    return _sndfile_write(x.astype(np.float32), sample_rate, "OGG", "OPUS")


def _encode_aac(samples: np.ndarray, sample_rate: int) -> bytes:
    # Straight to the ffmpeg CLI over pipes rather than through pydub: pydub's export round-trips through
    # two temp files and can't time out, and builds the same command line otherwise.
    ffmpeg = _ffmpeg()
    # AAC-LC carries at most 6144 bits per 1024-sample frame and channel, i.e. 6 bits a sample.
    kbps = min(64 if sample_rate <= 24000 else 128, 6 * sample_rate // 1000)
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin"]
    cmd += ["-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]
    cmd += ["-c:a", "aac", "-b:a", f"{kbps}k", "-f", "adts", "pipe:1"]
    proc = subprocess.run(
        cmd,
        input=to_int16(samples).astype("<i2").tobytes(),
        capture_output=True,
        timeout=_FFMPEG_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"ffmpeg aac encoding failed (exit {proc.returncode}): {err}")
    return proc.stdout
