"""RunPod entry point: `runpod.serverless.start` with this worker's config, the queue and stream handlers, `main`.

`handler(job)` runs one job on this process's worker (audio/serving/service.py builds it once and maps its typed
errors to the contract's `{"error": {"code", "message"}}`); this file adds what is RunPod's own: the error object
JSON-encoded as RunPod's job API types it, progress posts, cancellation of a job's task, `refresh_worker`.

    python handler.py                                  # serverless worker (preloads, then takes jobs)
    python handler.py --rp_serve_api                   # local HTTP API on :8000 (/run, /runsync, ...)
    python handler.py --test_input '{"input": {...}}'  # one local job
    QWEN_TTS_MODE=http python handler.py               # load-balancing endpoint: our own HTTP server on PORT

The queue handler is `async` (model work runs on threads, so QWEN_TTS_CONCURRENCY jobs run at once); with
QWEN_TTS_STREAMING=true it is an async generator (stream items, see audio/serving/streaming.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from audio.errors import Cancelled
from audio.serving import service
from audio.serving.service import Handler, cancellable, configure_logging, failure, make_handler, preload, run_job
from audio.settings import Settings
from audio.worker import ProgressFn, Worker

log = logging.getLogger("qwen3_tts_worker")


def build(env: Mapping[str, str], progress: ProgressFn | None = None) -> tuple[Worker, Handler]:
    """A worker for `env` and its handler; on RunPod (RUNPOD_WEBHOOK_GET_JOB set) each job's progress is posted
    to RunPod's job API, elsewhere `progress` (a local caller's) gets it."""
    worker = Worker(Settings.from_env(env))
    report = bool(env.get("RUNPOD_WEBHOOK_GET_JOB"))
    return worker, lambda job: run_job(worker, job, _runpod_progress(job) if report else progress)


def for_runpod(handle: Handler) -> Handler:
    """RunPod's job API (and its local simulation) types a failed job's `error` as a string: send the
    contract's error object JSON-encoded there, `{"status": "FAILED", "error": "{\"code\": ...}"}`."""

    def wrapped(job: dict[str, Any]) -> dict[str, Any]:
        return error_json(handle(job))

    return wrapped


def error_json(result: dict[str, Any]) -> dict[str, Any]:
    """A failed result as RunPod's job API types it (see for_runpod; `refresh_worker` stays beside it, for the SDK
    to pop); a success unchanged."""
    return {**result, "error": json.dumps(result["error"])} if "error" in result else result


def make_async_handler(worker: Worker, *, report_progress: bool = False, on_unusable: Callable[[], None] | None = None):
    """`async def handle(job)`: the job on a thread (the event loop stays free for other jobs); a cancelled task
    (RunPod's job cancel) stops the generation at its next batch. Usable from any event loop: it keeps no
    loop-bound state. `on_unusable`: see `failure`."""

    async def handle(job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id") or "local")
        cancel = threading.Event()
        progress = _runpod_progress(job) if report_progress else None
        sync = make_handler(worker, progress=cancellable(progress, cancel, job_id), on_unusable=on_unusable)
        try:
            return error_json(await asyncio.to_thread(sync, job))
        except (asyncio.CancelledError, Cancelled):
            cancel.set()
            log.info("job %s cancelled: its generation stops at the next batch", job_id)
            raise

    return handle


def make_stream_handler(worker: Worker, *, on_unusable: Callable[[], None] | None = None):
    """The generator handler of a streaming deployment: a `stream: true` job yields audio items in order (the
    last with `metadata`), any other job yields its one result; an error is the one (last) item."""
    from audio.serving import streaming

    async def handle(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        job_id = str(job.get("id") or "local")
        job_input = job.get("input")
        cancel = threading.Event()
        if not (isinstance(job_input, dict) and job_input.get("stream") is True):
            sync = make_handler(worker, progress=cancellable(None, cancel, job_id), on_unusable=on_unusable)
            try:
                yield error_json(await asyncio.to_thread(sync, job))
            finally:
                cancel.set()
            return
        items = None
        try:
            plan = await asyncio.to_thread(worker.plan_synthesis, job_input, stream_default_format="pcm")
            items = streaming.queue_items(worker, plan, job_id, cancel=cancel)
            while (item := await asyncio.to_thread(next, items, None)) is not None:
                yield item
        except (asyncio.CancelledError, GeneratorExit, Cancelled):
            cancel.set()
            log.info("job %s cancelled: its generation stops at the next piece or batch", job_id)
            raise
        except Exception as exc:
            yield error_json(failure(worker, exc, job_id, on_unusable))
        finally:
            cancel.set()
            if items is not None:
                # ValueError: still running on its thread; `cancel` stops it at its next piece.
                with contextlib.suppress(ValueError):
                    items.close()

    return handle


def _runpod_progress(job: dict[str, Any]) -> ProgressFn:
    import runpod

    def on_progress(done: int, total: int) -> None:
        runpod.serverless.progress_update(job, f"{done}/{total} chunks")

    return on_progress


def runpod_config(worker: Worker) -> dict[str, Any]:
    """What `runpod.serverless.start` gets for this worker's settings."""
    settings = worker.settings
    report = bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))
    config: dict[str, Any] = {"concurrency_modifier": lambda current: settings.concurrency}

    def refresh() -> None:
        # The SDK reads this after each job: the job's result gets stopPod (a stream job's error item can't carry
        # refresh_worker to it), and the worker takes no more jobs, finishes those running, and exits.
        config["refresh_worker"] = True

    if settings.streaming:
        config["handler"] = make_stream_handler(worker, on_unusable=refresh)
        config["return_aggregate_stream"] = True
    else:
        config["handler"] = make_async_handler(worker, report_progress=report, on_unusable=refresh)
    if settings.refresh_worker:
        config["refresh_worker"] = True
    return config


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The RunPod handler, on the worker configured from the process environment: `await handler(job)` from
    any event loop (one for all jobs, or `asyncio.run` per call)."""
    worker, handle = await asyncio.to_thread(service.process_worker, os.environ)
    if worker is None:
        return error_json(handle(job))
    return await make_async_handler(worker)(job)


def main() -> int:
    configure_logging(os.environ)
    worker, handle = service.process_worker(os.environ)
    if worker is None and os.environ.get("QWEN_TTS_MODE", "").strip().lower() == "http":
        return 2  # no settings, so no port to serve the error on: the log line above says what to fix
    if worker is not None and worker.settings.mode == "http":
        from audio.serving.http_server import serve

        return serve(worker)  # /ping answers (204) while the preload runs on a thread
    if worker is not None:
        preload(worker)

    # The runpod SDK logs each job's input and output at its default level, DEBUG: that would put callers'
    # text and audio in the worker's logs.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod

    runpod.serverless.start(runpod_config(worker) if worker is not None else {"handler": for_runpod(handle)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
