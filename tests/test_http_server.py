"""The HTTP mode (audio/serving/http_server.py) through the real `openai` client and plain HTTP: every response format,
streamed bodies, SSE, /run, models and voices, error shapes and codes, the bounded queue, and the real process's
/ping going 204 -> 200 (and 200 + 503s after a failed preload)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.conftest import CallRecorder

ROOT = Path(__file__).resolve().parents[1]
TWELVE = " ".join(f"Sentence number {i} is here." for i in range(12))
ENV = {"QWEN_TTS_CHUNK_TARGET_CHARS": "20", "QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/ping", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not come up")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served(make_worker):
    from audio.serving.http_server import create_app

    servers = []

    def serve(env=None, worker=None):
        s = Served(create_app(worker or make_worker({**ENV, **(env or {})}), preload=False))
        servers.append(s)
        return s

    yield serve
    for s in servers:
        s.stop()


@pytest.fixture
def client(served):
    import openai

    s = served()
    return openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0), s


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, 24000
    if fmt in ("ulaw", "alaw"):
        from audio.output.encoders import g711_decode

        return g711_decode(data, fmt).astype(np.float32) / 32768, 8000
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "pipe:1"],
        input=data,
        capture_output=True,
        check=True,
    )
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate", "-of", "csv=p=0", "pipe:0"],
        input=data,
        capture_output=True,
        check=True,
    )
    return np.frombuffer(out.stdout, "<f4"), int(probe.stdout.split()[0])


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm", "ulaw", "alaw"])
def test_speech_in_every_response_format(client, fmt):
    api, _ = client
    audio = api.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there.", response_format=fmt, extra_body={"max_new_tokens": 9}
    )
    samples, rate = decode(audio.content, fmt)
    assert rate == {"ulaw": 8000, "alaw": 8000, "opus": 48000}.get(fmt, 24000)  # Opus decodes at 48 kHz
    want_s = 8 * 1920 / 24000  # 8 frames
    assert len(samples) / rate == pytest.approx(want_s, abs=0.08 if fmt in ("mp3", "aac", "opus") else 1e-3)
    if fmt == "wav":
        assert audio.content[4:8] == b"\xff\xff\xff\xff"  # streamed: sizes unknown up front
        assert sf.info(io.BytesIO(audio.content)).samplerate == 24000


def test_pcm_streams_first_bytes_well_before_the_end(served, make_worker, model_cache):
    import openai

    recorder = CallRecorder(model_cache.get)
    s = served(worker=make_worker(ENV, get_model=recorder))
    api = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
    started = time.perf_counter()
    first_s = None
    data = b""
    with api.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=TWELVE,
        response_format="pcm",
        extra_body={"max_new_tokens": 40, "seed": 3},
    ) as response:
        assert response.headers["content-type"] == "application/octet-stream"
        for part in response.iter_bytes(1024):
            if first_s is None:
                first_s = time.perf_counter() - started
                # The first bytes are out while the first chunk is still being made, before any other chunk.
                assert recorder.generated == 0
            data += part
    total_s = time.perf_counter() - started
    print(f"HTTP pcm stream, 12 chunks: first bytes {first_s:.3f}s of {total_s:.3f}s ({first_s / total_s:.0%})")
    assert len(data) == 2 * (12 * 39 * 1920 + 11 * 7200)  # 12 chunks of 39 frames, 11 sentence pauses of 300 ms
    assert recorder.generated >= 1  # the other chunks came in batches after it


def test_the_stream_equals_the_queue_job_with_the_same_seed(client, make_worker):
    api, _ = client
    body = api.audio.speech.create(
        model="tts-1",
        voice="alloy",
        input=TWELVE[:80],
        response_format="pcm",
        extra_body={"max_new_tokens": 9, "seed": 4},
    ).content
    job = {"text": TWELVE[:80], "voice": "alloy", "seed": 4, "params": {"max_new_tokens": 9}, "output_format": "pcm"}
    want = base64.b64decode(make_worker(ENV).handle(job, "q")["audio_base64"])
    got, ref = np.frombuffer(body, "<i2").astype(int), np.frombuffer(want, "<i2").astype(int)
    assert len(got) == len(ref) and np.max(np.abs(got - ref)) <= 2


def test_sse_events_carry_base64_audio_then_done(client):
    _, s = client
    reply = requests.post(
        f"{s.url}/v1/audio/speech",
        json={
            "input": "Hello there.",
            "voice": "alloy",
            "response_format": "pcm",
            "stream_format": "sse",
            "max_new_tokens": 9,
        },
        timeout=60,
    )
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] == 12
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) == 2 * 8 * 1920


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        pytest.param({"input": "Hi", "voice": "nobody"}, 400, "invalid_input", "unknown voice 'nobody'", id="voice"),
        pytest.param({"input": " "}, 400, "invalid_input", "input is empty", id="empty-input"),
        pytest.param({"input": "Hi", "pitch": 2}, 400, "invalid_input", "unknown field(s)", id="unknown"),
        pytest.param({"input": "Hi", "model": "1.7B-Base", "voice": "a"}, 400, "invalid_input", "ref_audio", id="base"),
    ],
)
def test_openai_error_shape_and_status(client, body, status, code, fragment):
    import openai

    api, _ = client
    with pytest.raises(openai.APIStatusError) as info:
        fields = {"model": "tts-1", "voice": "alloy", **body}
        known = {k: fields.pop(k) for k in ("model", "voice", "input")}
        api.audio.speech.create(**known, extra_body=fields)
    assert info.value.status_code == status
    error = info.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


def test_run_answers_the_contract_result_and_errors_with_status(client):
    _, s = client
    ok = requests.post(f"{s.url}/run", json={"input": {"text": "Hi.", "params": {"max_new_tokens": 5}}}, timeout=60)
    assert ok.status_code == 200 and ok.json()["metadata"]["num_chunks"] == 1
    assert sf.info(io.BytesIO(base64.b64decode(ok.json()["audio_base64"]))).frames == 4 * 1920
    bad = requests.post(f"{s.url}/run", json={"input": {"text": "Hi.", "voice": "x"}}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
    # The tiny model never stops on its own: without a frame cap every chunk runs away and fails its check.
    failed = requests.post(
        f"{s.url}/run", json={"input": {"text": "Hi.", "model": "1.7B-VoiceDesign", "instruct": "x"}}
    )
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "synthesis_failed"


def test_payload_too_large_is_413(served):
    s = served({"QWEN_TTS_MAX_INLINE_BYTES": "100"})
    reply = requests.post(f"{s.url}/run", json={"input": {"text": "Hi.", "params": {"max_new_tokens": 5}}}, timeout=60)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "payload_too_large"


def test_models_and_voices(client):
    api, s = client
    ids = [m.id for m in api.models.list().data]
    assert {"0.6B-CustomVoice", "1.7B-Base", "tts-1"} <= set(ids)
    voices = requests.get(f"{s.url}/v1/audio/voices", timeout=10).json()
    assert "Ryan" in [v["name"] for v in voices["custom_voice"]] and voices["saved"] == []


def test_base_clone_through_the_extras(client, speech_wav):
    api, _ = client
    audio = api.audio.speech.create(
        model="tts-1",
        voice="alloy",
        input="Hello there.",
        response_format="wav",
        extra_body={
            "task_type": "Base",
            "ref_audio": base64.b64encode(speech_wav).decode(),
            "x_vector_only_mode": True,
            "max_new_tokens": 9,
            "language": "en",
        },
    )
    assert sf.info(io.BytesIO(audio.content)).frames == 8 * 1920


def test_a_full_queue_answers_429_with_retry_after(served, make_worker):
    from audio.serving.http_server import create_app

    gate = threading.Event()
    worker = make_worker({**ENV, "QWEN_TTS_MAX_QUEUE": "0"})
    real = worker.generator.get_model

    def slow(name):
        gate.wait(30)
        return real(name)

    worker.generator.get_model = slow
    s = served(worker=worker)
    del create_app
    first = threading.Thread(
        target=requests.post,
        args=(f"{s.url}/run",),
        kwargs={"json": {"input": {"text": "Hi.", "params": {"max_new_tokens": 3}}}, "timeout": 60},
    )
    first.start()
    time.sleep(0.5)
    reply = requests.post(f"{s.url}/v1/audio/speech", json={"input": "Hi", "voice": "alloy"}, timeout=10)
    gate.set()
    first.join()
    assert reply.status_code == 429 and reply.headers["Retry-After"] == "1"
    assert reply.json()["error"]["type"] == "rate_limit_exceeded"


def _http_env(model_dir, port, **extra):
    from tests.test_runpod_local import worker_env

    return worker_env(model_dir, QWEN_TTS_MODE="http", PORT=str(port), **extra)


def test_http_process_pings_204_then_200_and_serves(tiny_model_dir):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "handler.py"], cwd=ROOT, env=_http_env(tiny_model_dir, port), stderr=subprocess.PIPE
    )
    try:
        codes = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and 200 not in codes:
            with contextlib.suppress(requests.ConnectionError):
                codes.append(requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code)
            time.sleep(0.05)
        assert codes[0] == 204 and codes[-1] == 200
        reply = requests.post(
            f"http://127.0.0.1:{port}/v1/audio/speech", json={"input": "Hi.", "voice": "alloy", "max_new_tokens": 5}
        )
        assert reply.status_code == 200 and reply.headers["content-type"] == "audio/mpeg"
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_http_process_after_a_failed_preload_answers_200_and_503s(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "handler.py"],
        cwd=ROOT,
        env=_http_env(tmp_path, port, QWEN_TTS_PRELOAD="0.6B-Base"),
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code
            except requests.ConnectionError:
                time.sleep(0.1)
        ping = requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).json()
        assert ping["status"] == "failed" and "0.6B-Base" in ping["reason"]
        reply = requests.post(f"http://127.0.0.1:{port}/v1/audio/speech", json={"input": "Hi.", "voice": "alloy"})
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "model_unavailable" and "0.6B-Base" in reply.json()["error"]["message"]
        run = requests.post(f"http://127.0.0.1:{port}/run", json={"input": {"text": "Hi."}})
        assert run.status_code == 503 and run.json()["error"]["code"] == "model_unavailable"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
