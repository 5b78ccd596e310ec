"""Parts on the queue: the runpod client's `/run` to an endpoint (RunPod's queue spreads them over its workers)
or to local APIs (`handler.py --rp_serve_api`, one job at a time each), at most `parallel` in flight, each failed
or timed-out part retried alone with exponential backoff, the audio taken from base64 or a presigned URL.
Ctrl-C cancels the parts in flight on RunPod.
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import requests

from scripts.longform.errors import Cancelled, PartFailed, RunFailed

PENDING = ("IN_QUEUE", "IN_PROGRESS")
# Codes a resend can't fix: the same input gets the same answer.
PERMANENT_CODES = ("invalid_input", "payload_too_large")
SUBMIT_TIMEOUT_S = 30
DOWNLOAD_TIMEOUT_S = 300


@dataclass(frozen=True)
class Retry:
    attempts: int = 4  # tries per part, the first included
    backoff_s: float = 2.0  # before the 2nd try; doubles each time
    max_backoff_s: float = 60.0
    part_timeout_s: float = 1800.0  # submit to result, queue wait included

    def delay_s(self, attempt: int) -> float:
        """Wait before try `attempt + 1`, after `attempt` failed tries."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


@dataclass(frozen=True)
class JobResult:
    job_id: str
    worker: str
    audio: bytes
    metadata: dict[str, Any]
    wall_s: float


class JobQueue(Protocol):
    """Where jobs go: `submit` returns a job id, `wait` its final status body, `cancel` stops it."""

    name: str

    def submit(self, job_input: dict[str, Any]) -> str: ...

    def wait(self, job_id: str, *, deadline: float, stop: threading.Event) -> dict[str, Any]: ...

    def cancel(self, job_id: str) -> None: ...


def _client(api_key: str, base_url: str) -> Any:
    from runpod.endpoint.runner import RunPodClient

    client = RunPodClient(api_key=api_key)
    client.endpoint_url_base = base_url.rstrip("/")
    return client


class EndpointQueue:
    """A deployed endpoint, through the runpod client: POST /run, GET /status/{id} every `poll_s`, POST /cancel."""

    def __init__(self, endpoint_id: str, api_key: str, env: Mapping[str, str], *, poll_s: float = 2.0) -> None:
        import runpod

        # RUNPOD_ENDPOINT_BASE_URL is the runpod client's own variable for where endpoints live.
        self.client = _client(api_key, env.get("RUNPOD_ENDPOINT_BASE_URL") or runpod.endpoint_url_base)
        self.endpoint_id = endpoint_id
        self.name = f"endpoint {endpoint_id}"
        self.poll_s = poll_s

    def submit(self, job_input: dict[str, Any]) -> str:
        body = self.client.post(f"{self.endpoint_id}/run", {"input": job_input}, timeout=SUBMIT_TIMEOUT_S)
        return _job_id(body, self.name)

    def wait(self, job_id: str, *, deadline: float, stop: threading.Event) -> dict[str, Any]:
        while True:
            body = self.client.get(f"{self.endpoint_id}/status/{job_id}", timeout=SUBMIT_TIMEOUT_S)
            if body.get("status") not in PENDING or time.monotonic() > deadline:
                return body
            if stop.wait(self.poll_s):
                return body

    def cancel(self, job_id: str) -> None:
        self.client.post(f"{self.endpoint_id}/cancel/{job_id}", None, timeout=10)


class LocalApiQueue:
    """A local API (`handler.py --rp_serve_api`), through the runpod client: POST /run stores the job and
    POST /status/{id} runs it there and then (that API has POST routes only, and no cancel)."""

    def __init__(self, url: str) -> None:
        self.client = _client("local", url.rstrip("/").removesuffix("/runsync").removesuffix("/run"))
        self.name = self.client.endpoint_url_base

    def submit(self, job_input: dict[str, Any]) -> str:
        return _job_id(self.client.post("run", {"input": job_input}, timeout=SUBMIT_TIMEOUT_S), self.name)

    def wait(self, job_id: str, *, deadline: float, stop: threading.Event) -> dict[str, Any]:
        timeout = max(1, int(deadline - time.monotonic()))
        body = self.client.post(f"status/{job_id}", None, timeout=timeout)
        while body.get("status") in PENDING and time.monotonic() < deadline and not stop.wait(0.5):
            body = self.client.post(f"status/{job_id}", None, timeout=timeout)
        return body

    def cancel(self, job_id: str) -> None:
        """Nothing to call: the local API runs a job inside the status request, which ends with this client."""


def _job_id(body: Any, where: str) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise RuntimeError(f"{where} answered /run with {json.dumps(body)[:300]}")
    return body["id"]


def job_error(body: dict[str, Any]) -> tuple[str, str]:
    """(code, message) of a job that did not complete; the worker's error object may arrive JSON-encoded."""
    error = body.get("error")
    if error is None and isinstance(body.get("output"), dict):
        error = body["output"].get("error")
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except ValueError:
            return "error", error
    if isinstance(error, dict) and "code" in error:
        return str(error["code"]), str(error.get("message", ""))
    return str(body.get("status", "unknown")).lower(), json.dumps(error)[:300] if error else "no output"


