#!/usr/bin/env python3
"""Run one job and save its audio: in this process (the default), on a running local API, or on an endpoint.

In this process, through handler.py's handler, with no server and no RunPod account:

    python scripts/local_runpod_test.py                                   # the default job (test_input.json)
    python scripts/local_runpod_test.py --text "Custom text here" --voice male_1
    python scripts/local_runpod_test.py --segments                        # a built-in multi-speaker sample
    python scripts/local_runpod_test.py --save my_audio.wav
    python scripts/local_runpod_test.py --payload my_job.json             # {"input": {...}} or the bare input
    python scripts/local_runpod_test.py --format mp3

The models come from QWEN_TTS_MODEL_DIR (default ./models) or the Hugging Face caches; a missing one is
downloaded, and when that fails the script says so loudly and uses the tiny random checkpoint (its "speech" is
noise, and every chunk is capped at a few frames). `--tiny` goes straight to the tiny checkpoint.

Job flags (--text, --segments, --voice, --model, --language, --instruct, --ref-audio FILE|URL, --ref-text,
--seed, --format, --captions) build on --payload (or --input, inline JSON or @file) and win over its fields.
Without either, --text / --segments start a new job; other flags change test_input.json's. --ref-audio makes
the job a clone: it drops a voice the flags did not give, and names 1.7B-Base unless the job names a Base model.

The same job elsewhere:

    python handler.py --rp_serve_api &                                    # a local worker API on :8000
    python scripts/local_runpod_test.py --url http://localhost:8000 --segments
    RUNPOD_API_KEY=... python scripts/local_runpod_test.py --endpoint-id abc123 --format mp3

(--endpoint-id goes through the runpod client, with the key from --api-key or RUNPOD_API_KEY.)

`--stream` sends the job with `stream: true` and prints one line per stream item. In process it runs through
handler.py's generator handler (the one a QWEN_TTS_STREAMING=true worker serves), so items print as they are
made; `--url` uses the local API's /run + /stream/{id} (the worker must run with QWEN_TTS_STREAMING=true; that
route answers once the job is done, so the lines come at the end); `--endpoint-id` reads the endpoint's
/stream/{id} through the runpod client's `Job.stream()`. The items' audio is saved joined: pcm items (a stream's
default format) as one 16-bit WAV (default `output.wav`; raw bytes when --save or --format says .pcm), wav
items (a WAV file each) as one WAV, other formats' bytes concatenated (they are one file).

Prints the job's status, timing and metadata, shows progress for jobs of more than one batch, writes the
audio to --save (default `output.<format>`; an `audio_url` is downloaded) and exits 0. A failed job prints its
error code and message and exits 1; a usage problem exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import time
import wave
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_INPUT_FILE = ROOT / "test_input.json"
DEFAULT_URL = "http://localhost:8000"
PENDING = ("IN_QUEUE", "IN_PROGRESS")
POLL_INTERVAL_S = 1.0
CLONE_MODEL = "1.7B-Base"
LOCAL_JOB_ID = "local"

# --segments: a two-speaker exchange, each turn one chunk.
SAMPLE_SEGMENTS = [
    {"text": "Welcome to the show. Today we are talking about text to speech on RunPod.", "voice": "male_1"},
    {"text": "Thanks for having me! It is great to be here.", "voice": "female_1"},
    {"text": "So, how long does a whole podcast take to make?", "voice": "male_1"},
    {"text": "Less time than it takes to listen to it, on a good GPU.", "voice": "female_1"},
]


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class JobFailed(Exception):
    """The request or the job failed: exit code 1."""


def _unwrap(data: Any) -> dict[str, Any]:
    if isinstance(data, dict) and isinstance(data.get("input"), dict):
        data = data["input"]
    if not isinstance(data, dict):
        raise UsageError('the job must be a JSON object, {"input": {...}} or the bare input, e.g. {"text": "Hi."}')
    return data


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the input file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None


def load_input(raw: str | None) -> dict[str, Any]:
    """The job input from inline JSON, `@file.json`, or test_input.json; a `{"input": {...}}` wrapper is removed."""
    if raw is None:
        return _unwrap(_read_json(DEFAULT_INPUT_FILE))
    if raw.startswith("@"):
        return _unwrap(_read_json(Path(raw[1:])))
    try:
        return _unwrap(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise UsageError(f"the input is not valid JSON: {exc}") from None


def _ref_audio(value: str) -> str:
    if value.startswith(("http://", "https://", "data:")):
        return value
    try:
        return base64.b64encode(Path(value).read_bytes()).decode("ascii")
    except OSError as exc:
        raise UsageError(f"cannot read --ref-audio: {exc}") from None


def build_job(args: argparse.Namespace) -> dict[str, Any]:
    """The job input: --payload / --input (else test_input.json, unless --text / --segments start a new job),
    with every given flag winning over its field."""
    if args.payload is not None:
        job = _unwrap(_read_json(args.payload))
    elif args.input is not None:
        job = load_input(args.input)
    elif args.text is not None or args.segments:
        job = {}
    else:
        job = load_input(None)
    job = dict(job)
    if args.text is not None:
        job.pop("segments", None)
        job["text"] = args.text
    if args.segments:
        job.pop("text", None)
        job["segments"] = [dict(s) for s in SAMPLE_SEGMENTS]
    fields = {
        "model": args.model,
        "voice": args.voice,
        "language": args.language,
        "instruct": args.instruct,
        "ref_text": args.ref_text,
        "seed": args.seed,
        "output_format": args.format,
        "captions": args.captions,
        "stream": True if args.stream else None,
    }
    job.update({key: value for key, value in fields.items() if value is not None})
    if args.ref_audio is not None:
        job["ref_audio"] = _ref_audio(args.ref_audio)
        if args.voice is None:
            job.pop("voice", None)
        from audio.catalog import find_model

        named = find_model(str(job.get("model") or ""))
        if named is None or named.kind != "base":
            job["model"] = CLONE_MODEL
    return job


def job_models(job: Mapping[str, Any], default_model: str) -> list[str]:
    """The catalog models a synthesis job uses (none for an info action); unknown names are the worker's to refuse."""
    from audio.catalog import find_model

    if job.get("action", "synthesize") != "synthesize":
        return []
    names = [job.get("model") or default_model]
    names += [s["model"] for s in job.get("segments") or [] if isinstance(s, dict) and s.get("model")]
    return list(dict.fromkeys(v.name for v in map(find_model, map(str, names)) if v is not None))


