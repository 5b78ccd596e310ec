#!/usr/bin/env python3
"""Send one job to a running worker and save the audio it returns.

Local worker API (start it first: `python handler.py --rp_serve_api --rp_api_port 8000`):

    python scripts/local_runpod_test.py                                   # test_input.json's job, to out.wav
    python scripts/local_runpod_test.py --input '{"text": "Hi there.", "output_format": "mp3"}'
    python scripts/local_runpod_test.py --input @job.json --out podcast.mp3
    python scripts/local_runpod_test.py --input '{"action": "health"}'

A deployed endpoint (the API key from --api-key or RUNPOD_API_KEY):

    python scripts/local_runpod_test.py --endpoint-id abc123 --input @job.json

Prints the job's status and metadata, writes `audio_base64` (or downloads `audio_url`) to --out (default
`out.<format>`), and exits 0; a failed job prints its error code and message and exits 1; a usage problem
exits 2.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT_FILE = ROOT / "test_input.json"
DEFAULT_URL = "http://localhost:8000"
RUNPOD_API = "https://api.runpod.ai/v2"
PENDING = ("IN_QUEUE", "IN_PROGRESS")
POLL_INTERVAL_S = 1.0


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class JobFailed(Exception):
    """The request or the job failed: exit code 1."""


def load_input(raw: str | None) -> dict[str, Any]:
    """The job input from inline JSON, `@file.json`, or test_input.json; a `{"input": {...}}` wrapper is removed."""
    try:
        if raw is None:
            data = json.loads(DEFAULT_INPUT_FILE.read_text())
        elif raw.startswith("@"):
            data = json.loads(Path(raw[1:]).read_text())
        else:
            data = json.loads(raw)
    except OSError as exc:
        raise UsageError(f"cannot read the input file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"the input is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("input"), dict):
        data = data["input"]
    if not isinstance(data, dict):
        raise UsageError('the input must be a JSON object, e.g. \'{"text": "Hello."}\'')
    return data


def target(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, dict[str, str], bool]:
    """(runsync URL, headers, deployed?) for the arguments."""
    if args.endpoint_id:
        key = args.api_key or env.get("RUNPOD_API_KEY")
        if not key:
            raise UsageError("a deployed endpoint needs an API key: --api-key KEY or RUNPOD_API_KEY")
        return f"{RUNPOD_API}/{args.endpoint_id}/runsync", {"Authorization": f"Bearer {key}"}, True
    base = args.url.rstrip("/").removesuffix("/runsync")
    return f"{base}/runsync", {}, False


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


def run_job(
    url: str, job_input: dict[str, Any], headers: dict[str, str], *, deployed: bool, timeout_s: float
) -> dict[str, Any]:
    """POST the job to /runsync, then poll /status/{id} while it is queued or running; the final response."""
    deadline = time.monotonic() + timeout_s
    try:
        body = _json(requests.post(url, json={"input": job_input}, headers=headers, timeout=timeout_s))
        while body.get("status") in PENDING:
            if time.monotonic() > deadline:
                raise JobFailed(f"job {body.get('id')} still {body['status']} after {timeout_s:.0f} s")
            time.sleep(POLL_INTERVAL_S)
            status_url = f"{url.removesuffix('/runsync')}/status/{body['id']}"
            # The deployed API reads status with GET; the local test API has POST routes only.
            method = requests.get if deployed else requests.post
            body = _json(method(status_url, headers=headers, timeout=timeout_s))
    except requests.RequestException as exc:
        raise JobFailed(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
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


def save_audio(output: dict[str, Any], out: Path | None, *, timeout_s: float) -> Path | None:
    """Write the job's audio to `out` (default `out.<format>`); None if the output carries no audio."""
    metadata = output.get("metadata") or {}
    path = out or Path(f"out.{metadata.get('format', 'wav')}")
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise JobFailed(f"cannot write {path}: {exc}") from None
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="local worker API (default: %(default)s)")
    parser.add_argument("--endpoint-id", help="a deployed RunPod endpoint instead of the local API")
    parser.add_argument("--api-key", help="RunPod API key for --endpoint-id (default: RUNPOD_API_KEY)")
    parser.add_argument("--input", help="job input as JSON or @file.json (default: test_input.json's input)")
    parser.add_argument("--out", type=Path, help="where to write the audio (default: out.<format>)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job (default: 600)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = os.environ if env is None else env
    try:
        job_input = load_input(args.input)
        url, headers, deployed = target(args, env)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        started = time.perf_counter()
        body = run_job(url, job_input, headers, deployed=deployed, timeout_s=args.timeout)
        elapsed = time.perf_counter() - started
        error = job_error(body)
        if error is not None:
            raise JobFailed(f"job {body.get('id', '?')} {body.get('status', 'FAILED')}: {error}")
        output = body.get("output")
        print(f"{body.get('status')} in {elapsed:.1f} s (job {body.get('id', '?')})")
        if isinstance(output, dict) and ("audio_base64" in output or "audio_url" in output):
            print(json.dumps(output.get("metadata", {}), indent=2))
            path = save_audio(output, args.out, timeout_s=args.timeout)
            print(f"wrote {path.stat().st_size} bytes to {path}")
        else:  # an info action: show the whole answer
            print(json.dumps(output, indent=2))
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
