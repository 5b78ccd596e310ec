"""Reference audio intake for voice cloning: what a caller sends becomes checked mono float32 at the model's rate.

Owns every step between the caller's string and the samples a clone prompt is built from:
- the three forms of `ref_audio`: plain base64, a `data:...;base64,` URI, an http(s) URL;
- the URL policy: the host is resolved once, every address it resolves to is checked, and the connection goes
  to a checked address (no second lookup an attacker's DNS can answer differently); loopback, private,
  link-local, multicast, unspecified and reserved addresses (IPv4-mapped forms too) are refused unless
  `allow_private`; redirects are followed by hand, each hop checked again, at most `max_redirects`; connect
  and read timeouts plus a total deadline; a byte cap while streaming; the response always closed;
- decoding (libsndfile: wav/flac/ogg/mp3; else ffmpeg when present), mono, resampling, edge-silence trimming and
  the length rules (1-60 s; 20-60 s is cut to 15-20 s at a pause, with a warning).

Every refusal is an `InputError` saying what was wrong; a URL is echoed without its query string or userinfo.
The resolver and the socket opener are injectable so tests can make a "public" name land on a loopback server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import io
import ipaddress
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import numpy as np
import soundfile as sf

from audio.errors import InputError, quoted
from audio.output import joiner, postprocess

MIN_REFERENCE_S = 1.0
MAX_REFERENCE_S = 60.0
# Longer references are cut: qwen_tts conditions every chunk on the whole reference (ICL decodes it too).
CUT_ABOVE_S = 20.0
CUT_WINDOW_S = (15.0, 20.0)
MAX_REFERENCE_BYTES = 25_000_000
# Trailing silence stops the reference's last phoneme bleeding into the first generated one.
TAIL_SILENCE_S = 0.5
SILENT_PEAK_DBFS = -60.0
TRIM_FLOOR_DBFS = -50.0
TRIM_BELOW_PEAK_DB = 40.0
TRIM_PAD_MS = 100.0
_FFMPEG_TIMEOUT_S = 60
_REDIRECTS = (301, 302, 303, 307, 308)
_READ_SIZE = 65536

Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> the addresses it resolves to
Connector = Callable[[str, int, float], socket.socket]  # (checked address, port, timeout) -> connected socket


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def tcp_connect(address: str, port: int, timeout_s: float) -> socket.socket:
    return socket.create_connection((address, port), timeout=timeout_s)


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False  # QWEN_TTS_ALLOW_PRIVATE_URLS
    max_bytes: int = MAX_REFERENCE_BYTES
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    deadline_s: float = 30.0
    max_redirects: int = 3
    resolver: Resolver = system_resolver
    connector: Connector = tcp_connect
    ssl_context: ssl.SSLContext | None = None  # None: the system trust store, hostname checked


@dataclass(frozen=True)
class Reference:
    samples: np.ndarray  # float32 mono at sample_rate, edge silence trimmed, TAIL_SILENCE_S appended
    sample_rate: int
    key: str  # sha256 of the decoded samples and rate: the same audio reuses one clone prompt, however sent
    source_duration_s: float  # after trimming, before any cut
    warnings: tuple[str, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


# -- URLs ----------------------------------------------------------------------------------------------------
def redact(url: str) -> str:
    """The URL as safe to echo: scheme, host, port and path; no userinfo, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(malformed URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def address_refusal(address: str) -> str | None:
    """Why an address may not be fetched from by default, or None for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        reason = address_refusal(str(ip.ipv4_mapped))
        return f"IPv4-mapped {reason}" if reason else None
    for reason, flag in (
        ("unspecified address", ip.is_unspecified),
        ("loopback address", ip.is_loopback),
        ("link-local address", ip.is_link_local),
        ("multicast address", ip.is_multicast),
        ("private address", ip.is_private),
        ("reserved address", ip.is_reserved),
    ):
        if flag:
            return reason
    return None if ip.is_global else "non-public address"


def _literal_addresses(host: str) -> list[str] | None:
    """A host that is an IP address in any form getaddrinfo would accept (`0x7f000001`, `127.1`) is that
    address: decided here, so such forms never depend on the resolver."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host.lower()):
        try:
            return [socket.inet_ntoa(socket.inet_aton(host))]
        except OSError:
            pass
    return None


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]


