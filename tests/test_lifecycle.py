"""Worker lifecycle in process, on the real tiny models: a CUDA out-of-memory or CUDA error mid-job fails it cleanly
with `refresh_worker: true` (and the worker takes no more synthesis); RunPod's job cancel and an HTTP client that
disconnects stop the generation at the next batch.

Failures are injected by a wrapper that delegates every call to the real model (audio/model_gate.py still
serialises them); it raises or blocks before the chosen call."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import pytest
import torch

import handler
from audio.serving.http_server import create_app
from tests.test_http_server import Served

ENV = {"QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice", "QWEN_TTS_CHUNK_TARGET_CHARS": "20", "QWEN_TTS_MAX_BATCH": "1"}
SIX = " ".join(f"Sentence number {i} is here." for i in range(6))  # six chunks, six batches of one
JOB = {"text": SIX, "seed": 3, "params": {"max_new_tokens": 4}}


class Injected:
    """The real model; `before(call_no)` runs before each generate/stream call (numbered from 0) and may raise
    or block."""

    def __init__(self, real, calls: list[str], before):
        self._real, self._calls, self._before = real, calls, before

    def __getattr__(self, name):
        return getattr(self._real, name)

    def generate(self, requests, **kwargs):
        self._before(len(self._calls))
        self._calls.append("generate")
        return self._real.generate(requests, **kwargs)

    def stream(self, requests, **kwargs):
        self._before(len(self._calls))
        self._calls.append("stream")
        yield from self._real.stream(requests, **kwargs)


def injecting(make_worker, model_cache, before, env=None):
    calls: list[str] = []
    worker = make_worker({**ENV, **(env or {})}, get_model=lambda n: Injected(model_cache.get(n), calls, before))
    return worker, calls


def fail_on(call_no: int, exc: BaseException):
    """Raise `exc` before call `call_no`, once."""
    raised = []

    def before(n):
        if n == call_no and not raised:
            raised.append(n)
            raise exc

    return before


OOM = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total)")
CUDA_ERROR = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
UNUSABLE = {
    "oom": (OOM, "the GPU ran out of memory while generating (OutOfMemoryError)"),
    "cuda-error": (
        CUDA_ERROR,
        "the GPU reported an error that leaves this worker's CUDA context unusable (AcceleratorError)",
    ),
}


@pytest.mark.parametrize(("exc", "reason"), list(UNUSABLE.values()), ids=list(UNUSABLE))
def test_an_unusable_gpu_fails_the_job_with_refresh_worker_and_takes_no_more(make_worker, model_cache, exc, reason):
    worker, calls = injecting(make_worker, model_cache, fail_on(2, exc))
    config = handler.runpod_config(worker)
    first = asyncio.run(config["handler"]({"id": "j1", "input": JOB}))
    assert first["refresh_worker"] is True and config["refresh_worker"] is True
    assert json.loads(first["error"]) == {
        "code": "model_unavailable",
        "message": f"{reason}; this worker is being replaced: retry the job",
    }
    assert str(exc) not in first["error"] and calls == ["generate", "generate"]  # no library text passes through
    second = asyncio.run(config["handler"]({"id": "j2", "input": {"text": "Hi."}}))
    assert second["refresh_worker"] is True and calls == ["generate", "generate"]  # refused before any model call
    assert (
        json.loads(second["error"])["message"]
        == f"{reason} in an earlier job; this worker is being replaced: retry the job"
    )
    health = asyncio.run(config["handler"]({"id": "j3", "input": {"action": "health"}}))
    assert (health["status"], health["unusable_reason"]) == ("unusable", reason)  # info actions still answer


def test_an_ordinary_failure_is_internal_and_the_worker_goes_on(make_worker, model_cache):
    worker, _ = injecting(make_worker, model_cache, fail_on(0, RuntimeError("shape mismatch")))
    config = handler.runpod_config(worker)
    first = asyncio.run(config["handler"]({"id": "j1", "input": JOB}))
    assert json.loads(first["error"])["code"] == "internal" and "refresh_worker" not in first
    assert "refresh_worker" not in config
    second = asyncio.run(config["handler"]({"id": "j2", "input": JOB}))
    assert second["metadata"]["num_chunks"] == 6


def test_a_stream_job_that_runs_out_of_memory_ends_with_the_error_and_refreshes(make_worker, model_cache):
    worker, _ = injecting(make_worker, model_cache, fail_on(1, OOM), env={"QWEN_TTS_STREAMING": "true"})
    config = handler.runpod_config(worker)

    async def collect():
        return [item async for item in config["handler"]({"id": "s", "input": {**JOB, "stream": True}})]

    items = asyncio.run(collect())
    assert [i["chunk"] for i in items[:-1]] == [0] * (len(items) - 1)  # the first chunk's audio, then the error
    assert json.loads(items[-1]["error"])["code"] == "model_unavailable" and items[-1]["refresh_worker"] is True
    assert config["refresh_worker"] is True  # the SDK reads it after the job: stopPod, and no more jobs


def test_refresh_worker_setting_refreshes_after_every_job(make_worker):
    assert handler.runpod_config(make_worker({"QWEN_TTS_REFRESH_WORKER": "true"}))["refresh_worker"] is True
    assert "refresh_worker" not in handler.runpod_config(make_worker())


class HoldSecondBatch:
    """`before` for Injected: the second batch (call 1) says it has started, then waits for `release`. Cancelling
    while it waits is cancelling mid-job, deterministically: the batch in flight finishes, no other starts."""

    def __init__(self, release=None):
        self.entered = threading.Event()
        self.release = release or threading.Event().wait

    def __call__(self, n):
        if n == 1:
            self.entered.set()
            assert self.release(30) is not False


def test_runpod_job_cancel_stops_generation_at_the_next_batch(make_worker, model_cache):
    cancelled = threading.Event()
    hold = HoldSecondBatch(cancelled.wait)
    worker, calls = injecting(make_worker, model_cache, hold)
    handle = handler.make_async_handler(worker)

    async def main():
        task = asyncio.create_task(handle({"id": "c", "input": JOB}))
        assert await asyncio.to_thread(hold.entered.wait, 30)
        task.cancel()  # what the SDK does on a job-stop signal
        await asyncio.wait([task])
        assert task.cancelled()
        cancelled.set()

    asyncio.run(main())  # returns once the job's thread has ended
    assert calls == ["generate", "generate"]  # of six batches: the one running when cancelled was the last


def test_an_http_client_that_disconnects_cancels_its_generation_at_the_next_batch(make_worker, model_cache, caplog):
    caplog.set_level(logging.INFO, logger="audio.serving.http_server")
    caplog.set_level(logging.INFO, logger="audio.serving.streaming")

    def logged(fragment: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if fragment in r.getMessage()]

    def server_saw_the_disconnect(timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not logged("speech stream ended early") and time.monotonic() < deadline:
            time.sleep(0.01)
        return True

    hold = HoldSecondBatch(server_saw_the_disconnect)
    worker, calls = injecting(make_worker, model_cache, hold)
    s = Served(create_app(worker, preload=False))
    try:
        body = json.dumps({"input": SIX, "voice": "alloy", "response_format": "pcm", "max_new_tokens": 4})
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
            sock.sendall(
                f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert hold.entered.wait(30)  # the first chunk is out, the second batch under way: the client goes
        deadline = time.monotonic() + 30
        while not logged("stream cancelled") and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        s.stop()
    assert logged("stream cancelled") == ["stream cancelled: generation stopped after 2 chunk(s)"]
    assert calls == ["stream", "generate"]  # of six batches


def test_after_an_out_of_memory_the_http_worker_pings_unhealthy(make_worker, model_cache):
    worker, _ = injecting(make_worker, model_cache, fail_on(0, OOM))
    s = Served(create_app(worker, preload=False))
    try:
        import requests

        first = requests.post(f"{s.url}/run", json={"input": {"text": "Hi.", "params": {"max_new_tokens": 3}}})
        ping = requests.get(f"{s.url}/ping", timeout=5)
        speech = requests.post(f"{s.url}/v1/audio/speech", json={"input": "Hi.", "voice": "alloy"}, timeout=30)
    finally:
        s.stop()
    assert first.status_code == 503 and first.json()["error"]["code"] == "model_unavailable"
    assert ping.status_code == 503 and ping.json()["status"] == "unhealthy"
    assert speech.status_code == 503 and "earlier job" in speech.json()["error"]["message"]
