"""Reference intake: every form of ref_audio, the decoding and length rules, and the URL policy.

Network rule: every request goes to a loopback server this file starts. A refused address is shown refused by
the server having received nothing; "public" names reach the loopback server only through an injected
resolver (name -> a public-looking address, checked by the real policy) and connector (dials loopback).
"""

from __future__ import annotations

import base64
import http.server
import io
import socket
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import soundfile as sf

from audio.errors import InputError
from audio.output import encoders, postprocess
from audio.voices.reference import (
    FetchPolicy,
    Reference,
    address_refusal,
    decode_reference,
    prepare,
    redact,
)

RATE = 24000
PUBLIC_IP = "203.0.114.7"  # never dialled: the injected connector dials the loopback server instead


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def speech_samples(speech_wav: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(speech_wav), dtype="float32")
    return samples, rate


def expected_length(reference: Reference) -> int:
    return len(reference.samples)


# -- a loopback HTTP server ----------------------------------------------------------------------------------
@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    trickle_s: float | None = None  # send the body one byte per interval


class Server:
    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Host", "")))
                route = server.routes.get(self.path.split("?")[0], Route(status=404))
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in route.headers and route.headers.get("Connection") != "close":
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.trickle_s is None:
                    self.wfile.write(route.body)
                    return
                stop = time.monotonic() + 10  # bounded: the client is meant to give up long before
                for byte in route.body:
                    if time.monotonic() > stop:
                        break
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(route.trickle_s)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class HTTPServer(http.server.ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = HTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def server6():
    try:
        s = Server("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    yield s
    s.close()


class FakeNet:
    """An injected resolver (names -> addresses, no DNS) and connector (every dial lands on the server)."""

    def __init__(self, server: Server, names: dict[str, list[str]]):
        self.server = server
        self.names = names
        self.lookups: list[str] = []
        self.dials: list[tuple[str, int]] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.names[host]

    def connect(self, address: str, port: int, timeout_s: float) -> socket.socket:
        self.dials.append((address, port))
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=timeout_s)

    def policy(self, **kw) -> FetchPolicy:
        return FetchPolicy(resolver=self.resolve, connector=self.connect, **kw)


# -- forms -----------------------------------------------------------------------------------------------------
def test_plain_base64_with_slashes_decodes_to_mono_at_the_model_rate(speech_wav):
    encoded = base64.b64encode(speech_wav).decode()
    assert "/" in encoded and "+" in encoded
    ref = decode_reference(encoded, RATE)
    samples, rate = speech_samples(speech_wav)
    assert ref.sample_rate == RATE and ref.samples.dtype == np.float32 and ref.samples.ndim == 1
    # espeak's clip, resampled, edge silence trimmed (at most its length), plus the 0.5 s tail of silence
    assert 2.0 < ref.source_duration_s <= len(samples) / rate + 0.01
    assert len(ref.samples) == round(ref.source_duration_s * RATE) + RATE // 2
    assert not ref.samples[-RATE // 2 :].any()
    assert ref.warnings == ()


def test_base64_with_line_breaks_and_the_url_safe_alphabet_are_the_same_reference(speech_wav):
    plain = base64.b64encode(speech_wav).decode()
    wrapped = "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76))
    urlsafe = base64.urlsafe_b64encode(speech_wav).decode().rstrip("=")
    keys = {decode_reference(v, RATE).key for v in (plain, wrapped, urlsafe)}
    assert len(keys) == 1


def test_data_uri_is_the_same_reference_as_plain_base64(speech_wav):
    encoded = base64.b64encode(speech_wav).decode()
    by_uri = decode_reference("data:audio/wav;base64," + encoded, RATE)
    assert by_uri.key == decode_reference(encoded, RATE).key
    with pytest.raises(InputError, match="must be base64-encoded"):
        decode_reference("data:audio/wav," + encoded, RATE)


def test_stereo_44k1_is_mixed_to_mono_and_resampled(speech_wav):
    mono, rate = speech_samples(speech_wav)
    hi = postprocess.resample(mono, rate, 44100)
    stereo = np.stack([hi, hi * 0.5], axis=1)
    ref = decode_reference(base64.b64encode(wav_bytes(stereo, 44100)).decode(), RATE)
    assert ref.sample_rate == RATE
    direct = decode_reference(base64.b64encode(speech_wav).decode(), RATE)
    assert abs(len(ref.samples) - len(direct.samples)) <= RATE // 100  # the same speech, within 10 ms
    assert np.max(np.abs(ref.samples)) == pytest.approx(0.75 * np.max(np.abs(direct.samples)), rel=0.1)


def test_mp3_decodes(speech_wav):
    mono, rate = speech_samples(speech_wav)
    mp3 = encoders.encode(postprocess.resample(mono, rate, 24000), 24000, "mp3")
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF
    ref = decode_reference(base64.b64encode(mp3).decode(), RATE)
    direct = decode_reference(base64.b64encode(speech_wav).decode(), RATE)
    assert abs(ref.source_duration_s - direct.source_duration_s) < 0.1


def test_flac_and_ogg_decode(speech_wav):
    mono, rate = speech_samples(speech_wav)
    for fmt in ("FLAC", "OGG"):
        buf = io.BytesIO()
        sf.write(buf, mono, rate, format=fmt)
        ref = decode_reference(base64.b64encode(buf.getvalue()).decode(), RATE)
        assert ref.sample_rate == RATE and ref.source_duration_s > 2.0, fmt


def test_a_20_to_60_s_reference_is_cut_at_a_pause_with_a_warning(speech_wav):
    mono, rate = speech_samples(speech_wav)
    mono = postprocess.resample(mono, rate, RATE)
    pause = np.zeros(int(0.6 * RATE), dtype=np.float32)
    long = np.concatenate([np.concatenate([mono, pause]) for _ in range(8)])  # ~40 s of speech with pauses
    ref = prepare(long, RATE)
    # cut inside the 15-20 s window, then the pause's silence trimmed back to 100 ms after the last word
    assert 14.0 <= ref.duration_s - 0.5 <= 20.0
    assert ref.source_duration_s > 30
    (warning,) = ref.warnings
    assert warning.startswith(f"ref_audio is {ref.source_duration_s:.1f} s long; its first")
    assert "cut at a pause" in warning and "ref_text should be the transcript of that part" in warning
    # it ends in (trimmed) silence of the pause, not mid-word: the last 50 ms before the tail are quiet
    body = ref.samples[: -RATE // 2]
    assert np.max(np.abs(body[-RATE // 20 :])) < 0.01


# -- refusals: audio -------------------------------------------------------------------------------------------
def tone(seconds: float, rate: int = 16000, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"this is not audio at all, just text" * 10, "could not be decoded (not audio", id="not-audio"),
        pytest.param(b"RIFF0000WAVEjunk", "could not be decoded", id="wav-magic-junk"),
        pytest.param(wav_bytes(tone(2.0), 16000)[:44], "holds no audio samples", id="truncated-wav-header-only"),
        pytest.param(wav_bytes(tone(0.3), 16000), "ref_audio is 0.3 s long (after trimming silence)", id="0.3s"),
        pytest.param(wav_bytes(tone(300.0, 8000), 8000), "ref_audio is 300.0 s long; use 1-60 s", id="5-minutes"),
        pytest.param(wav_bytes(np.zeros(32000, dtype=np.float32), 16000), "ref_audio is silent", id="silent"),
        pytest.param(b"", "neither valid base64", id="empty"),
    ],
)
def test_bad_audio_is_refused_saying_why(data, message):
    with pytest.raises(InputError, match=None) as info:
        decode_reference(base64.b64encode(data).decode() or "!", RATE)
    assert message in info.value.message
    assert info.value.code == "invalid_input"


def test_truncated_flac_is_refused(speech_wav):
    mono, rate = speech_samples(speech_wav)
    buf = io.BytesIO()
    sf.write(buf, mono, rate, format="FLAC")
    with pytest.raises(InputError, match="could not be decoded"):
        decode_reference(base64.b64encode(buf.getvalue()[:200]).decode(), RATE)


def test_oversized_base64_is_refused_before_decoding():
    policy = FetchPolicy(max_bytes=1000)
    # invalid base64 on purpose: the size check comes first, so it is the size that is reported
    with pytest.raises(InputError, match="ref_audio is larger than 0 MB"):
        decode_reference("!" * 2000, RATE, policy)
    with pytest.raises(InputError, match="larger than"):
        decode_reference("data:audio/wav;base64," + "A" * 2000, RATE, policy)


@pytest.mark.parametrize("value", ["ftp://example.com/a.wav", "file:///etc/passwd", "gopher://x/"])
def test_other_url_schemes_are_refused(value):
    with pytest.raises(InputError, match="is not allowed: use http or https"):
        decode_reference(value, RATE)


# -- URLs ------------------------------------------------------------------------------------------------------
def test_url_from_a_loopback_server_with_the_allow_flag(server, speech_wav):
    server.routes["/ref.wav"] = Route(body=speech_wav, headers={"Content-Type": "audio/wav"})
    url = f"http://127.0.0.1:{server.port}/ref.wav?sig=abc"
    ref = decode_reference(url, RATE, FetchPolicy(allow_private=True))
    assert ref.key == decode_reference(base64.b64encode(speech_wav).decode(), RATE).key
    assert server.requests == [("/ref.wav?sig=abc", f"127.0.0.1:{server.port}")]


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        pytest.param("127.0.0.1", "127.0.0.1 (loopback address)", id="127.0.0.1"),
        pytest.param("localhost", "(loopback address)", id="localhost"),
        pytest.param("[::ffff:127.0.0.1]", "::ffff:7f00:1 (IPv4-mapped loopback address)", id="ipv4-mapped"),
        pytest.param("0x7f000001", "127.0.0.1 (loopback address)", id="hex-integer"),
        pytest.param("2130706433", "127.0.0.1 (loopback address)", id="decimal-integer"),
        pytest.param("127.1", "127.0.0.1 (loopback address)", id="short-dotted"),
    ],
)
def test_loopback_urls_are_refused_and_nothing_is_sent(server, host, reason):
    server.routes["/ref.wav"] = Route(body=b"x")
    url = f"http://{host}:{server.port}/ref.wav?token=SECRET"
    with pytest.raises(InputError) as info:
        decode_reference(url, RATE, FetchPolicy())
    assert reason in info.value.message
    assert "QWEN_TTS_ALLOW_PRIVATE_URLS=true" in info.value.message
    assert "SECRET" not in info.value.message and "token" not in info.value.message
    assert server.requests == []


def test_ipv6_loopback_is_refused_and_nothing_is_sent(server6):
    server6.routes["/ref.wav"] = Route(body=b"x")
    with pytest.raises(InputError, match=r"resolves to ::1 \(loopback address\)"):
        decode_reference(f"http://[::1]:{server6.port}/ref.wav", RATE, FetchPolicy())
    assert server6.requests == []


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private address"),
        ("192.168.0.1", "private address"),
        ("172.16.0.1", "private address"),
        ("169.254.169.254", "link-local address"),
        ("fe80::1", "link-local address"),
        ("fd00::1", "private address"),
        ("224.0.0.1", "multicast address"),
        ("ff02::1", "multicast address"),
        ("0.0.0.0", "unspecified address"),
        ("::", "unspecified address"),
        ("::ffff:10.0.0.1", "IPv4-mapped private address"),
        ("::ffff:169.254.169.254", "IPv4-mapped link-local address"),
        ("100.64.0.1", "non-public address"),
        ("240.0.0.1", "private address"),  # Python files 240/4 under private
        ("2001:db8::1", "private address"),
    ],
)
def test_address_classes_are_refused_by_default(address, reason):
    # pure classification: no traffic
    assert address_refusal(address) == reason