def _check_url(url: str, policy: FetchPolicy) -> _Target:
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InputError(f"ref_audio URL {shown} is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"ref_audio URL scheme {quoted(scheme)} is not allowed: use http or https")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InputError(f"ref_audio URL {shown} has no host")
    if parts.username is not None or parts.password is not None:
        raise InputError(f"ref_audio URL {shown} carries credentials; those are not sent")
    port = port or (443 if scheme == "https" else 80)
    addresses = _literal_addresses(host)
    if addresses is None:
        try:
            addresses = list(policy.resolver(host, port))
        except (OSError, UnicodeError):
            raise InputError(f"ref_audio URL {shown}: host {host} could not be resolved") from None
        if not addresses:
            raise InputError(f"ref_audio URL {shown}: host {host} could not be resolved")
    if not policy.allow_private:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise InputError(
                    f"ref_audio URL {shown} refused: {host} resolves to {address} ({reason}); only public "
                    "addresses are fetched (an operator can allow others with QWEN_TTS_ALLOW_PRIVATE_URLS=true)"
                )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme, host, port, path, tuple(addresses))


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def _get_once(target: _Target, policy: FetchPolicy, deadline: float, shown: str) -> tuple[int, str | None, bytes]:
    """One GET to a checked address: (status, Location, body). The body is read only for a 200."""
    sock = None
    failure: Exception | None = None
    for address in target.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            sock = policy.connector(address, target.port, min(policy.connect_timeout_s, remaining))
            break
        except OSError as exc:
            failure = exc
    if sock is None:
        if time.monotonic() >= deadline:
            raise InputError(f"ref_audio URL {shown} did not answer within {policy.deadline_s:g} s")
        name = type(failure).__name__ if failure else "no address"
        raise InputError(f"ref_audio URL {shown} could not be reached ({name})")
    # The total deadline: a server that trickles bytes keeps each read under the read timeout, so a timer
    # shuts the socket when the deadline passes, whatever read is blocked.
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shutdown, (sock,))
    watchdog.daemon = True
    watchdog.start()
    conn = http.client.HTTPConnection(target.host, target.port, timeout=policy.read_timeout_s)
    response = None
    try:
        if target.scheme == "https":
            context = policy.ssl_context or ssl.create_default_context()
            sock.settimeout(min(policy.connect_timeout_s, max(0.001, deadline - time.monotonic())))
            sock = context.wrap_socket(sock, server_hostname=target.host)  # SNI and certificate for the name
        sock.settimeout(policy.read_timeout_s)
        conn.sock = sock  # http.client sends Host: <the URL's host>, and never connects itself
        conn.request(
            "GET",
            target.path,
            headers={"Accept": "audio/*, */*;q=0.5", "Accept-Encoding": "identity", "User-Agent": "qwen3-tts-worker"},
        )
        response = conn.getresponse()
        if response.status in _REDIRECTS:
            return response.status, response.getheader("Location"), b""
        if response.status != 200:
            return response.status, None, b""
        length = response.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > policy.max_bytes:
            raise InputError(f"ref_audio at {shown} is larger than {policy.max_bytes // 1_000_000} MB")
        body = bytearray()
        while True:
            piece = response.read1(_READ_SIZE)
            if not piece:
                break
            body += piece
            if len(body) > policy.max_bytes:
                raise InputError(f"ref_audio at {shown} is larger than {policy.max_bytes // 1_000_000} MB")
            if time.monotonic() >= deadline:
                raise InputError(f"ref_audio URL {shown} did not finish within {policy.deadline_s:g} s")
        if time.monotonic() >= deadline:
            raise InputError(f"ref_audio URL {shown} did not finish within {policy.deadline_s:g} s")
        return 200, None, bytes(body)
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline:
            raise InputError(f"ref_audio URL {shown} did not finish within {policy.deadline_s:g} s") from None
        raise InputError(f"ref_audio URL {shown} could not be fetched ({type(exc).__name__})") from None
    finally:
        watchdog.cancel()
        if response is not None:
            response.close()
        conn.close()
        sock.close()


