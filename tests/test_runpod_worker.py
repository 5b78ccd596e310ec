"""`handler.py` in real worker mode (RUNPOD_WEBHOOK_GET_JOB set, not --rp_serve_api) against a small control plane
on loopback that speaks the runpod SDK's job API: job-take / job-take-batch, job-stream, job-done, job-stop.

Stream items arrive in order and before job-done; with QWEN_TTS_CONCURRENCY=2 two jobs are taken in one batch
and each finishes with its own voice; a job-stop signal stops a job's generation; SIGTERM mid-job finishes the
job (its S3 object whole) and exits 0; QWEN_TTS_REFRESH_WORKER=true stops the pod after one job."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import soundfile as sf

from tests.test_runpod_local import ROOT, worker_env

POLL_S = 0.3  # how long an empty job-take or job-stop is held open (the SDK polls again at once)


def send_json(handler: http.server.BaseHTTPRequestHandler, obj) -> None:
    """A 200 answer of `obj` as JSON (the fake RunPod APIs' answers)."""
    data = json.dumps(obj).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class ControlPlane:
    """RunPod's job API as the SDK's worker mode uses it. `events` records what the worker sent, in arrival order:
    ("take", [ids]), ("stream", id, body), ("progress", id, body), ("done", id, body)."""

    def __init__(self) -> None:
        self.pending: list[dict] = []
        self.to_stop: list[str] = []
        self.events: list[tuple] = []
        self.cond = threading.Condition()
        plane = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if "/job-stop/" in url.path:
                    with plane.cond:
                        plane.cond.wait_for(lambda: plane.to_stop, timeout=POLL_S)
                        ids, plane.to_stop[:] = list(plane.to_stop), []
                    return self._json({"jobsToStop": ids}) if ids else self._empty()
                batch = "/job-take-batch/" in url.path
                wanted = int(query.get("batch_size", ["1"])[0]) if batch else 1
                with plane.cond:
                    plane.cond.wait_for(lambda: plane.pending, timeout=POLL_S)
                    jobs, plane.pending[:] = plane.pending[:wanted], plane.pending[wanted:]
                    if jobs:
                        plane.events.append(("take", [j["id"] for j in jobs]))
                        plane.cond.notify_all()
                if not jobs:
                    return self._empty()
                return self._json(jobs if batch else jobs[0])

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                parts = urlparse(self.path).path.split("/")
                kind = "stream" if "job-stream" in parts else "done"
                if kind == "done" and body.get("status") == "IN_PROGRESS":
                    kind = "progress"
                with plane.cond:
                    plane.events.append((kind, parts[-1], body))
                    plane.cond.notify_all()
                self._json({})

            _json = send_json

            def _empty(self):
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        base = f"{self.url}/v2/ep"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_POD_ID": "local-worker",
        }

    def add(self, *jobs: dict) -> None:
        with self.cond:
            self.pending.extend(jobs)
            self.cond.notify_all()

    def stop(self, job_id: str) -> None:
        with self.cond:
            self.to_stop.append(job_id)
            self.cond.notify_all()

    def wait(self, predicate, timeout_s: float = 120) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.events), timeout=timeout_s), self.events[-5:]

    def of(self, kind: str, job_id: str) -> list[dict]:
        return [e[2] for e in self.events if e[0] == kind and e[1] == job_id]

    def index(self, kind: str, job_id: str) -> list[int]:
        return [i for i, e in enumerate(self.events) if e[0] == kind and e[1] == job_id]

    def close(self) -> None:
        self.server.shutdown()


def done(job_id: str):
    return lambda events: any(e[0] == "done" and e[1] == job_id for e in events)