def fetch_audio(output: dict[str, Any]) -> bytes:
    """A result's audio: inline base64, or the presigned URL downloaded."""
    if isinstance(output.get("audio_base64"), str):
        return base64.b64decode(output["audio_base64"], validate=True)
    if isinstance(output.get("audio_url"), str):
        response = requests.get(output["audio_url"], timeout=DOWNLOAD_TIMEOUT_S)
        response.raise_for_status()
        return response.content
    raise ValueError("the result carries neither audio_base64 nor audio_url")


def run_job(
    target: JobQueue,
    key: str,
    job_input: dict[str, Any],
    *,
    retry: Retry,
    stop: threading.Event,
    on_submit: Callable[[str], None],
) -> JobResult:
    """One try of one job: submit, wait, fetch. PartFailed says whether trying again can help."""
    started = time.monotonic()
    deadline = started + retry.part_timeout_s
    try:
        job_id = target.submit(job_input)
        on_submit(job_id)
        body = target.wait(job_id, deadline=deadline, stop=stop)
    except (requests.RequestException, RuntimeError) as exc:  # RuntimeError: the client's 401 message
        raise PartFailed(key, f"{target.name}: {type(exc).__name__}: {exc}", retriable=True) from None
    if stop.is_set():
        raise Cancelled(f"part {key} was cancelled")
    status = body.get("status")
    if status in PENDING:
        with contextlib.suppress(requests.RequestException, RuntimeError):  # else RunPod's own timeout ends it
            target.cancel(job_id)
        raise PartFailed(key, f"job {job_id} still {status} after {retry.part_timeout_s:.0f} s", retriable=True)
    if status != "COMPLETED":
        code, message = job_error(body)
        raise PartFailed(key, f"job {job_id} {status}: {code}: {message}", retriable=code not in PERMANENT_CODES)
    output = body.get("output")
    if not isinstance(output, dict):
        raise PartFailed(key, f"job {job_id} completed without a result object", retriable=True)
    try:
        audio = fetch_audio(output)
    except (requests.RequestException, ValueError) as exc:
        raise PartFailed(key, f"job {job_id}: fetching the audio failed: {exc}", retriable=True) from None
    return JobResult(job_id, target.name, audio, dict(output.get("metadata") or {}), time.monotonic() - started)


@dataclass(frozen=True)
class Task:
    key: str
    job_input: dict[str, Any]
    chars: int


def fan_out(
    tasks: Sequence[Task],
    targets: Sequence[JobQueue],
    *,
    parallel: int,
    retry: Retry,
    on_done: Callable[[Task, JobResult, int], None],
    on_retry: Callable[[Task, int, PartFailed], None] = lambda *_: None,
) -> None:
    """Run every task, at most `parallel` at once; thread i sends to `targets[i % len(targets)]`, so each local
    API holds its share and a retried part may land on another one. `on_done(task, result, attempts)` runs on
    the sending thread. RunFailed once nothing is left and some part failed for good; Cancelled on Ctrl-C, after
    cancelling the jobs in flight."""
    todo: queue.Queue[tuple[Task, int, float]] = queue.Queue()
    for task in tasks:
        todo.put((task, 1, 0.0))
    stop = threading.Event()
    lock = threading.Lock()
    in_flight: dict[int, tuple[JobQueue, str]] = {}
    failures: list[str] = []
    remaining = [len(tasks)]
    finished = threading.Event()
    if not tasks:
        return

    def settle(message: str | None = None) -> None:
        with lock:
            if message:
                failures.append(message)
            remaining[0] -= 1
            if remaining[0] == 0:
                finished.set()

    def work(index: int) -> None:
        target = targets[index % len(targets)]
        while not stop.is_set() and not finished.is_set():
            try:
                task, attempt, not_before = todo.get(timeout=0.2)
            except queue.Empty:
                continue
            if stop.wait(max(0.0, not_before - time.monotonic())):
                return

            def submitted(job_id: str, target: JobQueue = target) -> None:
                with lock:
                    in_flight[index] = (target, job_id)

            try:
                result = run_job(target, task.key, task.job_input, retry=retry, stop=stop, on_submit=submitted)
                on_done(task, result, attempt)
            except Cancelled:
                return
            except PartFailed as exc:
                if exc.retriable and attempt < retry.attempts and not stop.is_set():
                    on_retry(task, attempt, exc)
                    todo.put((task, attempt + 1, time.monotonic() + retry.delay_s(attempt)))
                else:
                    settle(f"{exc} (after {attempt} tries)")
                continue
            except Exception as exc:  # a bug or a full disk: stop this part, keep the others going
                settle(f"part {task.key}: {type(exc).__name__}: {exc}")
                continue
            finally:
                with lock:
                    in_flight.pop(index, None)
            settle()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(max(1, parallel))]
    for thread in threads:
        thread.start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        stop.set()
        with lock:
            jobs = list(in_flight.values())
        for target, job_id in jobs:
            with contextlib.suppress(requests.RequestException, RuntimeError):  # else RunPod's timeout ends it
                target.cancel(job_id)
        raise Cancelled(f"cancelled; {len(jobs)} job(s) in flight were cancelled; rerun to resume") from None
    if failures:
        raise RunFailed("; ".join(failures))