def fetch(url: str, policy: FetchPolicy) -> bytes:
    """The body of an http(s) URL under the policy, redirects followed by hand."""
    deadline = time.monotonic() + policy.deadline_s
    first = redact(url)
    for _ in range(policy.max_redirects + 1):
        target = _check_url(url, policy)
        status, location, body = _get_once(target, policy, deadline, redact(url))
        if status == 200:
            return body
        if status in _REDIRECTS and location:
            url = urljoin(url, location.strip())
            continue
        raise InputError(f"ref_audio URL {redact(url)} answered HTTP {status}")
    raise InputError(f"ref_audio URL {first} redirected more than {policy.max_redirects} times")


# -- bytes -----------------------------------------------------------------------------------------------------
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _b64decode(text: str, max_bytes: int, what: str) -> bytes:
    text = "".join(text.split())
    if len(text) // 4 * 3 > max_bytes:  # checked before decoding: no copy of an oversized payload is made
        raise InputError(f"{what} is larger than {max_bytes // 1_000_000} MB")
    if "-" in text or "_" in text:  # the URL-safe alphabet
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is neither valid base64, a data: URI, nor an http(s) URL") from None


def reference_bytes(value: str, policy: FetchPolicy) -> bytes:
    """The audio file's bytes, from whichever of the three forms `value` is."""
    value = value.strip()
    if _URL_LIKE.match(value):  # base64 has no ':', so this can't be a base64 payload
        return fetch(value, policy)
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if ";base64" not in header.lower():
            raise InputError("ref_audio data: URI must be base64-encoded (data:audio/wav;base64,...)")
        return _b64decode(payload, policy.max_bytes, "ref_audio")
    return _b64decode(value, policy.max_bytes, "ref_audio")


# -- audio -----------------------------------------------------------------------------------------------------
def _too_long(duration_s: float) -> InputError:
    return InputError(
        f"ref_audio is {duration_s:.1f} s long; use {MIN_REFERENCE_S:.0f}-{MAX_REFERENCE_S:.0f} s "
        "(3-15 s of clean speech works best)"
    )


def _ffmpeg_decode(data: bytes, sample_rate: int) -> np.ndarray | None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    command = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
        # Only the pipe: a playlist or concat file in the input must not make ffmpeg open files or URLs.
        "-protocol_whitelist", "pipe", "-i", "pipe:0",
        "-map", "0:a:0", "-t", f"{MAX_REFERENCE_S + 1:g}", "-ac", "1", "-ar", str(sample_rate),
        "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0 or not done.stdout:
        return None
    return np.frombuffer(done.stdout, dtype="<f4").astype(np.float32)


def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """An audio file's bytes as mono float32 at `sample_rate` (libsndfile first, then ffmpeg)."""
    if not data:
        raise InputError("ref_audio is empty")
    try:
        info = sf.info(io.BytesIO(data))
        if info.frames > 0 and info.samplerate > 0 and info.frames / info.samplerate > MAX_REFERENCE_S + 1:
            raise _too_long(info.frames / info.samplerate)  # before decoding minutes of audio
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        mono = _ffmpeg_decode(data, sample_rate)
        if mono is None:
            raise InputError(
                "ref_audio could not be decoded (not audio, or a truncated file): send WAV, FLAC, OGG or MP3"
            ) from None
        return mono
    if len(samples) == 0:
        raise InputError("ref_audio holds no audio samples (an empty or truncated file)")
    mono = samples.mean(axis=1, dtype=np.float32)
    return postprocess.resample(mono, int(rate), sample_rate)


