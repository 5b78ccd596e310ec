"""The HTTP mode (QWEN_TTS_MODE=http) for RunPod load-balancing endpoints: an ASGI app (FastAPI) on the worker.

Owns the routes, their status codes and error shapes, the health states (`/ping`: 204 while the preload runs,
200 when ready, 200 after a failed preload too, whose requests then get 503 with the reason), admission (at most
QWEN_TTS_CONCURRENCY requests run, QWEN_TTS_MAX_QUEUE more wait, past that 429 with Retry-After), request
bodies (at most QWEN_TTS_MAX_REQUEST_BYTES, refused before they are read), its OpenAPI document at /openapi.json
(audio/serving/openapi.py) and streamed bodies (sent only once
their first audio is made, so every error before it has a status). Every request runs the worker's own code
(`Worker.handle`, `Worker.plan_synthesis`, `streaming`) on a thread, through the same service as the queue's jobs
(audio/serving/service.py): no second pipeline. A client that disconnects cancels its generation at the next
piece or batch.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) at runtime.
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from audio import catalog
from audio.errors import Cancelled, InputError, TTSError
from audio.model_loader import find_model_path
from audio.openai_compat import OPENAI_MODEL_NAMES, speech_request
from audio.output import encoders
from audio.serving import live, openapi, streaming
from audio.serving.service import STATUS_FOR_CODE, cancellable, error, failure, make_handler
from audio.serving.service import preload as preload_worker

log = logging.getLogger(__name__)

RATE_LIMITED = "rate_limited"  # the admission's 429
OPENAI_ERROR_TYPE = {400: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded"}
RETRY_AFTER_S = 1
SSE_TYPE = "text/event-stream"
CLIENT_GONE_STATUS = 499  # the answer to a client that disconnected, which nobody reads (nginx's "client closed")


class Health:
    """loading -> ready | failed (with the reason callers get)."""

    def __init__(self) -> None:
        self.state = "loading"
        self.reason = ""


class Admission:
    """At most `running` requests at once and `waiting` more queued; past that a request is turned away. Lives in
    the server's one event loop."""

    def __init__(self, running: int, waiting: int):
        self.limit = running + waiting
        self.running = running
        self.inside = 0
        self._slots: asyncio.Semaphore | None = None

    def try_enter(self) -> bool:
        if self.inside >= self.limit:
            return False
        self.inside += 1
        return True

    def leave(self) -> None:
        self.inside -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.running)
        async with self._slots:
            yield


def _error_body(code: str, message: str, *, openai: bool, status: int) -> dict[str, Any]:
    if openai:
        return {
            "error": {
                "message": message,
                "type": OPENAI_ERROR_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                "param": None,
                "code": code,
            }
        }
    return error(code, message)


