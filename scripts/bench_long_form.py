#!/usr/bin/env python3
"""Wall time of scripts/long_form.py against 1, 2, 4... local API workers (`handler.py --rp_serve_api`) on the
tiny checkpoint: how the fan-out scales with workers on this machine, and what the client costs per part.

    python scripts/bench_long_form.py --workers 1,2,4 --parts 8,16

Prints one row per (workers, parts): wall time, the workers' own generation time summed, the client's overhead
per part (submit to audio on disk, less the job's generation_time_seconds) and the join-and-encode time. Loopback
only; the workers' models come from --model-dir (default: the tiny checkpoint under .cache/, built if missing).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.longform.fanout import LocalApiQueue  # noqa: E402
from scripts.longform.plan import Pauses  # noqa: E402
from scripts.longform.runner import Options, Progress, VoicePlan, run  # noqa: E402

PARAGRAPH = (
    "The ship left the harbour at dawn, and the town grew small behind it. "
    "Nobody on board spoke for a long while; the sea was grey and the wind was cold."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(n: int, model_dir: Path, logs: Path) -> tuple[list[subprocess.Popen], list[str]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "S3_", "RUNPOD_WEBHOOK"))},
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "QWEN_TTS_MODEL_DIR": str(model_dir),
        "QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice",
        "QWEN_TTS_PRELOAD": "0.6B-CustomVoice",
        "HF_HOME": str(logs / "no-hf"),
        "OMP_NUM_THREADS": "1",
    }
    procs, urls = [], []
    for i in range(n):
        port = free_port()
        argv = [
            sys.executable,
            "handler.py",
            "--rp_serve_api",
            "--rp_api_host",
            "127.0.0.1",
            "--rp_api_port",
            str(port),
        ]
        log = open(logs / f"worker{i}.log", "w")  # noqa: SIM115 - the worker writes it until it stops
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}")
    import requests

    deadline = time.monotonic() + 300
    for url, proc in zip(urls, procs, strict=True):
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker {url} did not start; see {logs}")
            try:
                requests.get(f"{url}/docs", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.3)
    return procs, urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--parts", default="8,16")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="frames per chunk on the tiny model")
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args(argv)
    model_dir = args.model_dir
    if model_dir is None:
        from scripts.build_tiny_checkpoint import build

        model_dir = build(Path(os.environ.get("QWEN_TTS_TEST_CACHE", ROOT / ".cache")) / "tiny-models", seed=0)
    print("workers parts  wall_s  worker_sum_s  overhead_per_part_ms  join_s  audio_s")
    for n in [int(x) for x in args.workers.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            procs, urls = start_workers(n, model_dir, tmp_path)
            try:
                for parts in [int(x) for x in args.parts.split(",")]:
                    book = tmp_path / f"book{parts}.txt"
                    book.write_text("\n\n".join([PARAGRAPH] * parts))
                    options = Options(
                        fmt="mp3",
                        part_chars=len(PARAGRAPH),  # one paragraph (two chunks) a part
                        parallel=n,
                        pauses=Pauses(),
                        job_fields={"params": {"max_new_tokens": args.max_new_tokens}},
                    )
                    report = run(
                        book, tmp_path / f"out{parts}" / "book.mp3", [LocalApiQueue(u) for u in urls],
                        options=options, voice=VoicePlan(voice="Ryan"), seed=1,
                        progress=Progress(io.StringIO(), bar=False),
                    )  # fmt: skip
                    overhead_ms = statistics.mean((r.wall_s - (r.worker_s or 0.0)) * 1000 for r in report.records)
                    worker_sum = sum(r.worker_s or 0.0 for r in report.records)
                    print(
                        f"{n:7d} {parts:5d} {report.wall_s:7.2f} {worker_sum:13.2f} {overhead_ms:21.0f} "
                        f"{report.join_s:7.2f} {report.duration_s:8.1f}",
                        flush=True,
                    )
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
