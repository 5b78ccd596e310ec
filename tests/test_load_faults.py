"""Load and faults through real worker processes on loopback (issue 23): 50 mixed jobs through the queue's local API
(`handler.py --rp_serve_api`) and 200 requests at concurrency 8 through the HTTP mode (`QWEN_TTS_MODE=http`), every
result checked against its request (format, exact length where the format keeps it, error code), the worker's
memory flat (VmRSS from /proc, growth under 10 % from the 10th result to the end), its TMPDIR empty at the end,
and the HTTP queue's bound answered 429. Faults under load: damaged saved voices among the jobs (one repairable,
one not), S3 cut mid-upload (a loopback proxy in front of the rclone S3 server drops the connection once part of
the body went through) with the next upload sound again, a model whose weights file is cut short (503
model_unavailable for its requests, the other models serving on), streaming clients that disconnect mid-stream,
and SIGTERM while a stream is under way (it is finished whole, then the process exits 0).

Faults tested elsewhere, not repeated here: out-of-memory in the engine and `refresh_worker` (tests/test_lifecycle.py,
tests/test_runpod_worker.py), SIGTERM mid-job on the queue (tests/test_runpod_worker.py), every kind of damaged
saved voice (tests/test_damaged_voices.py) and corrupt model file (tests/test_model_loader.py)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import soundfile as sf

from tests.conftest import SPEECH_TEXT
from tests.test_damaged_voices import PROMPT_DAMAGE, _truncate
from tests.test_runpod_local import free_port, worker_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FRAME = 1920  # samples per frame at 24 kHz; the tiny checkpoint makes max_new_tokens - 1 frames
RATE = 24000
MAX_RSS_GROWTH = 0.10


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Memory:
    """The worker's VmRSS: at the 10th result, the most seen, and the last."""

    def __init__(self, pid: int):
        self.pid = pid
        self.at_tenth = 0
        self.most = 0
        self.last = 0
        self.results = 0
        self._lock = threading.Lock()

    def result(self) -> None:
        with self._lock:
            self.results += 1
            self.last = rss_kib(self.pid)
            self.most = max(self.most, self.last)
            if self.results == 10:
                self.at_tenth = self.last

    def growth(self) -> float:
        return (self.last - self.at_tenth) / self.at_tenth


