"""Reference audio for voice cloning: decode what the caller sent into mono float samples we control.

Accepts base64, a `data:audio/...;base64,` URI, or an http(s) URL. Decoding is ours (libsndfile), so the
model gets `(samples, sample_rate)` and never fetches or guesses at strings itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from audio.errors import InputError

MIN_REFERENCE_S = 1.0
MAX_REFERENCE_S = 60.0
MAX_REFERENCE_BYTES = 25_000_000
URL_TIMEOUT_S = 20.0
# Trailing silence stops the reference's last phoneme bleeding into the first generated one.
TAIL_SILENCE_S = 0.5


@dataclass(frozen=True)
class Reference:
    samples: np.ndarray  # float32 mono
    sample_rate: int
    key: str  # sha256 of the sent bytes: the same reference reuses one clone prompt

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def _fetch(url: str) -> bytes:
    import requests

    try:
        response = requests.get(url, timeout=URL_TIMEOUT_S, stream=True)
        response.raise_for_status()
        data = response.raw.read(MAX_REFERENCE_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise InputError(f"ref_audio URL could not be fetched ({type(exc).__name__})") from None
    return data


def _bytes_of(value: str) -> bytes:
    value = value.strip()
    if value.startswith(("http://", "https://")):
        return _fetch(value)
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise InputError("ref_audio data: URI must be base64-encoded (data:audio/wav;base64,...)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("ref_audio is neither valid base64, a data: URI, nor an http(s) URL") from None


def decode_reference(value: str) -> Reference:
    data = _bytes_of(value)
    if len(data) > MAX_REFERENCE_BYTES:  # a URL's body is read only this far (plus one byte)
        raise InputError(f"ref_audio is larger than {MAX_REFERENCE_BYTES // 1_000_000} MB")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        raise InputError("ref_audio could not be decoded: send WAV, FLAC, OGG or MP3 audio") from None
    mono = samples.mean(axis=1).astype(np.float32)
    duration_s = len(mono) / rate
    if duration_s < MIN_REFERENCE_S or duration_s > MAX_REFERENCE_S:
        raise InputError(
            f"ref_audio is {duration_s:.1f} s long; use {MIN_REFERENCE_S:.0f}-{MAX_REFERENCE_S:.0f} s "
            "(3-15 s of clean speech works best)"
        )
    if not np.isfinite(mono).all() or float(np.max(np.abs(mono))) < 1e-4:
        raise InputError("ref_audio is silent or corrupt")
    padded = np.concatenate([mono, np.zeros(int(TAIL_SILENCE_S * rate), dtype=np.float32)])
    return Reference(samples=padded, sample_rate=int(rate), key=hashlib.sha256(data).hexdigest())
