"""RunPod entry point: `handler(job)` runs one job on this process's worker and is the only place where the
worker's typed errors become the contract's `{"error": {"code", "message"}}`.

    python handler.py                                  # serverless worker (preloads, then takes jobs)
    python handler.py --rp_serve_api                   # local HTTP API on :8000 (/run, /runsync, ...)
    python handler.py --test_input '{"input": {...}}'  # one local job
    QWEN_TTS_MODE=http python handler.py               # load-balancing endpoint: our own HTTP server on PORT

The queue handler is `async` (model work runs on threads, so QWEN_TTS_CONCURRENCY jobs run at once); with
QWEN_TTS_STREAMING=true it is an async generator (stream items, see audio/streaming.py).
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

from audio.errors import Cancelled, TTSError
from audio.settings import Settings
from audio.worker import ProgressFn, Worker

log = logging.getLogger("qwen3_tts_worker")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def make_handler(worker: Worker, *, report_progress: bool = False, progress: ProgressFn | None = None) -> Handler:
    """`progress` (a local caller's) gets each job's `done, total` chunks; `report_progress` posts them to RunPod."""

    def handle(job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id") or "local")
        on_progress = progress
        if report_progress:
            import runpod

            def on_progress(done: int, total: int) -> None:
                runpod.serverless.progress_update(job, f"{done}/{total} chunks")

        try:
            return worker.handle(job.get("input"), job_id, on_progress)
        except Cancelled:
            raise
        except TTSError as exc:
            log.warning("job %s failed: %s", job_id, exc.code)
            return error(exc.code, exc.message)
        except Exception:
            # The traceback stays in the worker's log; the caller gets a code and no internals.
            log.exception("job %s failed with an unexpected error", job_id)
            return error("internal", "the worker hit an unexpected error; the job can be retried")

    return handle


def for_runpod(handle: Handler) -> Handler:
    """RunPod's job API (and its local simulation) types a failed job's `error` as a string: send the
    contract's error object JSON-encoded there, `{"status": "FAILED", "error": "{\"code\": ...}"}`."""

    def wrapped(job: dict[str, Any]) -> dict[str, Any]:
        result = handle(job)
        if "error" in result:
            return {"error": json.dumps(result["error"])}
        return result

    return wrapped


def error_json(result: dict[str, Any]) -> dict[str, Any]:
    """A failed result as RunPod's job API types it (see for_runpod); a success unchanged."""
    return {**result, "error": json.dumps(result["error"])} if "error" in result else result


def cancellable(progress: ProgressFn | None, cancel: threading.Event) -> ProgressFn:
    """A progress callback that also stops the job at the next batch once `cancel` is set."""

    def on_progress(done: int, total: int) -> None:
        if cancel.is_set():
            raise Cancelled
        if progress is not None:
            progress(done, total)

    return on_progress


def make_async_handler(worker: Worker, *, report_progress: bool = False):
    """`async def handle(job)`: the job on a thread (the event loop stays free for other jobs); a cancelled task
    (RunPod's job cancel, shutdown) stops the generation at its next batch. Usable from any event loop: it keeps
    no loop-bound state."""

    async def handle(job: dict[str, Any]) -> dict[str, Any]:
        cancel = threading.Event()
        progress = _runpod_progress(job) if report_progress else None
        sync = make_handler(worker, progress=cancellable(progress, cancel))
        try:
            return error_json(await asyncio.to_thread(sync, job))
        except (asyncio.CancelledError, Cancelled):
            cancel.set()
            log.info("job %s cancelled", job.get("id"))
            raise

    return handle


def make_stream_handler(worker: Worker):
    """The generator handler of a streaming deployment: a `stream: true` job yields audio items in order (the
    last with `metadata`), any other job yields its one result; an error is the one (last) item."""
    from audio import streaming

    async def handle(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        job_id = str(job.get("id") or "local")
        job_input = job.get("input")
        cancel = threading.Event()
        if not (isinstance(job_input, dict) and job_input.get("stream") is True):
            yield error_json(await asyncio.to_thread(make_handler(worker, progress=cancellable(None, cancel)), job))
            return
        items = None
        try:
            plan = await asyncio.to_thread(worker.plan_synthesis, job_input, stream_default_format="pcm")
            items = streaming.queue_items(worker, plan, job_id, cancel=cancel)
            while (item := await asyncio.to_thread(next, items, None)) is not None:
                yield item
        except TTSError as exc:
            log.warning("job %s failed: %s", job_id, exc.code)
            yield error_json(error(exc.code, exc.message))
        except (asyncio.CancelledError, GeneratorExit, Cancelled):
            cancel.set()
            raise
        except Exception:
            log.exception("job %s failed with an unexpected error", job_id)
            yield error_json(error("internal", "the worker hit an unexpected error; the job can be retried"))
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
    config: dict[str, Any] = {
        "handler": make_stream_handler(worker)
        if settings.streaming
        else make_async_handler(worker, report_progress=report),
        "concurrency_modifier": lambda current: settings.concurrency,
    }
    if settings.streaming:
        config["return_aggregate_stream"] = True
    if settings.refresh_worker:
        config["refresh_worker"] = True
    return config


_lock = threading.Lock()
_handler: Handler | None = None
_worker: Worker | None = None


def build(env: Mapping[str, str], progress: ProgressFn | None = None) -> tuple[Worker, Handler]:
    worker = Worker(Settings.from_env(env))
    # progress_update posts to RunPod's job API, which exists only when the worker runs on RunPod.
    return worker, make_handler(worker, report_progress=bool(env.get("RUNPOD_WEBHOOK_GET_JOB")), progress=progress)


def _process_worker() -> Worker:
    global _worker, _handler
    with _lock:
        if _worker is None:
            _worker, _handler = build(os.environ)
    return _worker


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The RunPod handler, on the worker configured from the process environment: `await handler(job)` from
    any event loop (one for all jobs, or `asyncio.run` per call)."""
    worker = await asyncio.to_thread(_process_worker)
    return await make_async_handler(worker)(job)


def configure_logging(env: Mapping[str, str]) -> None:
    logging.basicConfig(
        level=(env.get("QWEN_TTS_LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries' INFO chatter (config defaults, HTTP connections) drowns the worker's own lines.
    for noisy in ("qwen_tts", "transformers", "botocore", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> int:
    global _handler, _worker
    configure_logging(os.environ)
    try:
        worker, _handler = build(os.environ)
        _worker = worker
        if worker.settings.mode == "http":
            from audio.http_server import serve

            return serve(worker)
        worker.preload()
    except ValueError as exc:  # a misconfigured environment
        log.error("configuration error: %s", exc)
        return 2
    except TTSError as exc:
        log.error("preload failed, not taking jobs: %s", exc.message)
        return 1

    # The runpod SDK logs each job's input and output at its default level, DEBUG: that would put callers'
    # text and audio in the worker's logs.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod

    runpod.serverless.start(runpod_config(worker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
