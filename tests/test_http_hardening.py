"""The HTTP mode against hostile requests and faults (issue 23), each through the real app on loopback: request
bodies over QWEN_TTS_MAX_REQUEST_BYTES refused 413 before they are read, malformed bodies (deep nesting, bad
bytes) answered 400 in the error shape, streamed speech whose input, reference or model is bad answered 400/503
JSON before the first byte, and `/run` cancelled when its client disconnects."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest
import requests
import soundfile as sf

from audio.errors import ModelError
from audio.settings import Settings
from audio.voices.reference import MAX_REFERENCE_BYTES, MIN_REFERENCE_S
from tests.test_http_server import ENV, TWELVE, free_port, served  # noqa: F401  (served: the fixture)

SMALL_LIMIT = 1000


def raw_request(port: int, head: bytes, body_parts: list[bytes]) -> tuple[int, dict]:
    """Send `head` and `body_parts` on a plain socket (without finishing the body if the parts don't), then read
    the whole response: its status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        header, _, rest = data.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        length = int(next(line.split(":", 1)[1] for line in lines if line.lower().startswith("content-length:")))
        while len(rest) < length:
            rest += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(rest[:length])


def head(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]).encode()


@pytest.mark.parametrize("path", ["/run", "/v1/audio/speech"], ids=["run", "speech"])
def test_a_declared_oversized_body_is_refused_before_it_is_sent(served, path):  # noqa: F811
    s = served({"QWEN_TTS_MAX_REQUEST_BYTES": str(SMALL_LIMIT)})
    # 100 MB announced, 20 bytes sent: the answer comes while the client still has the rest to send.
    status, body = raw_request(
        s.port, head(path, "Content-Type: application/json", "Content-Length: 100000000"), [b'{"input": "' + b"a" * 9]
    )
    assert status == 413
    error = body["error"]
    assert error["code"] == "invalid_input" and "QWEN_TTS_MAX_REQUEST_BYTES" in error["message"]
    if path == "/v1/audio/speech":
        assert error["type"] == "invalid_request_error" and error["param"] is None


def test_a_chunked_oversized_body_is_refused_before_its_end(served):  # noqa: F811
    s = served({"QWEN_TTS_MAX_REQUEST_BYTES": str(SMALL_LIMIT)})
    chunk = b"a" * 800
    part = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    # Two chunks past the limit and no closing zero-length chunk: the body is not over when the server answers.
    status, body = raw_request(s.port, head("/run", "Transfer-Encoding: chunked"), [part, part])
    assert status == 413 and body["error"]["code"] == "invalid_input"


def test_a_body_of_exactly_the_limit_is_read(served):  # noqa: F811
    s = served({"QWEN_TTS_MAX_REQUEST_BYTES": str(SMALL_LIMIT)})
    data = json.dumps({"input": {"action": "languages"}}).encode()
    data += b" " * (SMALL_LIMIT - len(data))
    reply = requests.post(f"{s.url}/run", data=data, timeout=30)
    assert len(data) == SMALL_LIMIT and reply.status_code == 200 and "languages" in reply.json()


