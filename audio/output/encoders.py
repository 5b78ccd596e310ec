"""Turning mono float samples into the bytes of one output format (wav, mp3, flac, opus, aac, pcm, ulaw, alaw).

Owns the format list, their content types, the float -> int16 conversion and which formats this machine
can encode. wav, flac, mp3 and opus are written in process by libsndfile (through soundfile); only aac
needs the ffmpeg binary, so a worker image without ffmpeg still serves every other format. ulaw/alaw are
G.711 (8 kHz, one byte a sample, raw; a WAV header on request), computed here bit-exactly as ITU-T G.711 /
Python's audioop do. `StreamEncoder` encodes audio that arrives in pieces (streaming): pcm, wav (a header with
0xFFFFFFFF sizes), ulaw/alaw in process; mp3, opus and aac through one ffmpeg process per stream.
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import struct
import subprocess
import threading
import zlib

import numpy as np
import soundfile as sf

from audio.errors import InputError, quoted
from audio.output.postprocess import resample

FORMATS = ("wav", "mp3", "flac", "opus", "aac", "pcm", "ulaw", "alaw")
G711_FORMATS = ("ulaw", "alaw")
# Uncompressed formats: their size follows from their length (headers aside).
PCM_BYTES_PER_SAMPLE = {"wav": 2, "pcm": 2, "ulaw": 1, "alaw": 1}
G711_SAMPLE_RATE = 8000  # G.711 is defined at 8 kHz; other rates are refused, not silently resampled
STREAM_FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "ulaw", "alaw")  # what StreamEncoder can cut (not flac)

CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",  # Ogg-encapsulated Opus (RFC 7845), what browsers and players expect
    "aac": "audio/aac",  # ADTS stream
    # Not audio/L16: RFC 2586 defines L16 as big-endian and requires rate/channels parameters, while these
    # bytes are headerless little-endian s16 mono at the requested rate, which the caller already knows.
    "pcm": "application/octet-stream",
    "ulaw": "audio/basic",  # RFC 2046: 8 kHz mono mu-law
    "alaw": "audio/x-alaw-basic",
}
WAV_CONTENT_TYPE = "audio/wav"  # ulaw/alaw with a WAV header

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
    have = {"wav", "flac", "pcm", *G711_FORMATS} | {f for f in ("mp3", "opus") if f in sndfile}
    if _ffmpeg() is not None:
        have.add("aac")
    return [f for f in FORMATS if f in have]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {quoted(fmt)}; expected one of {', '.join(FORMATS)}")


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
    if fmt in G711_FORMATS and sample_rate != G711_SAMPLE_RATE:
        raise InputError(f"{fmt} (G.711) is 8000 Hz audio; leave sample_rate out or set it to 8000, not {sample_rate}")
    if fmt == "mp3" and sample_rate not in MP3_SAMPLE_RATES:
        raise InputError(f"mp3 supports sample rates {', '.join(map(str, MP3_SAMPLE_RATES))} Hz, not {sample_rate}")
    if fmt == "aac" and sample_rate not in AAC_SAMPLE_RATES:
        raise InputError(f"aac supports sample rates {', '.join(map(str, AAC_SAMPLE_RATES))} Hz, not {sample_rate}")


def encoded_rate(fmt: str, sample_rate: int) -> int:
    """The rate the encoded stream will declare: the requested one, except opus (see _encode_opus)."""
    if fmt == "opus" and sample_rate not in OPUS_SAMPLE_RATES:
        return next((r for r in OPUS_SAMPLE_RATES if r >= sample_rate), OPUS_SAMPLE_RATES[-1])
    return sample_rate


def default_rate(fmt: str, model_rate: int) -> int:
    """The output rate when a job names none: the model's, except G.711's fixed 8 kHz."""
    return G711_SAMPLE_RATE if fmt in G711_FORMATS else model_rate


def encode(
    samples: np.ndarray,
    sample_rate: int,
    fmt: str,
    *,
    mp3_bitrate_kbps: int | None = None,
    wav_header: bool = False,
) -> bytes:
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

    if wav_header and fmt not in G711_FORMATS:
        raise InputError(f"wav_header applies only to {' and '.join(G711_FORMATS)}, not {fmt}")
    if fmt == "pcm":
        return to_int16(samples).astype("<i2").tobytes()
    if fmt in G711_FORMATS:
        data = g711(samples, fmt)
        return wav_header_bytes(sample_rate, fmt, len(data)) + data if wav_header else data
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
    if fmt in G711_FORMATS and data[:4] != b"RIFF":
        return g711_decode(data, fmt).astype(np.float32) / 32768.0, G711_SAMPLE_RATE
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
    x = np.concatenate([x, np.zeros(pad, dtype=x.dtype)]).astype(np.float32)
    # Gotcha: libsndfile gives each Ogg stream a random serial number, so the same audio encoded twice differed.
    # The serial is set from the audio instead: equal input, equal bytes (streams of other audio still differ).
    return ogg_with_serial(_sndfile_write(x, sample_rate, "OGG", "OPUS"), zlib.crc32(x.tobytes()))


_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(page: bytes) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, init 0, no final xor), computed by zlib:
    the same polynomial reflected, over the bit-reversed bytes; zlib's init and final xor cancel against the CRC
    of as many zero bytes."""
    reflected = zlib.crc32(page.translate(_BIT_REVERSED)) ^ zlib.crc32(bytes(len(page)))
    return int(f"{reflected:032b}"[::-1], 2)


