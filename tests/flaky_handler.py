"""Test-only: `handler.py` as it is, except that its first synthesis job fails (`internal`, as a crashed job
would) when FLAKY_FAIL_FIRST is set, and a job's `_delay_s` field (removed before the real handler sees it) makes
it take that much longer (a slow GPU, for a client killed mid-way). Run it like handler.py:
`python tests/flaky_handler.py --rp_serve_api ...`. The real handler answers every job it is given."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runpod

import handler

_start = runpod.serverless.start


def start(config: dict) -> None:
    inner = config["handler"]
    failed: list[str] = []

    async def flaky(job: dict) -> dict:
        if os.environ.get("FLAKY_FAIL_FIRST") and not failed and job["input"].get("action") in (None, "synthesize"):
            failed.append(job["id"])
            print(f"FLAKY: failing job {job['id']}", flush=True)
            return {"error": json.dumps({"code": "internal", "message": "injected failure"})}
        delay_s = float(job["input"].pop("_delay_s", 0))
        if delay_s:
            await asyncio.sleep(delay_s)
        result = inner(job)
        return await result if inspect.isawaitable(result) else result

    _start({**config, "handler": flaky})


runpod.serverless.start = start

if __name__ == "__main__":
    sys.exit(handler.main())