def test_the_default_limit_takes_the_longest_job_with_the_largest_reference():
    job = {
        "input": {
            "text": "中" * Settings().max_chars,  # 6 bytes each as JSON escapes
            "model": "1.7B-Base",
            "ref_audio": "A" * (-(-MAX_REFERENCE_BYTES // 3) * 4),
            "ref_text": "x" * 2000,
        }
    }
    assert len(json.dumps(job).encode()) <= Settings().max_request_bytes


MALFORMED = [
    pytest.param(b"[" * 100_000, id="nested-past-the-parser"),
    pytest.param(b'{"input": {"text": "Hi", "params": ' + b"[" * 900 + b"]" * 900 + b"}}", id="nested-in-a-field"),
    pytest.param(b'{"input": {"text": "\xff\xfe"}}', id="not-utf8"),
    pytest.param(b'{"input": ', id="truncated"),
    pytest.param(b"[1, 2]", id="not-an-object"),
    pytest.param(b'{"input": {"text": NaN}}', id="nan"),
]


@pytest.mark.parametrize("data", MALFORMED)
@pytest.mark.parametrize("path", ["/run", "/v1/audio/speech"], ids=["run", "speech"])
def test_a_malformed_body_is_400_in_the_error_shape(served, path, data):  # noqa: F811
    s = served()
    reply = requests.post(f"{s.url}{path}", data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "invalid_input" and error["message"]
    if path == "/v1/audio/speech":
        assert set(error) == {"message", "type", "param", "code"}


# -- streamed speech: every error before the first byte ---------------------------------------------------------


def short_clip_b64() -> str:
    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(rate * MIN_REFERENCE_S / 2)) / rate)
    buf = io.BytesIO()
    sf.write(buf, tone, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def clone_body(fmt: str, ref_audio: str, **extra) -> dict:
    return {
        "model": "tts-1",
        "input": "Hello there.",
        "voice": "alloy",
        "task_type": "Base",
        "ref_audio": ref_audio,
        "x_vector_only_mode": True,
        "response_format": fmt,
        "max_new_tokens": 5,
        **extra,
    }


STREAMED = ["pcm", "wav", "mp3", "opus", "aac", "ulaw", "alaw"]


def assert_openai_error(reply: requests.Response, status: int, code: str, fragment: str) -> None:
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [pytest.param(f, {}, id=f) for f in STREAMED] + [pytest.param("pcm", {"stream_format": "sse"}, id="pcm-sse")],
)
def test_a_streamed_clone_with_too_short_a_reference_is_400_json(served, fmt, extra):  # noqa: F811
    s = served()
    reply = requests.post(f"{s.url}/v1/audio/speech", json=clone_body(fmt, short_clip_b64(), **extra), timeout=60)
    assert_openai_error(reply, 400, "invalid_input", "ref_audio is")


def test_a_streamed_clone_with_an_unreachable_reference_url_is_400_json(served):  # noqa: F811
    s = served({"QWEN_TTS_ALLOW_PRIVATE_URLS": "true"})
    url = f"http://127.0.0.1:{free_port()}/ref.wav"  # nothing listens there
    reply = requests.post(f"{s.url}/v1/audio/speech", json=clone_body("pcm", url), timeout=60)
    assert_openai_error(reply, 400, "invalid_input", "could not be reached")


def test_a_stream_whose_model_cannot_load_is_503_json(served, make_worker):  # noqa: F811
    def missing(name):
        raise ModelError(f"{name} is not on this test's volume")

    s = served(worker=make_worker(ENV, get_model=missing))
    reply = requests.post(
        f"{s.url}/v1/audio/speech", json={"input": "Hello.", "voice": "alloy", "response_format": "pcm"}, timeout=60
    )
    assert_openai_error(reply, 503, "model_unavailable", "not on this test's volume")
    # The slot the failed stream held is free again: the next request is served.
    ok = requests.post(f"{s.url}/run", json={"input": {"action": "languages"}}, timeout=60)
    assert ok.status_code == 200


# -- cancellation: a client that disconnects stops its job ------------------------------------------------------


class HeldFirstBatch:
    """Delegates to the real models, counts finished `generate` calls (batches) and holds the first one until
    `release` is set."""

    def __init__(self, get_model):
        self._get_model = get_model
        self.batches = 0
        self.first_done = threading.Event()
        self.release = threading.Event()

    def __call__(self, name):
        outer, model = self, self._get_model(name)

        class Held:
            def __getattr__(self, attr):
                return getattr(model, attr)

            def generate(self, requests, **kwargs):
                out = model.generate(requests, **kwargs)
                outer.batches += 1
                if outer.batches == 1:
                    outer.first_done.set()
                    outer.release.wait(60)
                return out

        return Held()


def wait_for_log(caplog, fragment: str) -> logging.LogRecord:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in list(caplog.records):
            if fragment in record.getMessage():
                return record
        time.sleep(0.02)
    raise AssertionError(f"no log record with {fragment!r}")


CANCELLED_REQUESTS = [
    pytest.param(
        "/run", {"input": {"text": TWELVE, "params": {"max_new_tokens": 5}, "output_format": "flac"}}, id="run"
    ),
    pytest.param(
        "/v1/audio/speech",
        {"input": TWELVE, "voice": "alloy", "response_format": "flac", "max_new_tokens": 5},
        id="speech-whole-file",
    ),
]


@pytest.mark.parametrize(("path", "body"), CANCELLED_REQUESTS)
def test_a_client_that_disconnects_stops_its_generation(served, make_worker, model_cache, caplog, path, body):  # noqa: F811
    caplog.set_level(logging.INFO)
    held = HeldFirstBatch(model_cache.get)
    s = served(worker=make_worker({**ENV, "QWEN_TTS_MAX_BATCH": "1"}, get_model=held))  # 12 chunks, 12 batches
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(head(path, "Content-Type: application/json", f"Content-Length: {len(data)}") + data)
        assert held.first_done.wait(60)
    # The server sees the disconnect while the first batch is held; then the job stops after that batch.
    wait_for_log(caplog, "client gone")
    held.release.set()
    stopped = wait_for_log(caplog, "generation stopped after")
    assert stopped.args[1:] == (1, 12)  # done, total chunks
    assert held.batches == 1


def test_a_streamed_client_that_disconnects_stops_its_generation_and_frees_its_place(
    served,  # noqa: F811
    make_worker,
    model_cache,
    caplog,
):
    caplog.set_level(logging.INFO)
    held = HeldFirstBatch(model_cache.get)
    env = {**ENV, "QWEN_TTS_MAX_BATCH": "1", "QWEN_TTS_MAX_QUEUE": "0"}  # one request at a time, none waiting
    s = served(worker=make_worker(env, get_model=held))
    data = json.dumps({"input": TWELVE, "voice": "alloy", "response_format": "pcm", "max_new_tokens": 5}).encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(head("/v1/audio/speech", "Content-Type: application/json", f"Content-Length: {len(data)}") + data)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the first chunk streamed alone, then batches
        assert held.first_done.wait(60)
    wait_for_log(caplog, "speech stream ended early")
    held.release.set()
    assert wait_for_log(caplog, "stream cancelled: generation stopped after").args == (2,)  # chunks handed over
    assert held.batches == 1
    # Its place is given back once its response has ended (on the event loop, so it is waited for, not raced).
    deadline = time.monotonic() + 30
    while (
        status := requests.post(f"{s.url}/run", json={"input": {"action": "languages"}}, timeout=30).status_code
    ) == 429:
        assert time.monotonic() < deadline, "the stream's place was never given back"
        time.sleep(0.05)
    assert status == 200