def ogg_with_serial(data: bytes, serial: int) -> bytes:
    """An Ogg stream of one logical stream with its serial number set on every page (checksums recomputed)."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        segments = out[pos + 26]
        end = pos + 27 + segments + sum(out[pos + 27 : pos + 27 + segments])
        out[pos + 14 : pos + 18] = struct.pack("<I", serial & 0xFFFFFFFF)
        out[pos + 22 : pos + 26] = bytes(4)
        out[pos + 22 : pos + 26] = struct.pack("<I", ogg_crc(bytes(out[pos:end])))
        pos = end
    return bytes(out)


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


# -- G.711 ---------------------------------------------------------------------------------------------------------
# The segment end points of ITU-T G.711 (Sun's g711.c, which CPython's audioop uses): mu-law on 14-bit magnitudes
# with a bias of 33, A-law on 13-bit magnitudes.
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_WAVE_FORMAT = {"ulaw": 7, "alaw": 6}  # WAVE_FORMAT_MULAW, WAVE_FORMAT_ALAW
_WAV_UNKNOWN_SIZE = 0xFFFFFFFF


def g711(samples: np.ndarray, fmt: str) -> bytes:
    """Float samples to G.711 bytes (`ulaw` or `alaw`), through int16 as `to_int16` rounds them."""
    pcm = to_int16(np.asarray(samples)).astype(np.int32)
    if fmt == "ulaw":
        val = pcm >> 2
        mask = np.where(val < 0, 0x7F, 0xFF)
        mag = np.minimum(np.abs(val), 8159) + 0x21
        seg = np.searchsorted(_ULAW_SEG_END, mag)
        code = (seg << 4) | ((mag >> (seg + 1)) & 0xF)
    elif fmt == "alaw":
        val = pcm >> 3
        mask = np.where(val >= 0, 0xD5, 0x55)
        mag = np.where(val >= 0, val, -val - 1)
        seg = np.searchsorted(_ALAW_SEG_END, mag)
        code = (seg << 4) | ((mag >> np.maximum(seg, 1)) & 0xF)
    else:
        raise ValueError(f"not a G.711 format: {fmt!r}")
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8).tobytes()


def g711_decode(data: bytes, fmt: str) -> np.ndarray:
    """G.711 bytes back to int16 samples (as audioop's ulaw2lin / alaw2lin)."""
    u = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
    if fmt == "ulaw":
        u = ~u & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)
    a = u ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def wav_header_bytes(sample_rate: int, fmt: str, data_bytes: int | None) -> bytes:
    """A RIFF/WAVE header for mono `pcm` (s16) or G.711 data; `data_bytes` None (a stream of unknown length)
    writes 0xFFFFFFFF sizes, which libsndfile, ffmpeg and browsers read as "to the end"."""
    if fmt in G711_FORMATS:
        tag, bits = _WAVE_FORMAT[fmt], 8
        fmt_chunk = struct.pack("<HHIIHHH", tag, 1, sample_rate, sample_rate, 1, bits, 0)
        # Non-PCM WAVE files carry a fact chunk with the sample count (one byte a sample here).
        fact = b"fact" + struct.pack("<II", 4, _WAV_UNKNOWN_SIZE if data_bytes is None else data_bytes)
    else:
        fmt_chunk = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
        fact = b""
    head = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + fact
    if data_bytes is None:
        riff, data = _WAV_UNKNOWN_SIZE, _WAV_UNKNOWN_SIZE
    else:
        riff, data = len(head) + 8 + data_bytes, data_bytes
    return b"RIFF" + struct.pack("<I", riff) + head + b"data" + struct.pack("<I", data)