@contextlib.contextmanager
def worker_process(args: list[str], env: dict[str, str], log_path: Path, ready_url: str) -> Iterator[subprocess.Popen]:
    """`handler.py` with `args`, until the block ends (SIGTERM, then SIGKILL if it hangs); ready once `ready_url`
    answers 200."""
    log = open(log_path, "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "handler.py", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(2400):
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"worker exited with {proc.returncode}: {log.read()[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(ready_url, timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            pytest.fail("worker did not come up")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def listing(folder: Path) -> set[str]:
    """Every path under `folder`. A worker's start leaves two of its libraries' files there (torch's
    `_remote_module_non_scriptable.py` in a folder, a `.ses` file): "no temp files left" is none added by its jobs."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def is_mp3(data: bytes) -> bool:
    return data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)  # a tag, or a frame's sync word


def samples_of(data: bytes) -> int:
    return sf.info(io.BytesIO(data)).frames


# -- S3 cut mid-upload ------------------------------------------------------------------------------------------


class CuttingProxy:
    """A TCP proxy on loopback in front of the S3 server. While `cutting`, a connection is dropped (both sides
    closed) once more than `CUT_AFTER` bytes went upstream: the headers of a PUT pass, its body does not."""

    CUT_AFTER = 4096

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.cutting = False
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if upward and self.cutting and sent + len(data) > self.CUT_AFTER:
                    dst.sendall(data[: self.CUT_AFTER - sent])
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()


# -- the queue: 50 mixed jobs through the local API -------------------------------------------------------------


@pytest.fixture
def voice_dir(make_worker, speech_wav, tmp_path) -> tuple[Path, dict[str, str]]:
    """A volume with three saved voices on 0.6B-Base: intact, its prompt damaged (rebuilt from its reference),
    and its reference and prompt damaged (nothing to rebuild from)."""
    from audio.serving.service import make_handler

    voices = tmp_path / "voices"
    ids = {}
    for name in ("intact", "repairable", "broken"):
        # A worker each: the voices share their reference, which one worker's prompt cache would build once.
        handle = make_handler(make_worker({"QWEN_TTS_VOICE_DIR": str(voices)}))
        created = handle(
            {
                "id": name,
                "input": {
                    "action": "create_voice",
                    "name": name,
                    "ref_audio": base64.b64encode(speech_wav).decode(),
                    "ref_text": SPEECH_TEXT,
                    "model": "0.6B-Base",
                },
            }
        )
        ids[name] = created["voice_id"]
        # Its first words store its prompt on the volume.
        speak = {"text": "Hi.", "model": "0.6B-Base", "voice": ids[name], "params": {"max_new_tokens": 4}}
        assert "audio_base64" in handle({"id": name, "input": speak})
    PROMPT_DAMAGE["zeros"](voices / ids["repairable"])
    _truncate(voices / ids["broken"] / "reference.wav")
    for prompt in (voices / ids["broken"] / "prompts").glob("*.safetensors"):
        _truncate(prompt)
    return voices, ids


def queue_jobs(ids: dict[str, str]) -> list[tuple[str, dict]]:
    """50 (kind, job input) pairs, mixed."""
    kinds = ["wav", "pcm", "flac", "mp3", "segments", "voice", "repaired-voice", "damaged-voice", "invalid", "info"]
    jobs = []
    for i in range(50):
        kind = kinds[i % len(kinds)]
        n = 4 + i % 4
        speak = {"text": f"Job {i} speaks.", "seed": i, "delivery": "base64", "params": {"max_new_tokens": n}}
        if kind in ("wav", "pcm", "flac", "mp3"):
            job = {**speak, "output_format": kind}
        elif kind == "segments":
            job = {k: v for k, v in speak.items() if k != "text"}
            job.update(segments=[{"text": "One."}, {"text": "Two."}], pause_ms=100)
        elif kind.endswith("voice"):
            name = {"voice": "intact", "repaired-voice": "repairable", "damaged-voice": "broken"}[kind]
            job = {**speak, "model": "0.6B-Base", "voice": ids[name]}
        elif kind == "invalid":
            job = {**speak, "colour": "blue"}
        else:
            job = {"action": ("languages", "voices", "health", "models", "list_voices")[i // 10]}
        jobs.append((kind, job))
    # S3 among them: two uploads, the first cut mid-upload, the second after the proxy heals.
    jobs[24] = ("s3-cut", {"text": "Cut mid-upload.", "delivery": "s3", "params": {"max_new_tokens": 6}})
    jobs[25] = ("s3", {"text": "Uploaded whole.", "delivery": "s3", "params": {"max_new_tokens": 6}})
    return jobs


def check_queue_result(kind: str, job: dict, reply: dict, s3_secret: str, ids: dict[str, str]) -> None:
    n = job.get("params", {}).get("max_new_tokens", 0)
    frames = (n - 1) * FRAME
    if kind in ("damaged-voice", "invalid", "s3-cut"):
        assert reply["status"] == "FAILED", reply
        error = json.loads(reply["error"])
        if kind == "damaged-voice":
            assert error["code"] == "invalid_input" and ids["broken"] in error["message"]
        elif kind == "invalid":
            assert error["code"] == "invalid_input" and "colour" in error["message"]
        else:
            assert error["code"] == "delivery_failed" and s3_secret not in error["message"]
        return
    assert reply["status"] == "COMPLETED", reply
    out = reply["output"]
    if kind == "info":
        assert "error" not in out and out
        return
    if kind == "s3":
        data = requests.get(out["audio_url"], timeout=30).content
        assert samples_of(data) == frames and out["metadata"]["size_bytes"] == len(data)
        return
    data = base64.b64decode(out["audio_base64"])
    meta = out["metadata"]
    assert meta["size_bytes"] == len(data) and meta["format"] == job.get("output_format", "wav")
    if kind == "pcm":
        assert len(data) == frames * 2
    elif kind == "mp3":
        assert is_mp3(data) and meta["duration_seconds"] == pytest.approx(frames / RATE, abs=0.01)
    elif kind == "segments":
        assert meta["num_segments"] == 2 and samples_of(data) == 2 * frames + RATE // 10
    else:  # wav, flac, and the voices (wav)
        assert samples_of(data) == frames


def test_fifty_mixed_jobs_through_the_local_api(tiny_model_dir, voice_dir, s3_server, tmp_path):
    voices, ids = voice_dir
    proxy = CuttingProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    s3_env = {**s3_server.env(), "BUCKET_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}/{s3_server.bucket}"}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = worker_env(tiny_model_dir, QWEN_TTS_VOICE_DIR=str(voices), TMPDIR=str(scratch), **s3_env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    jobs = queue_jobs(ids)
    outcomes: dict[str, int] = {}
    with worker_process(args, env, tmp_path / "api.log", f"{url}/docs") as proc:
        memory = Memory(proc.pid)
        at_start = listing(scratch)
        for kind, job in jobs:
            proxy.cutting = kind == "s3-cut"
            reply = requests.post(f"{url}/runsync", json={"input": job}, timeout=300).json()
            proxy.cutting = False
            check_queue_result(kind, job, reply, s3_server.secret_access_key, ids)
            outcomes[kind] = outcomes.get(kind, 0) + 1
            memory.result()
        left = listing(scratch) - at_start
    proxy.close()
    print(
        f"queue: {len(jobs)} jobs {outcomes}, {proxy.cuts} uploads cut, RSS {memory.at_tenth} -> {memory.last} KiB "
        f"(max {memory.most}, {memory.growth():+.1%})"
    )
    assert sum(outcomes.values()) == 50 and proxy.cuts >= 1
    assert memory.growth() < MAX_RSS_GROWTH
    assert left == set()


# -- the HTTP mode: 200 requests at concurrency 8 ---------------------------------------------------------------

# Every 10th request alternates between the model list and the model whose file is corrupt on the volume.
HTTP_KINDS = ["disconnect", "wav", "mp3", "sse", "run", "disconnect", "flac", "pcm", "invalid", "models"]
CORRUPT_MODEL = "1.7B-VoiceDesign"
# Streams longer than a few frames need text that takes that long to say: the guard cuts a generation at a
# multiple of the text's expected length (a runaway), whatever max_new_tokens asks.
LONG_TEXT = "This stream is long enough to be cut by a signal in the middle of its speech, and then finished."
# Held streams: many chunks of many frames, megabytes more than an unread client's socket buffers take, so each
# one keeps its slot until its client goes.
HOLD_TEXT = "Hold the line, the stream is long. " * 100
HOLD_FRAMES = 4000


def speech(fmt: str, n: int, text: str = "Load speaks.", **extra) -> dict:
    return {"input": text, "voice": "alloy", "response_format": fmt, "max_new_tokens": n, **extra}


def http_request(url: str, i: int) -> tuple[str, int]:
    """Request `i` of the load, checked against what it asked for: (its kind, how many 429s it was answered
    before it got in; each one retried)."""
    kind = HTTP_KINDS[i % len(HTTP_KINDS)]
    if kind == "models" and i % 20 == 19:
        kind = "corrupt-model"
    n = 4 + i % 5
    frames = (n - 1) * FRAME
    for refused in range(1000):  # noqa: B007 - the count is returned
        if kind == "run":
            reply = requests.post(
                f"{url}/run", json={"input": {"text": "Load.", "params": {"max_new_tokens": n}}}, timeout=60
            )
        elif kind == "models":
            reply = requests.get(f"{url}/v1/models", timeout=60)
        elif kind == "invalid":
            reply = requests.post(f"{url}/v1/audio/speech", json=speech("wav", n, voice="nobody"), timeout=60)
        elif kind == "corrupt-model":
            body = speech("wav", n, model=CORRUPT_MODEL, instructions="A calm voice.")
            reply = requests.post(f"{url}/v1/audio/speech", json=body, timeout=60)
        else:
            fmt = {"disconnect": "pcm", "sse": "pcm"}.get(kind, kind)
            body = speech(
                fmt, 200 if kind == "disconnect" else n, **({"stream_format": "sse"} if kind == "sse" else {})
            )
            reply = requests.post(f"{url}/v1/audio/speech", json=body, stream=True, timeout=60)
        if reply.status_code != 429:
            break
        assert reply.headers["retry-after"] == "1" and reply.json()["error"]["code"] == "rate_limited"
        reply.close()
        time.sleep(0.05)
    else:
        pytest.fail(f"request {i} was refused 1000 times")
    if kind == "invalid":
        error = reply.json()["error"]
        assert reply.status_code == 400 and error["code"] == "invalid_input" and "nobody" in error["message"]
        return kind, refused
    if kind == "corrupt-model":
        error = reply.json()["error"]
        assert reply.status_code == 503 and error["code"] == "model_unavailable" and error["type"] == "server_error"
        assert f"model {CORRUPT_MODEL}" in error["message"] and "could not be loaded" in error["message"]
        return kind, refused
    assert reply.status_code == 200, reply.text[:500]
    if kind == "disconnect":
        first = next(reply.iter_content(4096))
        reply.close()  # mid-stream: 149 frames asked, one piece read
        assert 0 < len(first) < 149 * FRAME * 2
    elif kind == "models":
        assert "tts-1" in {m["id"] for m in reply.json()["data"]}
    elif kind == "run":
        assert samples_of(base64.b64decode(reply.json()["audio_base64"])) == frames
    elif kind == "sse":
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith(b"data: ")]
        audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
        assert [e["type"] for e in events[-1:]] == ["speech.audio.done"] and len(audio) == frames * 2
    else:
        data = reply.content
        if kind == "pcm":
            assert len(data) == frames * 2
        elif kind == "mp3":
            assert is_mp3(data)
        elif kind == "wav":  # streamed: the header's sizes are unknown, the samples follow its data chunk
            assert len(data) - (data.index(b"data") + 8) == frames * 2
        else:
            assert samples_of(data) == frames
    return kind, refused


def refused_when_full(url: str, limit: int) -> dict:
    """Fill the admission with `limit` streams that are never read (the first ones run, the rest wait for a slot),
    then ask once more: the 429's body. The held streams are closed after (their generations cancelled)."""
    held = []
    try:
        for _ in range(limit):
            sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            body = json.dumps(speech("pcm", HOLD_FRAMES, HOLD_TEXT)).encode()
            head = f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            sock.sendall(head + body)
            held.append(sock)
        for _ in range(600):  # until the server has taken them all in
            reply = requests.post(f"{url}/v1/audio/speech", json=speech("pcm", 4), timeout=60)
            if reply.status_code == 429:
                return {"retry_after": reply.headers["retry-after"], **reply.json()}
            assert reply.status_code == 200
            time.sleep(0.05)
        pytest.fail("never refused")
    finally:
        for sock in held:
            sock.close()


@pytest.fixture
def volume_with_a_corrupt_model(tiny_model_dir, tmp_path) -> Path:
    """The tiny models, linked, and a copy of CORRUPT_MODEL's whose weights file is cut short."""
    from audio import catalog

    volume = tmp_path / "volume"
    volume.mkdir()
    corrupt = catalog.MODELS[CORRUPT_MODEL].dir_name
    for folder in tiny_model_dir.iterdir():
        if folder.name == corrupt:
            shutil.copytree(folder, volume / folder.name)
            _truncate(volume / folder.name / "model.safetensors")
        else:
            (volume / folder.name).symlink_to(folder)
    return volume


def test_two_hundred_requests_at_concurrency_eight_through_the_http_mode(volume_with_a_corrupt_model, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = worker_env(
        volume_with_a_corrupt_model,
        QWEN_TTS_MODE="http",
        PORT=str(port),
        TMPDIR=str(scratch),
        QWEN_TTS_CONCURRENCY="2",
        QWEN_TTS_MAX_QUEUE="4",
    )
    kinds: dict[str, int] = {}
    with worker_process([], env, tmp_path / "http.log", f"{url}/ping") as proc:
        memory = Memory(proc.pid)
        at_start = listing(scratch)
        refusal = refused_when_full(url, 6)
        assert refusal == {
            "retry_after": "1",
            "error": {
                "message": "the worker is busy (6 requests running or queued); retry after 1s",
                "type": "rate_limit_exceeded",
                "param": None,
                "code": "rate_limited",
            },
        }

        def one(i: int) -> tuple[str, int]:
            out = http_request(url, i)
            memory.result()
            return out

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(200)))
        for kind, _ in results:
            kinds[kind] = kinds.get(kind, 0) + 1
        retried = sum(r for _, r in results)
        assert requests.get(f"{url}/ping", timeout=10).json() == {"status": "ready"}
        assert requests.get(f"{url}/openapi.json", timeout=10).json()["openapi"] == "3.1.0"  # the real process's too

        # SIGTERM mid-stream: the stream in flight is finished whole, then the worker exits cleanly.
        with requests.post(
            f"{url}/v1/audio/speech", json=speech("pcm", 100, LONG_TEXT), stream=True, timeout=60
        ) as reply:
            parts = reply.iter_content(4096)
            got = len(next(parts))
            proc.send_signal(signal.SIGTERM)
            got += sum(len(p) for p in parts)
        assert reply.status_code == 200 and got == 99 * FRAME * 2
        assert proc.wait(timeout=60) == 0
        left = listing(scratch) - at_start
    print(
        f"http: {len(results)} requests {kinds}, {retried} answered 429 first and retried, RSS {memory.at_tenth} -> "
        f"{memory.last} KiB (max {memory.most}, {memory.growth():+.1%})"
    )
    assert len(results) == 200 and kinds["disconnect"] == 40 and kinds["corrupt-model"] == 10
    assert memory.growth() < MAX_RSS_GROWTH
    assert left == set()
