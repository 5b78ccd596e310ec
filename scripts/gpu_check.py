#!/usr/bin/env python3
"""The measuring parts of `scripts/gpu_check.sh`: the attention-backend check, the engine benchmark and the report.

    python scripts/gpu_check.py attention --model-dir DIR --out OUT/attention.json [--device cuda --dtype bfloat16]
    python scripts/gpu_check.py bench --model-dir DIR --out OUT/bench.json [--frames 40] [--batches 1,8,32,64] ...
    python scripts/gpu_check.py report OUT_DIR      # OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md

`attention` runs a fixed greedy generation of the fast loop (eager) under `torch.nn.attention.sdpa_kernel` restricted
to each backend in turn (math, flash, memory-efficient, cuDNN, and flash + memory-efficient: the fused kernels only)
and says which ran and whether its codes equal the unrestricted run's. The talker's prefill and steps are masked
(left padding), so flash alone can't run the loop; flash + memory-efficient must.

`bench` measures, per model and engine (reference, fast eager, fast with CUDA graphs), on checkpoints whose EOS is
dead (every chunk is exactly its frame budget): ms per frame of a whole `generate` call at each batch size, the first
audio of one streamed request, the real-time factor at batch 1 (compute seconds per second of audio) and the
aggregate audio seconds per second at each concurrency: that many requests of one fixed text submitted together
(vLLM-Omni's method), which the fast engine runs as one batch of calls (`generate_many`, as the worker's model gate
does) and the reference engine as one `generate` of that many chunks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT = "The quick brown fox jumps over the lazy dog, then runs back home across the quiet field."
BACKENDS = ("math", "flash", "efficient", "cudnn", "flash+efficient")
GRAPH_PROMPT_SLOTS = 256  # the benchmark's prompts are far shorter; the static cache is this + the longest chunk


def _load(model_dir: Path, name: str, device: str, dtype: str) -> Any:
    from audio.model_loader import ModelCache
    from audio.settings import Settings

    env = {
        "QWEN_TTS_MODEL_DIR": str(model_dir),
        "QWEN_TTS_DEVICE": device,
        "QWEN_TTS_DTYPE": dtype,
        "QWEN_TTS_PRELOAD": "none",
        "QWEN_TTS_ENGINE": "fast",
        "QWEN_TTS_CUDA_GRAPHS": "off",
        "QWEN_TTS_MAX_LOADED_MODELS": "1",
        "HF_HOME": str(model_dir / "no-hf-home"),
    }
    return ModelCache(Settings.from_env(env)).get(name)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _release() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# -- attention backends ------------------------------------------------------------------------------------------


def attention(model_dir: Path, models: list[str], device: str, dtype: str) -> dict[str, Any]:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from audio.engine.graphs import _codes

    kernels = {
        "math": [SDPBackend.MATH],
        "flash": [SDPBackend.FLASH_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "cudnn": [SDPBackend.CUDNN_ATTENTION],
        "flash+efficient": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    }
    out: dict[str, Any] = {}
    for name in models:
        model = _load(model_dir, name, device, dtype)
        loop = model.loop
        want = _codes(loop, loop.steps, 4, sampled=False)
        rows = {}
        for backend in BACKENDS:
            try:
                with sdpa_kernel(kernels[backend]):
                    got = _codes(loop, loop.steps, 4, sampled=False)
                rows[backend] = {"ran": True, "codes_equal": got == want}
            except RuntimeError as exc:
                rows[backend] = {"ran": False, "error": str(exc).strip().splitlines()[0][:300]}
        out[name] = rows
        del model, loop
        _release()
    return {"device": device, "dtype": dtype, "torch": torch.__version__, "models": out}


# -- the benchmark -----------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    _sync(device)
    started = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - started, out


def _median(fn: Callable[[], Any], device: str, repeats: int) -> float:
    times = sorted(_timed(fn, device)[0] for _ in range(max(1, repeats)))
    return times[(len(times) - 1) // 2]


def _engine_row(engine: Any, name: str, frames: int, args: argparse.Namespace) -> dict[str, Any]:
    from audio.speech import ChunkRequest, GenerateCall, Voice

    voice = Voice(speaker="Ryan")
    call = {"language": "English", "voice": voice, "params": {}}
    rate = engine.frame_rate_hz

    def requests(n: int, budget: int) -> list[Any]:
        return [ChunkRequest(TEXT, budget, seed=1000 + i) for i in range(n)]

    def concurrent(n: int) -> Any:
        if hasattr(engine, "generate_many"):
            return engine.generate_many([GenerateCall(requests(1, frames), "English", voice, {}) for _ in range(n)])
        return engine.generate(requests(n, frames), **call)

    for n in sorted(set(args.batches) | set(args.concurrency)):  # warm-up: allocator, kernel choice, tables
        engine.generate(requests(n, 3), **call)
    row: dict[str, Any] = {"engine": name, "frames": frames, "batches": {}, "aggregate": {}}
    for batch in args.batches:
        seconds = _median(lambda b=batch: engine.generate(requests(b, frames), **call), args.device, args.repeats)
        row["batches"][str(batch)] = {"seconds": seconds, "ms_per_frame": 1000 * seconds / frames}
    audio_s = frames / rate
    row["rtf_b1"] = row["batches"][str(args.batches[0])]["seconds"] / audio_s if args.batches[0] == 1 else None
    if getattr(engine.capabilities, "streams", False):
        started = time.perf_counter()
        first = None
        for _piece in engine.stream(requests(1, frames), **call):
            if first is None:
                first = time.perf_counter() - started
        row["first_audio_s"] = first
    else:
        row["first_audio_s"] = _timed(lambda: engine.generate(requests(1, frames), **call), args.device)[0]
    for n in args.concurrency:
        seconds = _median(lambda n=n: concurrent(n), args.device, args.repeats)
        row["aggregate"][str(n)] = {"seconds": seconds, "audio_s": n * audio_s, "audio_s_per_s": n * audio_s / seconds}
    return row


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from audio.engine.decode_loop import EagerSteps
    from audio.engine.graphs import GraphSteps
    from audio.engine.reference import ReferenceEngine

    result: dict[str, Any] = {
        "device": args.device,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "frames": args.frames,
        "batches": args.batches,
        "concurrency": args.concurrency,
        "rows": [],
    }
    max_batch = max(args.batches + args.concurrency)
    # Without CUDA the frame graphs' bodies run in capture order instead of replays (the smoke exercises the path).
    graphs_mode = "graphs" if args.device.startswith("cuda") else "simulate"
    for name in args.models:
        fast = _load(args.model_dir, name, args.device, args.dtype)
        eager, steps, engine = fast.loop.steps, None, None
        for engine_name in args.engines:
            row_base: dict[str, Any] = {"model": name}
            if engine_name == "reference":
                engine = ReferenceEngine(fast.variant, fast.tts, fast.runtime)
            elif engine_name == "fast":
                fast.loop.steps, fast.cuda_graphs, engine = EagerSteps(fast.loop), False, fast
            else:  # fast-graphs: every bucket up to the largest batch captured and checked, as at warm-up
                max_len = GRAPH_PROMPT_SLOTS + max(args.frames)
                capture_s, steps = _timed(
                    lambda loop=fast.loop, n=max_len: GraphSteps.try_enable(
                        loop, max_batch=max_batch, max_len=n, mode=graphs_mode
                    ),
                    args.device,
                )
                row_base.update(capture_s=capture_s, cuda_graphs=steps is not None)
                if steps is None:
                    result["rows"].append({**row_base, "engine": engine_name, "skipped": "no CUDA graphs here"})
                    continue
                fast.loop.steps, fast.cuda_graphs, engine = steps, True, fast
                if graphs_mode == "simulate":
                    engine_name += " (simulated)"
            for frames in args.frames:
                print(f"  {name} {engine_name} {frames} frames ...", flush=True)
                result["rows"].append({**row_base, **_engine_row(engine, engine_name, frames, args)})
            fast.loop.steps = eager
        del fast, engine, eager, steps
        _release()
    return result


# -- the report --------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(out_dir: Path) -> dict[str, Any]:
    def part(name: str) -> Any:
        path = out_dir / name
        return json.loads(path.read_text()) if path.exists() else None

    steps = []
    steps_file = out_dir / "steps.tsv"
    if steps_file.exists():
        for line in steps_file.read_text().splitlines():
            step_name, rc, seconds = line.split("\t")
            steps.append({"step": step_name, "rc": int(rc), "seconds": int(seconds)})
    bench_part, attention_part = part("bench.json"), part("attention.json")
    measured = bool(bench_part and str(bench_part.get("device", "")).startswith("cuda"))
    result = {
        "measured_on_gpu": measured,
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "passed": all(s["rc"] == 0 for s in steps),
        "steps": steps,
        "attention": attention_part,
        "bench": bench_part,
    }
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=2))
    (out_dir / "gpu_check.md").write_text("\n".join(_markdown(result)) + "\n")
    return result


def _markdown(result: dict[str, Any]) -> list[str]:
    lines = ["# GPU check", ""]
    if not result["measured_on_gpu"]:
        lines += ["**Not measured on a GPU**: these numbers come from a CPU run (tiny checkpoints, smoke mode).", ""]
    lines += [f"host: {result['host']}; all steps passed: {'yes' if result['passed'] else 'NO'}", ""]
    lines += ["| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in result["steps"]]
    attention_part = result.get("attention")
    if attention_part:
        lines += ["", f"## Attention backends ({attention_part['device']}, {attention_part['dtype']})", ""]
        lines += ["| model | " + " | ".join(BACKENDS) + " |", "|---|" + "---|" * len(BACKENDS)]
        for model, rows in attention_part["models"].items():
            cells = []
            for backend in BACKENDS:
                r = rows.get(backend)
                if r is None:
                    cells.append("-")
                else:
                    cells.append(
                        ("ran, codes " + ("equal" if r["codes_equal"] else "differ")) if r["ran"] else "refused"
                    )
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    bench_part = result.get("bench")
    if bench_part:
        batches, conc = bench_part["batches"], bench_part["concurrency"]
        where = bench_part.get("gpu") or bench_part["device"]
        lines += ["", f"## Engines ({where}, {bench_part['dtype']}, EOS off, fixed frame counts)", ""]
        head = ["model", "engine", "frames"] + [f"ms/frame B={b}" for b in batches]
        head += ["first audio", "RTF B=1"] + [f"audio s/s C={c}" for c in conc]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in bench_part["rows"]:
            if "skipped" in row:
                lines.append(f"| {row['model']} | {row['engine']} | {row['skipped']} |")
                continue
            cells = [row["model"], row["engine"], str(row["frames"])]
            cells += [_fmt(row["batches"][str(b)]["ms_per_frame"], ".1f") for b in batches]
            cells += [_fmt(row["first_audio_s"], ".3f") + " s", _fmt(row["rtf_b1"], ".3f")]
            cells += [_fmt(row["aggregate"][str(c)]["audio_s_per_s"], ".2f") for c in conc]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("attention", "bench"):
        p = sub.add_parser(command)
        p.add_argument("--model-dir", type=Path, required=True)
        p.add_argument("--models", default="1.7B-CustomVoice,0.6B-CustomVoice")
        p.add_argument("--device", default="cuda")
        p.add_argument("--dtype", default="bfloat16")
        p.add_argument("--out", type=Path, required=True)
        if command == "bench":
            p.add_argument("--engines", default="reference,fast,fast-graphs")
            p.add_argument("--frames", default="40", help="frames per chunk, one or more")
            p.add_argument("--batches", default="1,8,32,64")
            p.add_argument("--concurrency", default="1,8,16,64")
            p.add_argument("--repeats", type=int, default=1)
    p = sub.add_parser("report")
    p.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "report":
        result = report(args.out_dir)
        print((args.out_dir / "gpu_check.md").read_text())
        return 0 if result["passed"] else 1
    args.models = [m for m in args.models.split(",") if m]
    if args.command == "attention":
        out = attention(args.model_dir, args.models, args.device, args.dtype)
    else:
        args.engines = [e for e in args.engines.split(",") if e]
        args.frames, args.batches, args.concurrency = _ints(args.frames), _ints(args.batches), _ints(args.concurrency)
        out = bench(args)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
