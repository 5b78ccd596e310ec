"""Encoders: every format's container header, and what an independent decoder gets back from the bytes."""

import io
import shutil
import struct
import subprocess

import numpy as np
import pytest
import soundfile as sf

from audio.errors import InputError
from audio.output import encoders
from audio.output.encoders import CONTENT_TYPES, FORMATS, available_formats, check_encodable, encode, to_int16

HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed")

FRAME_S = 0.080  # the duration tolerance: one 80 ms frame
AAC_PRIMING = 1024  # ADTS can't signal the encoder delay, so decoders return these leading samples too
RATES = (24000, 16000, 48000)


def _signal(sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    return 0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1320 * t)


def _rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _ffmpeg_decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode with the ffmpeg CLI (an independent decoder) to float samples and the stream's rate."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate", "-of", "csv=p=0", "pipe:0"],
        input=data,
        capture_output=True,
        check=True,
    )
    rate = int(probe.stdout.decode().strip())
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(rate), "pipe:1"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype="<i2") / 32767.0, rate


def _wav_fmt(data: bytes) -> tuple[int, int, int, int]:
    """(audio_format, channels, sample_rate, bits) from the fmt chunk."""
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
            return fmt, channels, rate, bits
        pos += 8 + size + (size & 1)
    raise AssertionError("no fmt chunk")


def _flac_streaminfo(data: bytes) -> tuple[int, int, int, int]:
    """(sample_rate, channels, bits, total_samples) from STREAMINFO, which directly follows 'fLaC'."""
    assert data[4] & 0x7F == 0  # block type 0 = STREAMINFO
    v = int.from_bytes(data[18:26], "big")
    return v >> 44, ((v >> 41) & 7) + 1, ((v >> 36) & 31) + 1, v & ((1 << 36) - 1)


_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_KBPS_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_KBPS_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def _mp3_first_frame(data: bytes) -> tuple[int, int]:
    """(sample_rate, kbps) from the first MPEG audio frame header, skipping an ID3v2 tag if present."""
    pos = 0
    if data[:3] == b"ID3":
        pos = 10 + ((data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9])
    h = int.from_bytes(data[pos : pos + 4], "big")
    assert h >> 21 == 0x7FF, "no MPEG frame sync"
    version, layer = (h >> 19) & 3, (h >> 17) & 3
    assert layer == 1, "not Layer III"
    kbps = (_MP3_KBPS_V1 if version == 3 else _MP3_KBPS_V2)[(h >> 12) & 15]
    return _MP3_RATES[version][(h >> 10) & 3], kbps


def _opus_head(data: bytes) -> tuple[int, int]:
    """(channels, input_sample_rate) from OpusHead, asserted to lie in the first Ogg page."""
    assert data[:4] == b"OggS"
    nsegs = data[26]
    page_end = 27 + nsegs + sum(data[27 : 27 + nsegs])
    at = data.find(b"OpusHead")
    assert 0 <= at < page_end
    _, channels, _, rate = struct.unpack("<BBHI", data[at + 8 : at + 16])
    return channels, rate


_ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def _adts_header(data: bytes) -> tuple[int, int]:
    """(sample_rate, channels) from the first ADTS header."""
    assert data[0] == 0xFF and data[1] & 0xF0 == 0xF0, "no ADTS sync"
    return _ADTS_RATES[(data[2] >> 2) & 15], ((data[2] & 1) << 2) | (data[3] >> 6)


# ---- to_int16 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0.0, 0, id="zero"),
        pytest.param(1.0, 32767, id="full-scale"),
        pytest.param(-1.0, -32767, id="negative-full-scale"),
        pytest.param(0.5, 16384, id="half-rounds-16383.5-to-even"),
        pytest.param(0.25, 8192, id="quarter-8191.75-rounds-up"),
        pytest.param(1 / 32767, 1, id="one-lsb"),
        pytest.param(-0.4 / 32767, 0, id="under-half-lsb"),
        pytest.param(1.5, 32767, id="above-1-clips"),
        pytest.param(-3.0, -32767, id="below-minus-1-clips"),
        pytest.param(np.inf, 32767, id="inf-clips"),
        pytest.param(-np.inf, -32767, id="minus-inf-clips"),
        pytest.param(np.nan, 0, id="nan-is-zero"),
    ],
)
def test_to_int16_values(value, expected):
    out = to_int16(np.array([value]))
    assert out.dtype == np.int16
    assert int(out[0]) == expected