class Progress:
    """Prints `done/total chunks` to stderr, once a job turns out to need more than one batch."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if done < total or self.shown:
            self.shown = True
            print(f"progress: {done}/{total} chunks", file=sys.stderr, flush=True)


def local_worker_env(
    job_input: dict[str, Any],
    env: Mapping[str, str],
    *,
    tiny: bool,
    download: Callable[..., object] | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment of an in-process worker for this job (its models found, fetched or the tiny fallback) and
    the job, capped as the tiny checkpoint needs. `download` fetches a missing model (default: the HF hub)."""
    from audio.settings import Settings
    from scripts.speak import TINY_MAX_NEW_TOKENS, model_dir_for

    env = dict(env)
    env.setdefault("QWEN_TTS_MODEL_DIR", str(ROOT / "models"))
    env["QWEN_TTS_PRELOAD"] = "none"  # a CLI run loads what its job uses, on first use
    try:
        default_model = Settings.from_env(env).default_model
    except ValueError as exc:
        raise UsageError(f"configuration: {exc}") from None
    models = job_models(job_input, default_model)
    if models:
        model_dir, is_tiny = model_dir_for(models, env, tiny=tiny, download=download)
        env["QWEN_TTS_MODEL_DIR"] = str(model_dir)
        if is_tiny and "openai_route" not in job_input:
            params = dict(job_input.get("params") or {})
            params.setdefault("max_new_tokens", TINY_MAX_NEW_TOKENS)
            job_input = {**job_input, "params": params}
    from audio.serving.service import configure_logging

    configure_logging(env)
    return env, job_input