def _pause_cut(samples: np.ndarray, sample_rate: int) -> int:
    """Where to cut a long reference: the quietest 200 ms inside the 15-20 s window (a pause between words)."""
    frame = max(1, sample_rate // 100)  # 10 ms
    lo, hi = (int(s * sample_rate) // frame for s in CUT_WINDOW_S)
    n = min(hi, len(samples) // frame)
    energy = (samples[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    width = 20
    smoothed = np.convolve(energy, np.ones(width) / width, mode="same")
    best = lo + int(np.argmin(smoothed[lo:n]))
    return best * frame


def prepare(mono: np.ndarray, sample_rate: int) -> Reference:
    """Checked, trimmed and (if long) cut reference samples at `sample_rate`."""
    mono = np.asarray(mono, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise InputError("ref_audio is corrupt (non-finite samples)")
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if peak <= 10.0 ** (SILENT_PEAK_DBFS / 20.0):
        raise InputError("ref_audio is silent")
    threshold_db = max(TRIM_FLOOR_DBFS, 20.0 * np.log10(peak) - TRIM_BELOW_PEAK_DB)
    trimmed = joiner.trim_edges(mono, sample_rate, threshold_db=threshold_db, pad_ms=TRIM_PAD_MS)
    duration_s = len(trimmed) / sample_rate
    if duration_s < MIN_REFERENCE_S:
        raise InputError(
            f"ref_audio is {duration_s:.1f} s long (after trimming silence); use "
            f"{MIN_REFERENCE_S:.0f}-{MAX_REFERENCE_S:.0f} s (3-15 s of clean speech works best)"
        )
    if duration_s > MAX_REFERENCE_S:
        raise _too_long(duration_s)
    warnings: list[str] = []
    if duration_s > CUT_ABOVE_S:
        cut = _pause_cut(trimmed, sample_rate)
        trimmed = joiner.trim_edges(trimmed[:cut], sample_rate, threshold_db=threshold_db, pad_ms=TRIM_PAD_MS)
        warnings.append(
            f"ref_audio is {duration_s:.1f} s long; its first {len(trimmed) / sample_rate:.1f} s were used, cut at "
            "a pause (every chunk is conditioned on the whole reference; 3-15 s works best). ref_text should be "
            "the transcript of that part only (or use x_vector_only)"
        )
    return _padded(trimmed, sample_rate, duration_s, warnings)


def _padded(trimmed: np.ndarray, sample_rate: int, duration_s: float, warnings: list[str]) -> Reference:
    padded = np.concatenate([trimmed, np.zeros(int(TAIL_SILENCE_S * sample_rate), dtype=np.float32)])
    digest = hashlib.sha256(padded.tobytes())
    digest.update(str(sample_rate).encode())
    return Reference(
        samples=padded,
        sample_rate=sample_rate,
        key=digest.hexdigest(),
        source_duration_s=duration_s,
        warnings=tuple(warnings),
    )


def from_generated(samples: np.ndarray, sample_rate: int) -> Reference:
    """A clone reference made of the worker's own speech (a designed voice's first chunk, which passed the
    chunk checks): trimmed and padded like any reference, but never cut, since its transcript is the whole
    chunk, and a short one is kept with a warning rather than refused."""
    mono = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    threshold_db = max(TRIM_FLOOR_DBFS, 20.0 * np.log10(max(peak, 1e-12)) - TRIM_BELOW_PEAK_DB)
    trimmed = joiner.trim_edges(mono, sample_rate, threshold_db=threshold_db, pad_ms=TRIM_PAD_MS)
    duration_s = len(trimmed) / sample_rate
    warnings = []
    if duration_s < MIN_REFERENCE_S:
        warnings.append(
            f"the designed voice's first chunk is {duration_s:.1f} s long: as the clone reference for the rest it "
            f"holds the voice less well than {MIN_REFERENCE_S:.0f} s or more would (start with a longer sentence)"
        )
    return _padded(trimmed, sample_rate, duration_s, warnings)


def decode_reference(value: str, sample_rate: int, policy: FetchPolicy | None = None) -> Reference:
    """`ref_audio` as sent (base64, data: URI or URL) → a checked reference at the model's `sample_rate`."""
    policy = policy or FetchPolicy()
    return prepare(decode_audio(reference_bytes(value, policy), sample_rate), sample_rate)
