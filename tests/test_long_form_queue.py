"""scripts/long_form.py on a queue shaped like RunPod's: an endpoint API (/run, /status, /cancel) on loopback in
front of the SDK's job API (tests/test_runpod_worker.py's control plane), with a real `handler.py` in worker mode
pulling jobs from it and delivering through a real S3 server. The client goes through `--endpoint-id` and the
runpod client, as against a deployed endpoint: results come as presigned URLs, and Ctrl-C cancels the parts in
flight.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

from scripts.longform.errors import RunFailed
from scripts.longform.fanout import EndpointQueue, Retry
from scripts.longform.manifest import Manifest, parts_dir
from scripts.longform.plan import Pauses
from scripts.longform.runner import Options, Progress, VoicePlan, parts_of, run
from tests.test_runpod_local import worker_env
from tests.test_runpod_worker import ControlPlane, send_json

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = "ep-books"
KEY = "rp_test_key"
BOOK = "# One\n\nFirst words here. More of them.\n\n# Two\n\nSecond chapter words.\n\nAnd its end.\n"
JOB = {"params": {"max_new_tokens": 4}}


class Queue:
    """RunPod's endpoint API over the control plane: /run queues a job for the workers, /status answers from what
    they reported, /cancel sends the job-stop signal. Records each request's path and Authorization."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.requests: list[tuple[str, str, str]] = []
        self.cancelled: list[str] = []
        self.log_path: Path | None = None  # the worker's log
        ids = itertools.count()
        queue = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                queue.requests.append(("GET", self.path, self.headers.get("Authorization", "")))
                job_id = self.path.rsplit("/", 1)[-1]
                self._json(queue.status(job_id))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                queue.requests.append(("POST", self.path, self.headers.get("Authorization", "")))
                if self.path.endswith("/run"):
                    job_id = f"job-{next(ids)}"
                    plane.add({"id": job_id, "input": body["input"]})
                    return self._json({"id": job_id, "status": "IN_QUEUE"})
                job_id = self.path.rsplit("/", 1)[-1]
                queue.cancelled.append(job_id)
                with plane.cond:
                    plane.pending[:] = [j for j in plane.pending if j["id"] != job_id]
                plane.stop(job_id)
                return self._json({"id": job_id, "status": "CANCELLED"})

            _json = send_json

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v2"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def status(self, job_id: str) -> dict:
        if job_id in self.cancelled:
            return {"id": job_id, "status": "CANCELLED"}
        with self.plane.cond:
            done = self.plane.of("done", job_id)
            taken = any(e[0] == "take" and job_id in e[1] for e in self.plane.events)
        if done:
            body = done[-1]
            if "error" in body:
                return {"id": job_id, "status": "FAILED", "error": body["error"]}
            return {"id": job_id, "status": "COMPLETED", "output": body.get("output")}
        return {"id": job_id, "status": "IN_PROGRESS" if taken else "IN_QUEUE"}

    def outputs(self) -> list[dict]:
        with self.plane.cond:
            return [e[2].get("output") for e in self.plane.events if e[0] == "done"]