# -- streaming -----------------------------------------------------------------------------------------------------
_FFMPEG_STREAM_ARGS = {
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    # bitexact: ffmpeg's Ogg muxer otherwise draws a random serial number, and the same job's bytes would differ
    "opus": ["-c:a", "libopus", "-fflags", "+bitexact", "-f", "ogg"],
    "aac": ["-c:a", "aac", "-f", "adts"],
}


def check_streamable(fmt: str, sample_rate: int) -> None:
    """Raise the InputError a StreamEncoder for fmt at sample_rate would meet."""
    if fmt not in STREAM_FORMATS:
        raise InputError(f"{fmt} can't be streamed; stream one of {', '.join(STREAM_FORMATS)}")
    check_encodable(fmt, sample_rate)
    if fmt in _FFMPEG_STREAM_ARGS and _ffmpeg() is None:
        raise InputError(f"streaming {fmt} needs ffmpeg, which this worker image lacks; stream pcm, wav or G.711")


class StreamEncoder:
    """One output stream's encoder: `push(samples)` returns the bytes ready so far (possibly none), `finish()`
    the rest; together they are one valid file of `fmt`. wav starts with a header of unknown (0xFFFFFFFF)
    sizes and, like ulaw/alaw with `wav_header`, carries the samples as they come; mp3, opus and aac are one
    ffmpeg process fed s16 over a pipe, its output drained by a thread."""

    def __init__(self, fmt: str, sample_rate: int, *, wav_header: bool = False):
        check_streamable(fmt, sample_rate)
        self.fmt = fmt
        self.sample_rate = sample_rate
        self._head = b""
        if fmt == "wav" or (wav_header and fmt in G711_FORMATS):
            self._head = wav_header_bytes(sample_rate, "pcm" if fmt == "wav" else fmt, None)
        self._proc: subprocess.Popen | None = None
        if fmt in _FFMPEG_STREAM_ARGS:
            rate = encoded_rate(fmt, sample_rate)
            kbps = default_mp3_bitrate(rate) if fmt == "mp3" else min(64, 6 * rate // 1000)
            cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin"]
            cmd += ["-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0", "-ar", str(rate)]
            cmd += [*_FFMPEG_STREAM_ARGS[fmt], "-b:a", f"{kbps}k", "-flush_packets", "1", "pipe:1"]
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._out = bytearray()
            self._lock = threading.Lock()
            self._reader = threading.Thread(target=self._drain, daemon=True)
            self._reader.start()

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while block := self._proc.stdout.read1(65536):
            with self._lock:
                self._out += block

    def _take(self) -> bytes:
        with self._lock:
            out = bytes(self._out)
            self._out.clear()
        return out

    def push(self, samples: np.ndarray) -> bytes:
        head, self._head = self._head, b""
        if len(samples) == 0:
            return head
        if self.fmt in G711_FORMATS:
            return head + g711(samples, self.fmt)
        pcm = to_int16(samples).astype("<i2").tobytes()
        if self._proc is None:
            return head + pcm
        self._proc.stdin.write(pcm)
        self._proc.stdin.flush()
        return self._take()

    def drain(self) -> bytes:
        """What an ffmpeg encoder has output since the last call, without new input (b"" for the others)."""
        return self._take() if self._proc is not None else b""

    def finish(self) -> bytes:
        head, self._head = self._head, b""
        if self._proc is None:
            return head
        self._proc.stdin.close()
        self._reader.join(timeout=_FFMPEG_TIMEOUT_S)
        err = self._proc.stderr.read().decode(errors="replace").strip()[-500:]
        if self._proc.wait(timeout=_FFMPEG_TIMEOUT_S) != 0:
            raise RuntimeError(f"ffmpeg {self.fmt} stream encoding failed (exit {self._proc.returncode}): {err}")
        return self._take()

    def close(self) -> None:
        """Stop the encoder without output (a cancelled stream)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