def run_in_process(
    job_input: dict[str, Any],
    env: Mapping[str, str],
    *,
    tiny: bool,
    progress: Callable[[int, int], None],
    download: Callable[..., object] | None = None,
) -> dict[str, Any]:
    """Run the job through handler.py's handler here; the result shaped like RunPod's job status."""
    env, job_input = local_worker_env(job_input, env, tiny=tiny, download=download)
    from handler import build

    _, handle = build(env, progress=progress)
    result = handle({"id": LOCAL_JOB_ID, "input": job_input})
    if "error" in result:
        return {"id": LOCAL_JOB_ID, "status": "FAILED", "error": result["error"]}
    return {"id": LOCAL_JOB_ID, "status": "COMPLETED", "output": result}


def stream_in_process(
    job_input: dict[str, Any],
    env: Mapping[str, str],
    *,
    tiny: bool,
    download: Callable[..., object] | None = None,
) -> Iterator[dict[str, Any]]:
    """The job's stream items as they are made, from handler.py's generator handler (a streaming deployment's)."""
    env, job_input = local_worker_env(job_input, env, tiny=tiny, download=download)
    from handler import build, make_stream_handler

    worker, _ = build(env)
    items = make_stream_handler(worker)({"id": LOCAL_JOB_ID, "input": job_input})
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(items))
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(items.aclose())  # an early stop cancels the generation
        loop.close()


def stream_local_api(url: str, job_input: dict[str, Any], *, timeout_s: float) -> Iterator[dict[str, Any]]:
    """The local API's stream: POST /run stores the job, POST /stream/{id} runs it and answers with every item."""
    base = url.rstrip("/").removesuffix("/runsync")
    try:
        queued = _json(requests.post(f"{base}/run", json={"input": job_input}, timeout=timeout_s))
        if "id" not in queued:
            raise JobFailed(f"{base}/run answered {json.dumps(queued)[:300]}")
        body = _json(requests.post(f"{base}/stream/{queued['id']}", timeout=timeout_s))
    except requests.RequestException as exc:
        raise JobFailed(f"request to {base} failed: {type(exc).__name__}: {exc}") from None
    if body.get("status") != "COMPLETED":
        error = job_error(body) or body.get("status")
        hint = " (is the worker running with QWEN_TTS_STREAMING=true?)" if "generator" in str(error) else ""
        raise JobFailed(f"job {queued['id']} {body.get('status', 'FAILED')}: {error}{hint}")
    for part in body.get("stream") or []:
        yield part.get("output")


def stream_endpoint(
    endpoint_id: str, api_key: str, job_input: dict[str, Any], env: Mapping[str, str], *, timeout_s: float
) -> Iterator[dict[str, Any]]:
    """A deployed endpoint's stream: /run with the runpod client, then its `Job.stream()` (/stream/{id} polls)."""
    import runpod
    from runpod.endpoint.runner import Job, RunPodClient

    client = RunPodClient(api_key=api_key)
    client.endpoint_url_base = (env.get("RUNPOD_ENDPOINT_BASE_URL") or runpod.endpoint_url_base).rstrip("/")
    try:
        queued = client.post(f"{endpoint_id}/run", {"input": job_input}, timeout=int(min(timeout_s, 60)))
        if queued.get("status") not in (*PENDING, "COMPLETED"):
            raise JobFailed(f"job {queued.get('id', '?')} {queued.get('status')}: {job_error(queued)}")
        job = Job(endpoint_id, queued["id"], client)
        yield from job.stream()
    except (requests.RequestException, RuntimeError) as exc:  # RuntimeError: the client's 401 message
        raise JobFailed(f"endpoint {endpoint_id}: {type(exc).__name__}: {exc}") from None
    if job.job_status not in (None, "COMPLETED"):
        raise JobFailed(f"job {job.job_id} ended with status {job.job_status}")


def _progress_line(body: dict[str, Any], last: list[str]) -> None:
    """While a remote job is pending, print its status (and progress text) when it changes."""
    line = str(body.get("status"))
    if isinstance(body.get("output"), str):
        line += f" {body['output']}"
    if line != (last[0] if last else None):
        last[:] = [line]
        print(f"job {body.get('id', '?')}: {line}", file=sys.stderr, flush=True)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise JobFailed(f"HTTP {response.status_code} from {response.url}: {response.text[:300]}")
    if response.status_code >= 400 and "status" not in body:
        raise JobFailed(f"HTTP {response.status_code} from {response.url}: {json.dumps(body)[:300]}")
    return body