def create_app(worker: Any, *, preload: bool = True) -> Any:
    """The app for one worker. `preload` runs `worker.preload()` on a thread at startup (else ready at once)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    settings = worker.settings
    health = Health()
    admission = Admission(settings.concurrency, settings.max_queue)

    def _preload() -> None:
        preload_worker(worker)  # a failure is kept on the worker: its jobs then answer model_unavailable
        if worker.startup_error is not None:
            health.state, health.reason = "failed", worker.startup_error
            log.error("preload failed, answering 503: %s", worker.startup_error)
        else:
            health.state = "ready"
            log.info("ready: serving HTTP on port %d", settings.port)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if preload:
            threading.Thread(target=_preload, name="tts-preload", daemon=True).start()
        else:
            health.state = "ready"
        yield

    app = FastAPI(title="Qwen3-TTS worker", lifespan=lifespan, docs_url=None, redoc_url=None)
    described = openapi.document(app.title, sorted({*STATUS_FOR_CODE, RATE_LIMITED}))
    app.openapi = lambda: described  # served at /openapi.json: FastAPI can't see bodies read by hand

    def fail(code: str, message: str, *, openai: bool, status: int | None = None, headers=None) -> Any:
        status = status or STATUS_FOR_CODE.get(code, 500)
        return JSONResponse(_error_body(code, message, openai=openai, status=status), status, headers=headers)

    class HeldStream(StreamingResponse):
        """A streamed body that holds an admission slot and a generation under way: `release` gives them back
        however the response ends. Not in the body's own `finally`: a client gone before the first byte makes
        Starlette drop the body unstarted, and an unstarted generator's `finally` never runs."""

        def __init__(self, body: AsyncIterator[bytes], release: Any, **kwargs: Any):
            super().__init__(body, **kwargs)
            self.release = release

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.release()

    def gone() -> Any:
        return Response(status_code=CLIENT_GONE_STATUS)

    def unavailable(openai: bool) -> Any | None:
        if health.state == "ready":
            return None
        if health.state == "failed":
            return fail("model_unavailable", health.reason, openai=openai)
        return fail(
            "model_unavailable",
            "the worker is still loading its models; retry shortly",
            openai=openai,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.get("/ping")
    async def ping() -> Any:
        if health.state == "loading":
            return Response(status_code=204)
        if worker.unusable is not None:  # a job left the GPU unusable: unhealthy, so RunPod replaces the worker
            return JSONResponse({"status": "unhealthy", "reason": worker.unusable}, 503)
        return JSONResponse({"status": health.state, **({"reason": health.reason} if health.reason else {})})

    async def body_of(request: Request, *, openai: bool) -> tuple[dict | None, Any]:
        raw = await _read_body(request, settings.max_request_bytes)
        if raw is None:
            message = (
                f"the request body is larger than this worker takes ({settings.max_request_bytes} bytes, "
                "QWEN_TTS_MAX_REQUEST_BYTES); send a reference clip by URL or as a saved voice"
            )
            return None, fail("invalid_input", message, openai=openai, status=413)
        try:
            # On a thread: a body near the limit takes a while to parse, and /ping must answer meanwhile.
            body = await asyncio.to_thread(json.loads, raw or b"null")
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            return None, fail("invalid_input", "the request body is not valid JSON", openai=openai)
        if not isinstance(body, dict):
            return None, fail("invalid_input", "the request body must be a JSON object", openai=openai)
        return body, None

    def busy(openai: bool) -> Any:
        return fail(
            RATE_LIMITED,
            f"the worker is busy ({admission.limit} requests running or queued); retry after {RETRY_AFTER_S}s",
            openai=openai,
            status=429,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    async def admitted(openai: bool, call) -> Any:
        if (refused := unavailable(openai)) is not None:
            return refused
        if not admission.try_enter():
            return busy(openai)
        try:
            return await call()
        finally:
            admission.leave()

    @app.post("/run")
    async def run(request: Request) -> Any:
        body, bad = await body_of(request, openai=False)
        if bad is not None:
            return bad
        job_input = body.get("input", body) if isinstance(body.get("input"), dict) else body

        async def call() -> Any:
            async with _cancel_on_disconnect(request) as cancel, admission.slot():
                handle = make_handler(worker, progress=cancellable(None, cancel))
                try:
                    if cancel.is_set():  # gone while it waited for a slot
                        raise Cancelled
                    result = await asyncio.to_thread(handle, {"id": f"http-{time.time_ns()}", "input": job_input})
                except Cancelled:
                    return gone()
            if "error" in result:
                return JSONResponse(result, STATUS_FOR_CODE.get(result["error"]["code"], 500))
            return JSONResponse(result)

        return await admitted(False, call)

    @app.get("/v1/models")
    async def models() -> Any:
        present = [n for n, v in catalog.MODELS.items() if find_model_path(v, settings) is not None]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "qwen"} for n in present]
        data += [{"id": n, "object": "model", "created": 0, "owned_by": "qwen3-tts-worker"} for n in OPENAI_MODEL_NAMES]
        return {"object": "list", "data": data}

    @app.get("/v1/audio/voices")
    async def voices() -> Any:
        out = worker.info("voices")
        out["saved"] = (await asyncio.to_thread(worker.voice_actions.handle, {"action": "list_voices"}))["voices"]
        return out

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Any:
        body, bad = await body_of(request, openai=True)
        if bad is not None:
            return bad

        async def call() -> Any:
            try:
                speech_req = speech_request(body, settings.default_model)
                job = {**speech_req.job, "delivery": "base64"}
                fmt = job["output_format"]
                streamed = speech_req.speed == 1.0 and fmt in encoders.STREAM_FORMATS
                if speech_req.stream_format == "sse" and not streamed:
                    formats = ", ".join(encoders.STREAM_FORMATS)
                    raise InputError(f"stream_format sse needs speed 1.0 and a format that streams: {formats}")
                if not streamed:
                    return await whole(job, speech_req.speed)
                plan = await asyncio.to_thread(worker.plan_synthesis, {**job, "stream": True})
                streaming.check_streamable(plan)
            except TTSError as exc:
                return fail(exc.code, exc.message, openai=True)
            return await streamed_response(plan, sse=speech_req.stream_format == "sse")

        async def streamed_response(plan: Any, *, sse: bool) -> Any:
            """The stream started and its first event taken before anything is sent: the plan's checks, the
            reference's fetch and decoding and the model's loading are all behind it, so their errors are
            answered with a status and a JSON body, not a 200 that breaks off."""
            slot = admission.slot()
            held = False
            cancel = threading.Event()
            try:
                async with _cancel_on_disconnect(request, cancel):
                    await slot.__aenter__()
                    held = True
                    if cancel.is_set():  # gone while it waited for a slot
                        raise Cancelled
                    parts = _encoded(worker, plan, cancel)
                    first = await asyncio.to_thread(next, parts, None)
                if first is None and cancel.is_set():
                    raise Cancelled
            except BaseException as exc:
                cancel.set()
                if held:
                    await slot.__aexit__(None, None, None)
                if isinstance(exc, Cancelled):
                    return gone()
                if not isinstance(exc, Exception):
                    raise
                err = failure(worker, exc, "http")["error"]
                return fail(err["code"], err["message"], openai=True)
            released = False

            async def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    cancel.set()
                    await slot.__aexit__(None, None, None)
                    admission.leave()

            media = SSE_TYPE if sse else _media_type(plan.output_format, plan.wav_header)
            return HeldStream(_stream_body(parts, first, cancel, plan, sse=sse), release, media_type=media)

        async def whole(job: dict, speed: float) -> Any:
            async with _cancel_on_disconnect(request) as cancel, admission.slot():

                def synthesize() -> dict:
                    if cancel.is_set():  # gone while it waited for a slot
                        raise Cancelled
                    plan = dataclasses.replace(worker.plan_synthesis(job), speed=speed)
                    return worker.synthesize(plan, f"http-{time.time_ns()}", cancellable(None, cancel))

                try:
                    result = await asyncio.to_thread(synthesize)
                except Cancelled:
                    return gone()
                except Exception as exc:
                    err = failure(worker, exc, "http")["error"]
                    return fail(err["code"], err["message"], openai=True)
            fmt = result["metadata"]["format"]
            return Response(
                base64.b64decode(result["audio_base64"]), media_type=_media_type(fmt, job.get("wav_header"))
            )

        if (refused := unavailable(True)) is not None:
            return refused
        if not admission.try_enter():
            return busy(True)
        response = None
        try:
            response = await call()
            return response
        finally:
            if not isinstance(response, StreamingResponse):  # a stream leaves when it ends (HeldStream)
                admission.leave()

    def admit_live() -> Any | None:
        if (refused := unavailable(True)) is not None:
            return refused
        return None if admission.try_enter() else busy(True)

    live.add_route(app, worker, admit=admit_live, leave=admission.leave)
    return app