@contextlib.contextmanager
def real_worker(model_dir: Path, plane: ControlPlane, log_path: Path, **env: str):
    """`python handler.py` as RunPod starts it; on leaving, SIGTERM if it still runs."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "handler.py"],
            cwd=ROOT,
            env=worker_env(model_dir, **plane.env(), **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def plane():
    p = ControlPlane()
    yield p
    p.close()


SIX = " ".join(f"Sentence number {i} is here." for i in range(6))


def stream_job(job_id: str, voice: str, seed: int) -> dict:
    return {
        "id": job_id,
        "input": {
            "text": SIX,
            "voice": voice,
            "seed": seed,
            "stream": True,
            "output_format": "pcm",
            "params": {"max_new_tokens": 8},
        },
    }


def pcm_of(items: list[dict]) -> bytes:
    return b"".join(base64.b64decode(i["audio_base64"]) for i in items)


def test_streaming_worker_with_concurrency_two(tiny_model_dir, plane, tmp_path):
    env = {"QWEN_TTS_STREAMING": "true", "QWEN_TTS_CONCURRENCY": "2", "QWEN_TTS_CHUNK_TARGET_CHARS": "20"}
    log_path = tmp_path / "worker.log"
    with real_worker(tiny_model_dir, plane, log_path, QWEN_TTS_MAX_BATCH="1", **env) as proc:
        # One job alone, then the same job beside another voice's: both taken in one batch.
        plane.add(stream_job("alone", "Ryan", 1))
        plane.wait(done("alone"), timeout_s=240)
        with plane.cond:
            takes_before = len([e for e in plane.events if e[0] == "take"])
        plane.add(stream_job("ryan", "Ryan", 1), stream_job("vivian", "Vivian", 2))
        plane.wait(lambda ev: done("ryan")(ev) and done("vivian")(ev))

        # A stop signal for a job under way: its generation stops, no job-done is sent, the worker goes on.
        long = stream_job("stopped", "Ryan", 3)
        long["input"]["text"] = " ".join([SIX] * 4)  # 24 chunks, 24 batches of one
        plane.add(long)
        plane.wait(lambda ev: len(plane.of("stream", "stopped")) >= 1)
        plane.stop("stopped")
        plane.add(stream_job("after", "Vivian", 2))
        plane.wait(done("after"))
        assert proc.poll() is None
    assert proc.returncode == 0  # SIGTERM while idle: a clean exit
    logs = log_path.read_text()

    takes = [e[1] for e in plane.events if e[0] == "take"]
    assert ["ryan", "vivian"] in takes[takes_before:]  # one job-take-batch handed both out
    for job_id in ("alone", "ryan", "vivian", "after"):
        streamed = [body["output"] for body in plane.of("stream", job_id)]
        (final,) = plane.of("done", job_id)
        assert [i["index"] for i in streamed] == list(range(len(streamed)))  # in order
        assert max(plane.index("stream", job_id)) < plane.index("done", job_id)[0]  # all before job-done
        assert final["output"] == streamed  # return_aggregate_stream: job-done carries the same list
        assert streamed[-1]["metadata"]["num_chunks"] == 6
    ryan, alone, vivian, after = (
        pcm_of([body["output"] for body in plane.of("stream", j)]) for j in ("ryan", "alone", "vivian", "after")
    )
    assert ryan == alone  # beside another job, the same audio as alone (same seed)
    assert vivian != ryan and vivian == after

    assert plane.of("done", "stopped") == []  # the SDK drops a stopped job
    stopped = [line for line in logs.splitlines() if "stream cancelled: generation stopped after" in line]
    assert len(stopped) == 1
    assert int(stopped[0].rsplit("after ", 1)[1].split()[0]) < 24
    assert len(plane.of("stream", "stopped")) < 24 * 2


def test_sigterm_mid_job_finishes_it_and_uploads_the_whole_object(tiny_model_dir, plane, tmp_path, s3_server):
    log_path = tmp_path / "worker.log"
    text = " ".join(f"Sentence number {i} is here." for i in range(12))
    job = {
        "id": "term",
        "input": {"text": text, "seed": 4, "delivery": "s3", "params": {"max_new_tokens": 20}},
    }
    env = {**s3_server.env(), "QWEN_TTS_CHUNK_TARGET_CHARS": "20", "QWEN_TTS_MAX_BATCH": "1"}
    with real_worker(tiny_model_dir, plane, log_path, **env) as proc:
        plane.add(job)
        plane.wait(lambda ev: len(plane.of("progress", "term")) >= 1, timeout_s=240)  # a batch is done
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    (final,) = plane.of("done", "term")
    assert "error" not in final, final
    out = final["output"]
    assert out["metadata"]["num_chunks"] == 12
    data = requests.get(out["audio_url"], timeout=10).content
    info = sf.info(io.BytesIO(data))
    assert info.frames / info.samplerate == pytest.approx(out["metadata"]["duration_seconds"], abs=1e-3)
    objects = [p for p in (s3_server.root / s3_server.bucket).rglob("*") if p.is_file() and "term" in p.name]
    assert [p.stat().st_size for p in objects] == [len(data)]  # one object, whole


def test_refresh_worker_setting_stops_the_pod_after_one_job(tiny_model_dir, plane, tmp_path):
    job = {"id": "once", "input": {"text": "Hi.", "params": {"max_new_tokens": 3}}}
    with real_worker(tiny_model_dir, plane, tmp_path / "worker.log", QWEN_TTS_REFRESH_WORKER="true") as proc:
        plane.add(job)
        plane.wait(done("once"), timeout_s=240)
        plane.add({"id": "never", "input": {"text": "Hi."}})
        assert proc.wait(timeout=60) == 0  # the SDK stops the worker after the job
    (final,) = plane.of("done", "once")
    assert final["stopPod"] is True and "audio_base64" in final["output"]
    assert plane.of("done", "never") == []
