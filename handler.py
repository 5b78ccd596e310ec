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


def main() -> int:
    global _handler
    configure_logging(os.environ)
    try:
        worker, _handler = build(os.environ)
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

    runpod.serverless.start({"handler": for_runpod(handler)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