async def _read_body(request: Any, limit_bytes: int) -> bytes | None:
    """The request's body, or None once it is known to be longer than `limit_bytes`: from its Content-Length
    before any of it is read, else as it arrives (a chunked body), so a refused body is never held whole."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit_bytes:
        return None
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit_bytes:
            return None
        parts.append(part)
    return b"".join(parts)


def _media_type(fmt: str, wav_header: bool) -> str:
    return encoders.WAV_CONTENT_TYPE if wav_header else encoders.CONTENT_TYPES[fmt]


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(request: Any, cancel: threading.Event | None = None) -> AsyncIterator[threading.Event]:
    """An event set when the client disconnects, while the block runs (its body already read): a job given it
    through `cancellable` stops at its next batch. Starlette never cancels a handler whose client went away."""
    cancel = cancel or threading.Event()

    async def watch() -> None:
        # With the body read, the next ASGI message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        log.info("client gone: its generation stops at the next piece or batch")
        cancel.set()

    watcher = asyncio.create_task(watch())
    try:
        yield cancel
    except asyncio.CancelledError:  # the server is shutting down
        cancel.set()
        raise
    finally:
        watcher.cancel()


async def _stream_body(
    parts: Iterator[bytes], first: bytes | None, cancel: threading.Event, plan: Any, *, sse: bool
) -> AsyncIterator[bytes]:
    """The streamed body from its first part on: encoded audio as it is made, or OpenAI's speech events
    (`speech.audio.delta` with base64 audio, then `speech.audio.done`). Cancelled (client gone): the generation
    stops at its next piece."""
    complete = False
    part = first
    try:
        while part is not None:
            if not part:
                part = await asyncio.to_thread(next, parts, None)
                continue
            if sse:
                event = {"type": "speech.audio.delta", "audio": base64.b64encode(part).decode()}
                yield f"data: {json.dumps(event)}\n\n".encode()
            else:
                yield part
            part = await asyncio.to_thread(next, parts, None)
        if sse:
            chars = sum(len(s.text) for s in plan.segments)
            usage = {"input_tokens": chars, "output_tokens": 0, "total_tokens": chars}
            yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()
        complete = True
    finally:
        cancel.set()
        if not complete:
            log.info("speech stream ended early (client gone or failed): its generation stops at the next piece")
        with contextlib.suppress(ValueError):  # still running on its thread: `cancel` stops it
            parts.close()


def _encoded(worker: Any, plan: Any, cancel: threading.Event) -> Iterator[bytes]:
    rate = plan.sample_rate or worker.generator.get_model(plan.segments[0].model.name).sample_rate
    encoder = encoders.StreamEncoder(plan.output_format, rate, wav_header=plan.wav_header)
    stream = streaming.AudioStream(worker, plan, cancel=cancel)
    try:
        for event in stream:
            if isinstance(event, streaming.Finished):
                yield (encoder.push(event.last.samples) if event.last else b"") + encoder.finish()
            else:
                yield encoder.push(event.samples)
    except Cancelled:
        return
    except Exception as exc:  # the body is under way: no error can be sent, but an unusable GPU is noted
        worker.note_failure(exc)
        raise
    finally:
        stream.close()
        encoder.close()


def serve(worker: Any) -> int:
    """Run the HTTP mode until SIGTERM/SIGINT (uvicorn finishes the requests in flight, then exits)."""
    import uvicorn

    settings = worker.settings
    app = create_app(worker)
    # websockets' sans-I/O protocol: a send to a client that doesn't read waits (live sessions count what waits).
    config = uvicorn.Config(app, host="0.0.0.0", port=settings.port, log_level="warning", ws="websockets-sansio")
    servers = [uvicorn.Server(config)]
    if settings.port_health != settings.port:
        from fastapi import FastAPI

        health_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        health_app.add_api_route("/ping", next(r.endpoint for r in app.routes if getattr(r, "path", "") == "/ping"))
        servers.append(
            _Quiet(uvicorn.Config(health_app, host="0.0.0.0", port=settings.port_health, log_level="warning"))
        )

    async def run_all() -> None:
        async def follow() -> None:  # the health server stops with the main one
            while not servers[0].should_exit:
                await asyncio.sleep(0.2)
            for s in servers[1:]:
                s.should_exit = True

        await asyncio.gather(*(s.serve() for s in servers), follow())

    # uvicorn re-raises the signal it shut down on once it is done; with a handler of ours in place that ends
    # here, so a SIGTERM after in-flight requests finished exits 0 (clean), not killed by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    asyncio.run(run_all())
    log.info("HTTP server stopped")
    return 0


class _Quiet:
    """A uvicorn server that leaves the signals to the main one."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # type: ignore[override]
                yield

        return Server(config)
