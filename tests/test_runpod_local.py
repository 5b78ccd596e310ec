"""The real worker process: `handler.py --test_input`, the runpod local API over HTTP, and preload failures."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
JOB = {"text": "Hello from the worker.", "seed": 5, "params": {"max_new_tokens": 5}}


def worker_env(model_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "S3_", "RUNPOD_WEBHOOK"))}
    env.update(
        RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
        RUNPOD_SKIP_GPU_CHECK="true",
        QWEN_TTS_MODEL_DIR=str(model_dir),
        QWEN_TTS_DEFAULT_MODEL="0.6B-CustomVoice",
        HF_HOME=str(model_dir / "no-hf"),
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_test_input_mode_runs_one_job(tiny_model_dir):
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps({"input": JOB})],
        cwd=ROOT,
        env=worker_env(tiny_model_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = proc.stdout + proc.stderr
    assert "preloaded 0.6B-CustomVoice" in logs
    assert "job local_test: 1 segment(s), 1 chunk(s), 0.3s audio" in logs
    assert "Job local_test completed successfully." in logs
    assert "Job result: {'output': {'audio_base64': 'UklGR" in logs  # base64 of b"RIFF"
    assert JOB["text"] not in logs  # the SDK's DEBUG job dumps are off
    print(f"cold start to first audio: {elapsed:.1f}s")


@contextlib.contextmanager
def serving(model_dir: Path, log_path: Path, **env: str):
    """`handler.py --rp_serve_api` on a free loopback port, until the block ends; yields its base URL."""
    port = free_port()
    log = open(log_path, "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        cwd=ROOT,
        env=worker_env(model_dir, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"local API exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                requests.get(f"{url}/docs", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            pytest.fail("local API did not come up")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def runsync(url: str, job_input: dict) -> dict:
    return requests.post(f"{url}/runsync", json={"input": job_input}, timeout=120).json()


def test_worker_whose_preload_fails_keeps_answering_with_model_unavailable(tmp_path):
    empty = tmp_path / "empty-volume"
    empty.mkdir()
    with serving(empty, tmp_path / "api.log", QWEN_TTS_PRELOAD="0.6B-Base") as url:
        first, second = runsync(url, JOB), runsync(url, JOB)
        health = runsync(url, {"action": "health"})
    logs = (tmp_path / "api.log").read_text()
    reason = f"model 0.6B-Base is not on this worker: looked in {empty} and the Hugging Face caches."
    for reply in (first, second):
        assert reply["status"] == "FAILED"
        error = json.loads(reply["error"])
        assert error["code"] == "model_unavailable"
        assert error["message"].startswith(f"this worker could not start: {reason}")
    assert health["status"] == "COMPLETED"
    assert health["output"]["status"] == "unavailable"
    assert health["output"]["startup_error"].startswith(reason)
    assert health["output"]["loaded_models"] == [] and health["output"]["model_loads"] == {}
    assert f"PRELOAD FAILED, answering every job with model_unavailable: {reason}" in logs


def test_misconfigured_worker_answers_every_job_with_internal_naming_the_variable(tmp_path):
    with serving(tmp_path, tmp_path / "api.log", QWEN_TTS_MAX_BATCH="many") as url:
        replies = [runsync(url, JOB), runsync(url, {"action": "health"})]
    logs = (tmp_path / "api.log").read_text()
    for reply in replies:
        assert reply["status"] == "FAILED"
        assert json.loads(reply["error"]) == {
            "code": "internal",
            "message": "the worker is misconfigured: QWEN_TTS_MAX_BATCH must be an integer, got 'many'. "
            "Fix the endpoint's environment variables.",
        }
    assert "CONFIGURATION ERROR, answering every job with this error: QWEN_TTS_MAX_BATCH must be an integer" in logs


@pytest.fixture(scope="module")
def local_api(tiny_model_dir):
    with serving(tiny_model_dir, tiny_model_dir.parent / "local-api.log") as url:
        yield url


def test_runsync_over_http_returns_audio(local_api):
    reply = requests.post(f"{local_api}/runsync", json={"input": JOB}, timeout=120).json()
    assert reply["status"] == "COMPLETED"
    audio = base64.b64decode(reply["output"]["audio_base64"])
    info = sf.info(io.BytesIO(audio))
    assert (info.samplerate, info.frames) == (24000, 4 * 1920)
    assert reply["output"]["metadata"]["num_chunks"] == 1


def test_runsync_over_http_reports_invalid_input(local_api):
    reply = requests.post(f"{local_api}/runsync", json={"input": {"text": "Hi.", "voice": "nobody"}}, timeout=60)
    body = reply.json()
    assert body["status"] == "FAILED"
    error = json.loads(body["error"])  # RunPod's job API carries the error object as a JSON string
    assert error["code"] == "invalid_input"
    assert "unknown voice 'nobody'" in error["message"]


PROGRESS_SCRIPT = """
import json, os, sys, time
from handler import build
worker, handle = build(os.environ)
text = " ".join(["This sentence is here to make a few chunks of text for the worker."] * 12)
result = handle({"id": "job-7", "input": {"text": text, "params": {"max_new_tokens": 2}}})
time.sleep(1.5)  # progress posts go out on daemon threads
print(json.dumps(result["metadata"]))
"""


def test_progress_is_posted_to_runpod_after_each_batch(tiny_model_dir):
    """On RunPod (RUNPOD_WEBHOOK_GET_JOB set), each finished batch posts `done/total` to the job API."""
    import http.server
    import threading

    posts: list[tuple[str, dict]] = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROGRESS_SCRIPT],
            cwd=ROOT,
            env=worker_env(
                tiny_model_dir,
                QWEN_TTS_PRELOAD="none",
                QWEN_TTS_MAX_BATCH="2",
                RUNPOD_WEBHOOK_GET_JOB=f"{url}/job-take",
                RUNPOD_WEBHOOK_POST_OUTPUT=f"{url}/job-done/$ID",
            ),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    chunks = json.loads(proc.stdout.strip().splitlines()[-1])["num_chunks"]
    progress = sorted(body["output"] for path, body in posts if body.get("status") == "IN_PROGRESS")
    expected = [f"{done}/{chunks} chunks" for done in range(2, chunks + 1, 2)]
    if chunks % 2:
        expected.append(f"{chunks}/{chunks} chunks")
    assert sorted(progress) == sorted(expected)
    assert {path for path, _ in posts} == {"/job-done/job-7&isStream=false"}  # the SDK appends the flag


# -- scripts/local_runpod_test.py --url against this real local API --------------------------------------------


def test_local_runpod_test_url_sends_the_same_job(local_api, tmp_path, capsys):
    """A payload (the tiny model's frame cap) combined with --segments and --format, over HTTP."""
    from scripts import local_runpod_test as cli

    payload = tmp_path / "cap.json"
    payload.write_text(json.dumps({"input": {"params": {"max_new_tokens": 5}, "seed": 5}}))
    out = tmp_path / "pod.mp3"
    argv = ["--url", local_api, "--payload", str(payload), "--segments", "--format", "mp3", "--save", str(out)]
    assert cli.main(argv, env={}) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    metadata = json.JSONDecoder().raw_decode(printed[printed.index("{") :])[0]
    n = len(cli.SAMPLE_SEGMENTS)
    want_s = (n * 4 * 1920 + (n - 1) * 7200) / 24000  # 4 frames a chunk, 300 ms pauses
    assert (metadata["num_segments"], metadata["format"], metadata["model"]) == (n, "mp3", "0.6B-CustomVoice")
    assert metadata["duration_seconds"] == pytest.approx(want_s)
    info = sf.info(io.BytesIO(out.read_bytes()))
    assert (info.format, info.samplerate) == ("MP3", 24000)
    assert info.frames / 24000 == pytest.approx(want_s, abs=1920 / 24000)


def test_local_runpod_test_url_failed_job_exits_1_with_the_code(local_api, tmp_path, capsys):
    from scripts import local_runpod_test as cli

    argv = ["--url", local_api, "--text", "Hi.", "--voice", "nobody", "--save", str(tmp_path / "x.wav")]
    assert cli.main(argv, env={}) == 1
    err = capsys.readouterr().err
    assert re.match(r"error: job \S+ FAILED: invalid_input: unknown voice 'nobody'", err)
    assert not (tmp_path / "x.wav").exists()


def test_runpod_client_run_sync_against_the_default_deployment(local_api):
    import runpod

    previous = runpod.endpoint_url_base, runpod.api_key
    runpod.endpoint_url_base, runpod.api_key = local_api, "local"  # the local API ignores the key
    try:
        # The local API serves /runsync at its root; the client posts to base/<endpoint id>/runsync.
        output = runpod.Endpoint(".").run_sync({"input": JOB}, timeout=120)
    finally:
        runpod.endpoint_url_base, runpod.api_key = previous
    assert output["metadata"]["num_chunks"] == 1
    assert sf.info(io.BytesIO(base64.b64decode(output["audio_base64"]))).frames == 4 * 1920


def test_streaming_deployment_runsync_returns_the_items_in_order(tiny_model_dir):
    import numpy as np

    port = free_port()
    env = worker_env(tiny_model_dir, QWEN_TTS_STREAMING="true", QWEN_TTS_CHUNK_TARGET_CHARS="20")
    proc = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/docs", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        text = " ".join(f"Sentence number {i} is here." for i in range(12))
        job = {"text": text, "seed": 7, "params": {"max_new_tokens": 20}, "output_format": "pcm"}
        streamed = requests.post(f"{url}/runsync", json={"input": {**job, "stream": True}}, timeout=300).json()
        whole = requests.post(f"{url}/runsync", json={"input": job}, timeout=300).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    items = streamed["output"]
    assert [i["index"] for i in items] == list(range(len(items)))
    assert items[-1]["metadata"]["num_chunks"] == 12
    (result,) = whole["output"]  # a non-stream job yields its one result
    want = np.frombuffer(base64.b64decode(result["audio_base64"]), "<i2").astype(int)
    got = np.concatenate([np.frombuffer(base64.b64decode(i["audio_base64"]), "<i2") for i in items]).astype(int)
    assert len(got) == len(want) and np.max(np.abs(got - want)) <= 2  # within 2 LSB (incremental decode)


def test_local_runpod_test_url_stream_on_a_streaming_worker(tiny_model_dir, tmp_path, capsys):
    """`--stream --url`: /run then /stream/{id} on a real QWEN_TTS_STREAMING=true local API; the joined WAV."""
    from scripts import local_runpod_test as cli

    text = "Hello there. How are you today? Fine, thanks."
    job = json.dumps({"text": text, "seed": 5, "params": {"max_new_tokens": 20}})
    out = tmp_path / "streamed.wav"
    with serving(tiny_model_dir, tmp_path / "api.log", QWEN_TTS_STREAMING="true") as url:
        code = cli.main(["--url", url, "--stream", "--input", job, "--captions", "srt", "--save", str(out)], env={})
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    metadata = json.JSONDecoder().raw_decode(printed[printed.index("{") :])[0]
    items = re.findall(r"^item (\d+): segment 0 chunk \d+, ", printed, re.M)
    assert [int(i) for i in items] == list(range(metadata["stream_items"]))
    samples, rate = sf.read(out, dtype="int16")
    assert (rate, len(samples) * 2) == (24000, metadata["size_bytes"])
    assert len(samples) / 24000 == metadata["duration_seconds"] == 19 * 1920 / 24000
    assert (tmp_path / "streamed.srt").read_text().count(" --> ") == 3


def test_local_runpod_test_url_stream_on_a_default_worker_says_what_to_set(local_api, tmp_path, capsys):
    from scripts import local_runpod_test as cli

    argv = ["--url", local_api, "--stream", "--input", json.dumps(JOB), "--save", str(tmp_path / "x.wav")]
    assert cli.main(argv, env={}) == 1
    err = capsys.readouterr().err
    assert "Stream not supported, handler must be a generator." in err
    assert "(is the worker running with QWEN_TTS_STREAMING=true?)" in err
    assert not (tmp_path / "x.wav").exists()