def test_to_int16_float32_array():
    out = to_int16(np.array([0.1, -0.1, 0.999, 1.0001], dtype=np.float32))
    assert out.tolist() == [3277, -3277, 32734, 32767]


# ---- every format, at the model's rate and others ------------------------------------------------------


def test_content_types_cover_every_format():
    assert set(CONTENT_TYPES) == set(FORMATS)
    assert CONTENT_TYPES["mp3"] == "audio/mpeg"
    assert CONTENT_TYPES["opus"] == "audio/ogg"
    assert CONTENT_TYPES["pcm"] == "application/octet-stream"


def test_this_machine_encodes_everything():
    expected = list(FORMATS) if shutil.which("ffmpeg") else [f for f in FORMATS if f != "aac"]
    assert available_formats() == expected


@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{r // 1000}k")
def test_wav(rate):
    x = _signal(rate)
    data = encode(x, rate, "wav")
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert _wav_fmt(data) == (1, 1, rate, 16)  # PCM, mono, rate, 16 bit
    decoded, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == rate
    np.testing.assert_array_equal(decoded, to_int16(x))


@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{r // 1000}k")
def test_flac(rate):
    x = _signal(rate)
    data = encode(x, rate, "flac")
    assert data[:4] == b"fLaC"
    assert _flac_streaminfo(data) == (rate, 1, 16, len(x))
    decoded, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == rate
    np.testing.assert_array_equal(decoded, to_int16(x))


@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{r // 1000}k")
def test_pcm(rate):
    x = _signal(rate)
    data = encode(x, rate, "pcm")
    assert len(data) == 2 * len(x)
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<i2"), to_int16(x))


def test_pcm_is_little_endian():
    assert encode(np.array([1 / 32767, -1.0]), 24000, "pcm") == b"\x01\x00\x01\x80"


def test_wav_clips_instead_of_wrapping():
    data = encode(np.array([2.0, -2.0, 0.0]), 24000, "wav")
    decoded, _ = sf.read(io.BytesIO(data), dtype="int16")
    assert decoded.tolist() == [32767, -32767, 0]


@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{r // 1000}k")
def test_mp3(rate):
    x = _signal(rate)
    data = encode(x, rate, "mp3")
    assert _mp3_first_frame(data) == (rate, 64 if rate <= 24000 else 128)
    decoded, sr = sf.read(io.BytesIO(data))
    assert sr == rate
    # At the default bitrates lame writes its gapless (Info) frame, so the decoder trims delay and padding.
    assert abs(len(decoded) - len(x)) / rate <= FRAME_S
    n = min(len(decoded), len(x))
    assert abs(_rms_db(decoded[:n]) - _rms_db(x[:n])) < 1.0


@pytest.mark.parametrize("rate", encoders.MP3_SAMPLE_RATES, ids=str)
def test_mp3_every_bitrate_is_what_the_frames_declare(rate):
    x = _signal(rate, 0.1)
    declared = {
        kbps: _mp3_first_frame(encode(x, rate, "mp3", mp3_bitrate_kbps=kbps)) for kbps in encoders.mp3_bitrates(rate)
    }
    assert declared == {kbps: (rate, kbps) for kbps in encoders.mp3_bitrates(rate)}


@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{r // 1000}k")
def test_opus(rate):
    # Opus decodes at 48 kHz internally; the rate asserted is OpusHead's input_sample_rate, which is also
    # what libsndfile reports and decodes at.
    x = _signal(rate)
    data = encode(x, rate, "opus")
    assert _opus_head(data) == (1, rate)
    decoded, sr = sf.read(io.BytesIO(data))
    assert sr == rate
    assert abs(len(decoded) - len(x)) / rate <= FRAME_S
    n = min(len(decoded), len(x))
    assert abs(_rms_db(decoded[:n]) - _rms_db(x[:n])) < 1.0


@pytest.mark.parametrize(("rate", "coded_rate"), [(22050, 24000), (44100, 48000), (11025, 12000), (96000, 48000)])
def test_opus_resamples_rates_opus_lacks_to_the_next_one(rate, coded_rate):
    x = _signal(rate)
    data = encode(x, rate, "opus")
    assert _opus_head(data) == (1, coded_rate)
    decoded, sr = sf.read(io.BytesIO(data))
    assert sr == coded_rate
    assert abs(len(decoded) / sr - len(x) / rate) <= FRAME_S
    # Still a 440 Hz tone after the resampling.
    spectrum = np.abs(np.fft.rfft(decoded * np.hanning(len(decoded))))
    assert abs(np.argmax(spectrum) * sr / len(decoded) - 440) < 2


@needs_ffmpeg
@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{r // 1000}k")
def test_aac(rate):
    x = _signal(rate)
    data = encode(x, rate, "aac")
    assert _adts_header(data) == (rate, 1)
    decoded, sr = _ffmpeg_decode(data)
    assert sr == rate
    # ADTS has no field for the encoder delay, so the decoder's output starts with the 1024 priming samples.
    body = decoded[AAC_PRIMING:]
    assert abs(len(body) - len(x)) / rate <= FRAME_S
    n = min(len(body), len(x))
    assert abs(_rms_db(body[:n]) - _rms_db(x[:n])) < 1.0


@needs_ffmpeg
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
@pytest.mark.parametrize("rate", [24000, 16000], ids=lambda r: f"{r // 1000}k")
def test_ffmpeg_agrees(fmt, rate):
    x = _signal(rate)
    decoded, sr = _ffmpeg_decode(encode(x, rate, fmt))
    # ffmpeg's libopus decoder always outputs 48 kHz; it trims pre-skip and lame's delay/padding.
    assert sr == (48000 if fmt == "opus" else rate)
    assert abs(len(decoded) / sr - len(x) / rate) <= FRAME_S


# ---- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["m4a", "WAV", "", "ogg"])
def test_unknown_format_is_invalid_input(fmt):
    with pytest.raises(InputError) as err:
        encode(_signal(24000, 0.1), 24000, fmt)
    assert err.value.code == "invalid_input"
    assert "wav, mp3, flac, opus, aac, pcm" in err.value.message


@pytest.mark.parametrize("rate", [20000, 96000, 44000])
def test_mp3_rate_mpeg_lacks_is_invalid_input(rate):
    with pytest.raises(InputError, match=r"mp3 supports sample rates 8000, .*48000 Hz"):
        encode(_signal(rate, 0.1), rate, "mp3")


@pytest.mark.parametrize(("rate", "kbps"), [(24000, 192), (24000, 100), (48000, 8), (8000, 80)])
def test_mp3_bitrate_mpeg_lacks_is_invalid_input(rate, kbps):
    with pytest.raises(InputError, match=f"not {kbps}$"):
        encode(_signal(rate, 0.1), rate, "mp3", mp3_bitrate_kbps=kbps)


@needs_ffmpeg
def test_aac_rate_adts_lacks_is_invalid_input():
    with pytest.raises(InputError, match=r"aac supports sample rates 7350, .*96000 Hz, not 20000"):
        encode(_signal(20000, 0.1), 20000, "aac")


@needs_ffmpeg
def test_aac_at_8khz_fits_the_bitrate_aac_allows():
    data = encode(_signal(8000), 8000, "aac")
    assert _adts_header(data) == (8000, 1)
    # 1 s of audio (9 frames with the priming one) at no more than 6 bits a sample, plus ADTS headers.
    assert len(data) * 8 <= 9 * 1024 * 6 + 9 * 7 * 8


def test_mp3_bitrate_for_another_format_is_invalid_input():
    with pytest.raises(InputError, match="only to mp3"):
        encode(_signal(24000, 0.1), 24000, "opus", mp3_bitrate_kbps=64)


@pytest.mark.parametrize("rate", [0, -24000, 24000.0, True])
def test_bad_sample_rate_is_invalid_input(rate):
    with pytest.raises(InputError):
        encode(_signal(24000, 0.1), rate, "wav")


def test_aac_without_ffmpeg_is_invalid_input(monkeypatch):
    monkeypatch.setattr(encoders.shutil, "which", lambda name: None)
    assert "aac" not in available_formats()
    with pytest.raises(InputError) as err:
        encode(_signal(24000, 0.1), 24000, "aac")
    assert err.value.code == "invalid_input"
    assert err.value.message == "aac needs ffmpeg, which this worker image lacks; use mp3/opus/flac/wav"


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
def test_mp3_opus_without_libsndfile_support_is_invalid_input(monkeypatch, fmt):
    monkeypatch.setattr(encoders, "_sndfile_support", lambda: frozenset())
    assert fmt not in available_formats()
    with pytest.raises(InputError, match=f"^{fmt} needs libsndfile with {fmt} support"):
        encode(_signal(24000, 0.1), 24000, fmt)


def test_empty_and_stereo_input_are_caller_bugs():
    with pytest.raises(ValueError, match="no samples"):
        encode(np.zeros(0), 24000, "flac")
    with pytest.raises(ValueError, match="mono"):
        encode(np.zeros((100, 2)), 24000, "wav")


@pytest.mark.parametrize(
    ("fmt", "rate", "fragment"),
    [
        pytest.param("ogg", 24000, "unknown output format 'ogg'", id="unknown-format"),
        pytest.param("mp3", 44000, "mp3 supports sample rates", id="mp3-odd-rate"),
        pytest.param("aac", 12345, "aac supports sample rates", id="aac-odd-rate"),
    ],
)
def test_check_encodable_rejects_before_any_audio_exists(fmt, rate, fragment):
    with pytest.raises(InputError, match=fragment):
        check_encodable(fmt, rate)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm"])
def test_check_encodable_accepts_every_format_at_24k(fmt):
    check_encodable(fmt, 24000)


# -- determinism ---------------------------------------------------------------------------------------------------
def _naive_ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


@pytest.mark.parametrize("size", [0, 1, 27, 4096], ids=lambda n: f"{n}-bytes")
def test_the_ogg_checksum_is_the_specs(size):
    page = bytes((i * 37 + 11) % 256 for i in range(size))
    assert encoders.ogg_crc(page) == _naive_ogg_crc(page)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_equal_bytes_twice(fmt):
    rate = 8000 if fmt in encoders.G711_FORMATS else 24000
    x = _signal(rate)
    assert encode(x, rate, fmt) == encode(x, rate, fmt)


@needs_ffmpeg
def test_opus_with_its_serial_set_decodes_cleanly_and_other_audio_gets_another_serial():
    x = _signal(24000)
    data = encode(x, 24000, "opus")
    check = subprocess.run(
        ["ffmpeg", "-v", "warning", "-i", "pipe:0", "-f", "null", "-"], input=data, capture_output=True, check=True
    )
    assert check.stderr == b""  # no "CRC mismatch!"
    other = encode(x * 0.5, 24000, "opus")
    assert data[14:18] != other[14:18]  # the pages' serial number


@pytest.mark.parametrize("fmt", encoders.STREAM_FORMATS)
def test_every_stream_format_gives_equal_bytes_twice(fmt):
    rate = 8000 if fmt in encoders.G711_FORMATS else 24000
    x = _signal(rate)

    def stream() -> bytes:
        encoder = encoders.StreamEncoder(fmt, rate)
        return encoder.push(x[: rate // 2]) + encoder.push(x[rate // 2 :]) + encoder.finish()

    assert stream() == stream()
