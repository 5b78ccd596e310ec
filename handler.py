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

from audio.errors import Cancelled, TTSError, WorkerUnusable
from audio.settings import Settings
from audio.worker import ProgressFn, Worker

log = logging.getLogger("qwen3_tts_worker")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def failure(worker: Worker, exc: Exception, job_id: str, on_unusable: Callable[[], None] | None = None) -> dict:
    """The result of a job that raised `exc`: the contract's error object. A failure that leaves the worker
    unusable (CUDA out of memory, a CUDA error; audio/lifecycle.py) is `model_unavailable` with
    `refresh_worker: true` (RunPod then replaces the worker), and `on_unusable` is told."""
    unusable = exc if isinstance(exc, WorkerUnusable) else worker.note_failure(exc)
    if unusable is not None:
        if unusable is not exc:
            log.error("job %s: %s", job_id, unusable.message, exc_info=exc)
        log.critical("job %s failed and this worker asks to be replaced: %s", job_id, unusable.message)
        if on_unusable is not None:
            on_unusable()
        return {**error(unusable.code, unusable.message), "refresh_worker": True}
    if isinstance(exc, TTSError):
        log.warning("job %s failed: %s", job_id, exc.code)
        return error(exc.code, exc.message)
    # The traceback stays in the worker's log; the caller gets a code and no internals.
    log.error("job %s failed with an unexpected error", job_id, exc_info=exc)
    return error("internal", "the worker hit an unexpected error; the job can be retried")


def make_handler(
    worker: Worker,
    *,
    report_progress: bool = False,
    progress: ProgressFn | None = None,
    on_unusable: Callable[[], None] | None = None,
) -> Handler:
    """`progress` (a local caller's) gets each job's `done, total` chunks; `report_progress` posts them to RunPod.
    `on_unusable` is called when a job leaves the worker unusable (see `failure`)."""

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
        except Exception as exc:
            return failure(worker, exc, job_id, on_unusable)

    return handle


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


def cancellable(progress: ProgressFn | None, cancel: threading.Event, job_id: str = "local") -> ProgressFn:
    """A progress callback that also stops the job at the next batch once `cancel` is set."""

    def on_progress(done: int, total: int) -> None:
        if cancel.is_set():
            log.info("job %s cancelled: generation stopped after %d of %d chunks", job_id, done, total)
            raise Cancelled
        if progress is not None:
            progress(done, total)

    return on_progress


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
    from audio import streaming

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


_lock = threading.Lock()
_handler: Handler | None = None
_worker: Worker | None = None


def build(env: Mapping[str, str], progress: ProgressFn | None = None) -> tuple[Worker, Handler]:
    worker = Worker(Settings.from_env(env))
    # progress_update posts to RunPod's job API, which exists only when the worker runs on RunPod.
    return worker, make_handler(worker, report_progress=bool(env.get("RUNPOD_WEBHOOK_GET_JOB")), progress=progress)


def configured(env: Mapping[str, str]) -> tuple[Worker | None, Handler]:
    """This environment's worker and its handler; a misconfigured environment gives no worker and a handler
    that answers every job with `internal` naming the problem."""
    try:
        return build(env)
    except ValueError as exc:
        log.critical("CONFIGURATION ERROR, answering every job with this error: %s", exc)
        return None, misconfigured(str(exc))


def _process_worker() -> tuple[Worker | None, Handler]:
    global _worker, _handler
    with _lock:
        if _handler is None:
            _worker, _handler = configured(os.environ)
    return _worker, _handler


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The RunPod handler, on the worker configured from the process environment: `await handler(job)` from
    any event loop (one for all jobs, or `asyncio.run` per call)."""
    worker, handle = await asyncio.to_thread(_process_worker)
    if worker is None:
        return error_json(handle(job))
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


def misconfigured(problem: str) -> Handler:
    """The handler of a worker whose environment is invalid: every job gets `internal` naming the problem."""
    message = f"the worker is misconfigured: {problem}. Fix the endpoint's environment variables."

    def handle(job: dict[str, Any]) -> dict[str, Any]:
        log.error("job %s refused: %s", job.get("id") or "local", message)
        return error("internal", message)

    return handle


def preload(worker: Worker) -> None:
    """Warm the configured models; on failure the worker stays up and answers every synthesis job with
    `model_unavailable` and the reason (a crash would only make RunPod restart it in a loop, jobs unanswered)."""
    try:
        worker.preload()
    except TTSError as exc:
        reason = exc.message
    except Exception as exc:  # a CUDA out-of-memory or a library error during the warm-up generation
        log.exception("preload failed")
        reason = startup_failure(exc)
    else:
        return
    log.critical("PRELOAD FAILED, answering every job with model_unavailable: %s", reason)
    worker.fail_startup(reason)


def startup_failure(exc: Exception) -> str:
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        return (
            "the GPU ran out of memory while warming up the preloaded models (OutOfMemoryError); preload fewer "
            "models (QWEN_TTS_PRELOAD) or use a GPU with more memory"
        )
    return f"warming up the preloaded models failed ({type(exc).__name__})"


def start(env: Mapping[str, str]) -> Handler:
    """The process's handler: a configured, preloaded worker's, or one that explains why it can't work."""
    worker, handle = configured(env)
    if worker is not None:
        preload(worker)
    return handle


def main() -> int:
    global _handler, _worker
    configure_logging(os.environ)
    worker, _handler = configured(os.environ)
    _worker = worker
    if worker is None and os.environ.get("QWEN_TTS_MODE", "").strip().lower() == "http":
        return 2  # no settings, so no port to serve the error on: the log line above says what to fix
    if worker is not None and worker.settings.mode == "http":
        from audio.http_server import serve

        return serve(worker)  # /ping answers (204) while the preload runs on a thread
    if worker is not None:
        preload(worker)

    # The runpod SDK logs each job's input and output at its default level, DEBUG: that would put callers'
    # text and audio in the worker's logs.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod

    runpod.serverless.start(runpod_config(worker) if worker is not None else {"handler": for_runpod(_handler)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
