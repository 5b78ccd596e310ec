"""The HTTP mode against hostile requests and faults (issue 23), each through the real app on loopback: request
bodies over QWEN_TTS_MAX_REQUEST_BYTES refused 413 before they are read, malformed bodies (deep nesting, bad
bytes) answered 400 in the error shape, streamed speech whose input, reference or model is bad answered 400/503
JSON before the first byte, and `/run` cancelled when its client disconnects."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from audio.settings import Settings
from audio.voices.reference import MAX_REFERENCE_BYTES
from tests.test_http_server import served  # noqa: F401  (the fixture)

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