def test_public_addresses_pass():
    assert address_refusal(PUBLIC_IP) is None
    assert address_refusal("2606:4700::1111") is None


def test_a_public_name_resolving_to_loopback_is_refused_without_a_dial(server):
    net = FakeNet(server, {"cdn.example.test": ["203.0.114.8", "127.0.0.1"]})  # one bad address is enough
    with pytest.raises(InputError, match=r"cdn.example.test resolves to 127.0.0.1 \(loopback address\)"):
        decode_reference(f"http://cdn.example.test:{server.port}/ref.wav", RATE, net.policy())
    assert net.dials == [] and server.requests == []


def test_a_public_name_is_resolved_once_and_the_checked_address_dialled_with_the_original_host(server, speech_wav):
    server.routes["/ref.wav"] = Route(body=speech_wav)
    net = FakeNet(server, {"voices.example.test": [PUBLIC_IP]})
    ref = decode_reference("http://voices.example.test/ref.wav", RATE, net.policy())
    assert ref.sample_rate == RATE
    assert net.lookups == ["voices.example.test"]
    assert net.dials == [(PUBLIC_IP, 80)]
    assert server.requests == [("/ref.wav", "voices.example.test")]


def test_redirects_are_followed_by_hand_and_each_hop_checked(server, speech_wav):
    server.routes["/a"] = Route(status=302, headers={"Location": "http://cdn.example.test/b"})
    server.routes["/b"] = Route(status=301, headers={"Location": "/ref.wav"})
    server.routes["/ref.wav"] = Route(body=speech_wav)
    net = FakeNet(server, {"voices.example.test": [PUBLIC_IP], "cdn.example.test": ["203.0.114.9"]})
    decode_reference("http://voices.example.test/a", RATE, net.policy())
    assert net.lookups == ["voices.example.test", "cdn.example.test", "cdn.example.test"]
    assert [p for p, _ in server.requests] == ["/a", "/b", "/ref.wav"]
    assert [h for _, h in server.requests] == ["voices.example.test", "cdn.example.test", "cdn.example.test"]