def local_api_url(url: str) -> str:
    return f"{url.rstrip('/').removesuffix('/runsync')}/runsync"


def run_job(url: str, job_input: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """POST the job to a local API's /runsync, then poll /status/{id} while it is pending; the final response."""
    deadline = time.monotonic() + timeout_s
    last: list[str] = []
    try:
        body = _json(requests.post(url, json={"input": job_input}, timeout=timeout_s))
        while body.get("status") in PENDING:
            _progress_line(body, last)
            if time.monotonic() > deadline:
                raise JobFailed(f"job {body.get('id')} still {body['status']} after {timeout_s:.0f} s")
            time.sleep(POLL_INTERVAL_S)
            # The local test API has POST routes only.
            body = _json(requests.post(f"{url.removesuffix('/runsync')}/status/{body['id']}", timeout=timeout_s))
    except requests.RequestException as exc:
        raise JobFailed(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
    return body


def endpoint_key(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    key = args.api_key or env.get("RUNPOD_API_KEY")
    if not key:
        raise UsageError("a deployed endpoint needs an API key: --api-key KEY or RUNPOD_API_KEY")
    return key


def run_endpoint(
    endpoint_id: str, api_key: str, job_input: dict[str, Any], env: Mapping[str, str], *, timeout_s: float
) -> dict[str, Any]:
    """Submit the job to a deployed endpoint with the runpod client (/run), then poll its status until done."""
    import runpod
    from runpod.endpoint.runner import RunPodClient

    client = RunPodClient(api_key=api_key)
    client.endpoint_url_base = (env.get("RUNPOD_ENDPOINT_BASE_URL") or runpod.endpoint_url_base).rstrip("/")
    request_timeout = int(min(timeout_s, 60))
    deadline = time.monotonic() + timeout_s
    last: list[str] = []
    try:
        body = client.post(f"{endpoint_id}/run", {"input": job_input}, timeout=request_timeout)
        while body.get("status") in PENDING:
            _progress_line(body, last)
            if time.monotonic() > deadline:
                raise JobFailed(f"job {body.get('id')} still {body['status']} after {timeout_s:.0f} s")
            time.sleep(POLL_INTERVAL_S)
            body = client.get(f"{endpoint_id}/status/{body['id']}", timeout=request_timeout)
    except (requests.RequestException, RuntimeError) as exc:  # RuntimeError: the client's 401 message
        raise JobFailed(f"endpoint {endpoint_id}: {type(exc).__name__}: {exc}") from None
    if not isinstance(body, dict):
        raise JobFailed(f"endpoint {endpoint_id} answered {str(body)[:300]}")
    return body


def job_error(body: dict[str, Any]) -> str | None:
    """'code: message' when the job failed, else None. The error may be a dict, its JSON, or plain text."""
    output = body.get("output")
    error = body.get("error")
    if error is None and isinstance(output, dict):
        error = output.get("error")
    if error is None:
        status = body.get("status")
        return None if status == "COMPLETED" else f"job ended with status {status}"
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except ValueError:
            return error
    if isinstance(error, dict) and "code" in error:
        return f"{error['code']}: {error.get('message', '')}"
    return json.dumps(error)


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise JobFailed(f"cannot write {path}: {exc}") from None


def save_audio(output: dict[str, Any], out: Path | None, *, timeout_s: float) -> Path | None:
    """Write the job's audio to `out` (default `output.<format>`); None if the output carries no audio."""
    metadata = output.get("metadata") or {}
    path = out or Path(f"output.{metadata.get('format', 'wav')}")
    if "audio_base64" in output:
        try:
            data = base64.b64decode(output["audio_base64"], validate=True)
        except ValueError as exc:
            raise JobFailed(f"audio_base64 is not valid base64: {exc}") from None
    elif "audio_url" in output:
        try:
            response = requests.get(output["audio_url"], timeout=timeout_s)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise JobFailed(f"downloading audio_url failed: {type(exc).__name__}: {exc}") from None
        data = response.content
    else:
        return None
    _write(path, data)
    return path


def report(body: dict[str, Any], job_input: dict[str, Any], args: argparse.Namespace, elapsed_s: float) -> None:
    """Print the outcome and save what it carries; JobFailed for a failed job."""
    error = job_error(body)
    if error is not None:
        raise JobFailed(f"job {body.get('id', '?')} {body.get('status', 'FAILED')}: {error}")
    output = body.get("output")
    status = f"{body.get('status')} in {elapsed_s:.1f} s (job {body.get('id', '?')})"
    if isinstance(output, dict) and isinstance(output.get("items"), list):
        report_items(output, status, args)
        return
    if not (isinstance(output, dict) and ("audio_base64" in output or "audio_url" in output)):
        print(status)
        print(json.dumps(output, indent=2))  # an info action: the whole answer
        return
    metadata = output.get("metadata", {})
    if "duration_seconds" in metadata:
        status += f": {metadata['duration_seconds']:.2f} s of audio"
    print(status)
    print(json.dumps(metadata, indent=2))
    path = save_audio(output, args.save, timeout_s=args.timeout)
    print(f"wrote {path.stat().st_size} bytes to {path}")
    if isinstance(output.get("captions"), str):
        captions = path.with_suffix(f".{job_input.get('captions') or 'srt'}")
        _write(captions, output["captions"].encode("utf-8"))
        print(f"wrote captions to {captions}")


def report_items(output: dict[str, Any], status: str, args: argparse.Namespace) -> None:
    """A `join: false` job: each item saved beside --save as `<stem>.<index><suffix>` (output.0.wav, ...)."""
    metadata = output.get("metadata", {})
    print(f"{status}: {len(output['items'])} audio items")
    print(json.dumps(metadata, indent=2))
    base = args.save or Path(f"output.{metadata.get('format', 'wav')}")
    for i, item in enumerate(output["items"]):
        path = save_audio(item, base.with_name(f"{base.stem}.{i}{base.suffix}"), timeout_s=args.timeout)
        if path is None:
            raise JobFailed(f"item {i} carries no audio")
        print(f"wrote {path.stat().st_size} bytes to {path}")


def item_line(item: dict[str, Any]) -> str:
    line = f"item {item.get('index', '?')}"
    if "chunk" in item:
        line += f": segment {item['segment']} chunk {item['chunk']}"
    if "start_seconds" in item:
        line += f", {item['start_seconds']:.2f} s + {item['duration_seconds']:.2f} s"
    return line + f" ({len(base64.b64decode(item.get('audio_base64') or ''))} bytes)"


def joined_audio(items: list[dict[str, Any]], path: Path) -> bytes:
    """The stream's audio as one file: pcm as a 16-bit WAV (raw if `path` is not .wav), wav items' samples in one
    WAV, any other format's bytes concatenated."""
    fmt = items[-1]["format"]
    rate = items[-1]["sample_rate"]
    data = [base64.b64decode(item["audio_base64"]) for item in items]
    if fmt == "wav":
        frames = []
        for blob in filter(None, data):
            with wave.open(io.BytesIO(blob)) as w:
                frames.append(w.readframes(w.getnframes()))
        data = frames
    elif fmt != "pcm" or path.suffix.lower() != ".wav":
        return b"".join(data)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(data))
    return buf.getvalue()


def report_stream(
    items: Iterator[dict[str, Any]], job_input: dict[str, Any], args: argparse.Namespace, started: float
) -> None:
    """Print a line per stream item as it comes, then the metadata; save the joined audio (and captions)."""
    got: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise JobFailed(f"the stream carried {str(item)[:300]}")
        if "error" in item:
            where = "local" if not (args.url or args.endpoint_id) else "stream"
            raise JobFailed(f"job {where} FAILED: {job_error({'status': 'FAILED', 'error': item['error']})}")
        if "audio_base64" not in item or "index" not in item:  # a non-stream job's one result
            raise JobFailed("the worker answered with a whole result, not stream items: is it a streaming worker?")
        got.append(item)
        print(item_line(item), flush=True)
    if not got or "metadata" not in got[-1]:
        raise JobFailed(f"the stream ended after {len(got)} item(s) without the last item's metadata")
    metadata = got[-1]["metadata"]
    print(
        f"COMPLETED in {time.perf_counter() - started:.1f} s: {len(got)} stream items, "
        f"{metadata['duration_seconds']:.2f} s of audio"
    )
    print(json.dumps(metadata, indent=2))
    fmt = got[-1]["format"]
    default = "wav" if fmt == "pcm" and "output_format" not in job_input else fmt
    path = args.save or Path(f"output.{default}")
    data = joined_audio(got, path)
    _write(path, data)
    print(f"wrote {len(data)} bytes to {path}")
    if isinstance(got[-1].get("captions"), str):
        captions = path.with_suffix(f".{job_input.get('captions') or 'srt'}")
        _write(captions, got[-1]["captions"].encode("utf-8"))
        print(f"wrote captions to {captions}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        nargs="?",
        const=DEFAULT_URL,
        help=f"send the job to a running local API (handler.py --rp_serve_api; default {DEFAULT_URL})",
    )
    where.add_argument("--endpoint-id", help="send the job to this deployed RunPod endpoint")
    parser.add_argument("--api-key", help="RunPod API key for --endpoint-id (default: RUNPOD_API_KEY)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--payload", type=Path, metavar="FILE", help='job file: {"input": {...}} or the bare input')
    source.add_argument("--input", help="job input as inline JSON or @file.json")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help="text to speak")
    text.add_argument("--segments", action="store_true", help="speak a built-in multi-speaker sample")
    parser.add_argument("--voice", help="speaker, e.g. Ryan, Vivian, male_1, female_1")
    parser.add_argument("--model", help="e.g. 1.7B-CustomVoice, 0.6B-CustomVoice, 1.7B-Base, 1.7B-VoiceDesign")
    parser.add_argument("--language", help="e.g. English, en, zh-CN (default: Auto)")
    parser.add_argument("--instruct", help="style instruction (CustomVoice) or voice description (VoiceDesign)")
    parser.add_argument("--ref-audio", metavar="FILE|URL", help="voice to clone (a Base model): a file or a URL")
    parser.add_argument("--ref-text", help="transcript of --ref-audio")
    parser.add_argument("--seed", type=int, help="make sampling reproducible")
    parser.add_argument("--format", help="output format: wav, mp3, flac, opus, aac, pcm")
    parser.add_argument("--captions", choices=["srt", "vtt"], help="ask for captions, saved beside the audio")
    parser.add_argument("--stream", action="store_true", help="stream: true; print each item as it comes")
    parser.add_argument(
        "--save", "--out", dest="save", type=Path, metavar="FILE", help="audio file (default: output.<format>)"
    )
    parser.add_argument("--tiny", action="store_true", help="in process: use the tiny random checkpoint")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job (default: 600)")
    args = parser.parse_args(argv)
    if args.tiny and (args.url or args.endpoint_id):
        parser.error("--tiny is for in-process runs (the worker behind --url / --endpoint-id has its own models)")
    return args


def main(
    argv: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    download: Callable[..., object] | None = None,
) -> int:
    args = parse_args(argv)
    env = os.environ if env is None else env
    try:
        job_input = build_job(args)
        started = time.perf_counter()
        if args.stream:
            if args.endpoint_id:
                key = endpoint_key(args, env)
                items = stream_endpoint(args.endpoint_id, key, job_input, env, timeout_s=args.timeout)
            elif args.url:
                items = stream_local_api(args.url, job_input, timeout_s=args.timeout)
            else:
                items = stream_in_process(job_input, env, tiny=args.tiny, download=download)
            report_stream(items, job_input, args, started)
            return 0
        if args.endpoint_id:
            key = endpoint_key(args, env)
            started = time.perf_counter()
            body = run_endpoint(args.endpoint_id, key, job_input, env, timeout_s=args.timeout)
        elif args.url:
            body = run_job(local_api_url(args.url), job_input, timeout_s=args.timeout)
        else:
            body = run_in_process(job_input, env, tiny=args.tiny, progress=Progress(), download=download)
        report(body, job_input, args, time.perf_counter() - started)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
