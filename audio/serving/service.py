"""What both entry points share: this process's worker, built from its environment once and preloaded; one job run
to its result; the one mapping of the worker's typed errors to the contract's `{"error": {"code", "message"}}`;
cancellation through the progress callback.

`handler.py` (the RunPod queue) and `audio/serving/http_server.py` (the HTTP mode) both stand on this module and
never on each other.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from audio.errors import Cancelled, TTSError, WorkerUnusable
from audio.settings import Settings
from audio.worker import ProgressFn, Worker

log = logging.getLogger("qwen3_tts_worker")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
# The HTTP status each error code is answered with (the HTTP mode; the live WebSocket closes with 4000 + it).
STATUS_FOR_CODE = {
    "invalid_input": 400,
    "payload_too_large": 413,
    "model_unavailable": 503,
    "synthesis_failed": 500,
    "delivery_failed": 502,
    "internal": 500,
}


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


def run_job(
    worker: Worker,
    job: dict[str, Any],
    progress: ProgressFn | None = None,
    on_unusable: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One job (`{"id", "input"}`) to its result or its error object; `Cancelled` (from `progress`) propagates."""
    job_id = str(job.get("id") or "local")
    try:
        return worker.handle(job.get("input"), job_id, progress)
    except Cancelled:
        raise
    except Exception as exc:
        return failure(worker, exc, job_id, on_unusable)


def make_handler(
    worker: Worker,
    *,
    progress: ProgressFn | None = None,
    on_unusable: Callable[[], None] | None = None,
) -> Handler:
    """`handle(job)` on this worker: `progress` gets each job's `done, total` chunks; `on_unusable` is called when
    a job leaves the worker unusable (see `failure`)."""
    return lambda job: run_job(worker, job, progress, on_unusable)


def cancellable(progress: ProgressFn | None, cancel: threading.Event, job_id: str = "local") -> ProgressFn:
    """A progress callback that also stops the job at the next batch once `cancel` is set."""

    def on_progress(done: int, total: int) -> None:
        if cancel.is_set():
            log.info("job %s cancelled: generation stopped after %d of %d chunks", job_id, done, total)
            raise Cancelled
        if progress is not None:
            progress(done, total)

    return on_progress


def misconfigured(problem: str) -> Handler:
    """The handler of a worker whose environment is invalid: every job gets `internal` naming the problem."""
    message = f"the worker is misconfigured: {problem}. Fix the endpoint's environment variables."

    def handle(job: dict[str, Any]) -> dict[str, Any]:
        log.error("job %s refused: %s", job.get("id") or "local", message)
        return error("internal", message)

    return handle


def configured(env: Mapping[str, str]) -> tuple[Worker | None, Handler]:
    """This environment's worker and its handler; a misconfigured environment gives no worker and a handler
    that answers every job with `internal` naming the problem."""
    try:
        worker = Worker(Settings.from_env(env))
    except ValueError as exc:
        log.critical("CONFIGURATION ERROR, answering every job with this error: %s", exc)
        return None, misconfigured(str(exc))
    return worker, make_handler(worker)


_process_lock = threading.Lock()
_process: tuple[Worker | None, Handler] | None = None


def process_worker(env: Mapping[str, str]) -> tuple[Worker | None, Handler]:
    """This process's worker and handler (see `configured`), built from `env` on the first call and kept."""
    global _process
    with _process_lock:
        if _process is None:
            _process = configured(env)
        return _process


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
    """A handler for `env`: a configured, preloaded worker's, or one that explains why it can't work."""
    worker, handle = configured(env)
    if worker is not None:
        preload(worker)
    return handle


def configure_logging(env: Mapping[str, str]) -> None:
    logging.basicConfig(
        level=(env.get("QWEN_TTS_LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries' INFO chatter (config defaults, HTTP connections) drowns the worker's own lines.
    for noisy in ("qwen_tts", "transformers", "botocore", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