def test_a_redirect_from_an_allowed_host_to_loopback_is_refused_and_not_followed(server, speech_wav):
    target = Server()  # the refused hop's server: it must receive nothing
    try:
        target.routes["/ref.wav"] = Route(body=speech_wav)
        server.routes["/a"] = Route(
            status=302, headers={"Location": f"http://127.0.0.1:{target.port}/ref.wav?k=SECRET"}
        )
        net = FakeNet(server, {"voices.example.test": [PUBLIC_IP]})
        with pytest.raises(InputError) as info:
            decode_reference("http://voices.example.test/a", RATE, net.policy())
        assert f"ref_audio URL http://127.0.0.1:{target.port}/ref.wav refused" in info.value.message
        assert "SECRET" not in info.value.message
        assert [p for p, _ in server.requests] == ["/a"]
        assert target.requests == []
        assert net.dials == [(PUBLIC_IP, 80)]
    finally:
        target.close()


def test_a_redirect_to_a_name_resolving_to_metadata_is_refused_without_a_dial(server):
    server.routes["/a"] = Route(status=307, headers={"Location": "http://metadata.example.test/latest"})
    net = FakeNet(server, {"voices.example.test": [PUBLIC_IP], "metadata.example.test": ["169.254.169.254"]})
    with pytest.raises(InputError, match="link-local address"):
        decode_reference("http://voices.example.test/a", RATE, net.policy())
    assert net.dials == [(PUBLIC_IP, 80)]


