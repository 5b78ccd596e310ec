"""RunPod entry point: `handler(job)` runs one job on this process's worker and is the only place where the
worker's typed errors become the contract's `{"error": {"code", "message"}}`.

    python handler.py                                  # serverless worker (preloads, then takes jobs)
    python handler.py --rp_serve_api                   # local HTTP API on :8000 (/run, /runsync, ...)
    python handler.py --test_input '{"input": {...}}'  # one local job
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from audio.errors import TTSError
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


_lock = threading.Lock()
_handler: Handler | None = None


def build(env: Mapping[str, str], progress: ProgressFn | None = None) -> tuple[Worker, Handler]:
    worker = Worker(Settings.from_env(env))
    # progress_update posts to RunPod's job API, which exists only when the worker runs on RunPod.
    return worker, make_handler(worker, report_progress=bool(env.get("RUNPOD_WEBHOOK_GET_JOB")), progress=progress)


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The RunPod handler, on a worker configured from the process environment."""
    global _handler
    with _lock:
        if _handler is None:
            _, _handler = build(os.environ)
    return _handler(job)


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
    try:
        worker, handle = build(env)
    except ValueError as exc:  # a misconfigured environment
        log.critical("CONFIGURATION ERROR, answering every job with this error: %s", exc)
        return misconfigured(str(exc))
    preload(worker)
    return handle


def main() -> int:
    global _handler
    configure_logging(os.environ)
    _handler = start(os.environ)

    # The runpod SDK logs each job's input and output at its default level, DEBUG: that would put callers'
    # text and audio in the worker's logs.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod

    runpod.serverless.start({"handler": for_runpod(handler)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