@pytest.fixture(scope="module")
def queue(tiny_model_dir, tmp_path_factory, s3_server):
    logs = tmp_path_factory.mktemp("long-form-queue")
    plane = ControlPlane()
    env = worker_env(tiny_model_dir, **plane.env(), **s3_server.env(), QWEN_TTS_PRELOAD="0.6B-CustomVoice")
    with open(logs / "worker.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "tests/flaky_handler.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            queue = Queue(plane)
            queue.log_path = logs / "worker.log"
            yield queue
        finally:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.kill()
            plane.close()


def test_a_book_on_the_endpoint_queue_with_results_from_s3(queue, tmp_path):
    book = tmp_path / "book.md"
    book.write_text(BOOK)
    env = {"RUNPOD_ENDPOINT_BASE_URL": queue.base_url}
    options = Options(fmt="flac", part_chars=30, parallel=2, pauses=Pauses(chapter_ms=1000), job_fields=JOB)
    report = run(book, tmp_path / "book.flac", [EndpointQueue(ENDPOINT, KEY, env, poll_s=0.1)], options=options,
                 voice=VoicePlan(voice="Vivian"), seed=3, progress=Progress(io.StringIO(), bar=False))  # fmt: skip
    assert (report.parts_total, report.parts_fetched) == (4, 4)
    outputs = queue.outputs()
    assert len(outputs) == 4 and all("audio_url" in o and "audio_base64" not in o for o in outputs)
    paths = {(method, path.rsplit("/", 1)[0] if "/status/" in path else path) for method, path, _ in queue.requests}
    assert paths == {("POST", f"/v2/{ENDPOINT}/run"), ("GET", f"/v2/{ENDPOINT}/status")}
    assert {auth for *_, auth in queue.requests} == {f"Bearer {KEY}"}
    frames = sum(sf.info(parts_dir(report.out) / r.file).frames for r in report.records)
    rate = report.records[0].sample_rate
    pauses_ms = [p.pause_before_ms for p in parts_of(book, options=options, seed=3)]
    assert pauses_ms == [0, 300, 1000, 600]  # a cut paragraph's sentence pause, a chapter's, a paragraph's
    pauses = sum(round(rate * ms / 1000) for ms in pauses_ms)
    assert sf.info(report.out).frames == frames + pauses


def test_ctrl_c_cancels_the_parts_in_flight(queue, tmp_path):
    book = tmp_path / "book.md"
    book.write_text(BOOK)
    out = tmp_path / "book.wav"
    argv = [sys.executable, "scripts/long_form.py", str(book), "--out", str(out), "--endpoint-id", ENDPOINT,
            "--parallel", "2", "--part-chars", "30", "--seed", "4", "--progress", "lines",
            "--job", json.dumps({**JOB, "_delay_s": 30})]  # fmt: skip
    env = {**os.environ, "RUNPOD_ENDPOINT_BASE_URL": queue.base_url, "RUNPOD_API_KEY": KEY}
    sent_before = len([r for r in queue.requests if r[1].endswith("/run")])
    with queue.plane.cond:
        takes_before = len([e for e in queue.plane.events if e[0] == "take"])
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # the one worker has taken a part (it sleeps 30 s) and the second waits in the queue: both are in flight
    while len([r for r in queue.requests if r[1].endswith("/run")]) < sent_before + 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    with queue.plane.cond:
        taken = lambda: len([e for e in queue.plane.events if e[0] == "take"]) > takes_before  # noqa: E731
        assert queue.plane.cond.wait_for(taken, timeout=30)
    time.sleep(1.0)  # the SDK drops a stop signal that comes before the taken job's task exists
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "2 job(s) in flight were cancelled; rerun to resume" in err
    assert len(queue.cancelled) == 2 and len(set(queue.cancelled)) == 2
    assert Manifest.load(tmp_path / "book.manifest.json").parts == {}
    assert not out.exists()
    # the worker stopped the part it was running: no result for it ever comes
    with queue.plane.cond:
        taken = {job_id for e in queue.plane.events if e[0] == "take" for job_id in e[1]}
    stopped = [job_id for job_id in queue.cancelled if job_id in taken]
    assert len(stopped) == 1
    deadline = time.monotonic() + 10
    while f"{stopped[0]} | Stopping job." not in queue.log_path.read_text():
        assert time.monotonic() < deadline, "the worker did not stop the cancelled part"
        time.sleep(0.1)
    assert queue.plane.of("done", stopped[0]) == []


def test_a_part_past_its_timeout_is_cancelled_on_the_queue(queue, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("One short part.")
    env = {"RUNPOD_ENDPOINT_BASE_URL": queue.base_url}
    options = Options(fmt="wav", job_fields={**JOB, "_delay_s": 30}, retry=Retry(attempts=1, part_timeout_s=2.0))
    with pytest.raises(
        RunFailed, match=r"part c0000-p000: job (job-\d+) still IN_PROGRESS after 2 s \(after 1 tries\)"
    ):
        run(book, tmp_path / "book.wav", [EndpointQueue(ENDPOINT, KEY, env, poll_s=0.1)], options=options,
            voice=VoicePlan(), seed=1, progress=Progress(io.StringIO(), bar=False))  # fmt: skip
    job_id = queue.cancelled[-1]
    deadline = time.monotonic() + 10
    while f"{job_id} | Stopping job." not in queue.log_path.read_text():
        assert time.monotonic() < deadline, "the worker did not stop the timed-out part"
        time.sleep(0.1)