def test_more_than_three_redirects_are_refused(server):
    for i in range(5):
        server.routes[f"/r{i}"] = Route(status=302, headers={"Location": f"/r{i + 1}"})
    net = FakeNet(server, {"voices.example.test": [PUBLIC_IP]})
    with pytest.raises(InputError, match="redirected more than 3 times"):
        decode_reference("http://voices.example.test/r0", RATE, net.policy())
    assert [p for p, _ in server.requests] == ["/r0", "/r1", "/r2", "/r3"]


def test_a_trickling_server_is_cut_off_at_the_deadline(server, speech_wav):
    server.routes["/slow.wav"] = Route(body=speech_wav, trickle_s=0.05)
    policy = FetchPolicy(allow_private=True, deadline_s=0.5, read_timeout_s=5)
    with pytest.raises(InputError, match=r"did not finish within 0.5 s"):
        decode_reference(f"http://127.0.0.1:{server.port}/slow.wav", RATE, policy)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="content-length"),
        pytest.param({"Content-Length": "999999999"}, id="lying-content-length"),
    ],
)
def test_a_body_over_the_byte_cap_is_refused(server, headers):
    server.routes["/big.wav"] = Route(body=b"\0" * 5000, headers=headers)
    policy = FetchPolicy(allow_private=True, max_bytes=4000)
    with pytest.raises(InputError, match="is larger than 0 MB"):
        decode_reference(f"http://127.0.0.1:{server.port}/big.wav", RATE, policy)


def test_a_streamed_body_over_the_cap_is_cut_while_reading(server):
    # no Content-Length: the connection closes after the body; the cap is enforced as bytes arrive
    server.routes["/big.wav"] = Route(body=b"\0" * 50_000, headers={"Connection": "close"})
    policy = FetchPolicy(allow_private=True, max_bytes=4000)
    with pytest.raises(InputError, match="is larger than 0 MB"):
        decode_reference(f"http://127.0.0.1:{server.port}/big.wav", RATE, policy)


def test_http_errors_name_the_url_without_its_query(server):
    with pytest.raises(InputError) as info:
        decode_reference(f"http://127.0.0.1:{server.port}/nope.wav?X-Amz-Signature=SECRET", RATE, FetchPolicy(True))
    assert info.value.message == f"ref_audio URL http://127.0.0.1:{server.port}/nope.wav answered HTTP 404"


def test_redact_drops_userinfo_query_and_fragment():
    assert redact("https://user:pw@Example.test:8443/a/b.wav?sig=1#x") == "https://example.test:8443/a/b.wav"


def test_credentials_in_a_url_are_refused():
    with pytest.raises(InputError, match="carries credentials"):
        decode_reference("http://user:pw@voices.example.test/a.wav", RATE, replace(FetchPolicy(), resolver=None))
