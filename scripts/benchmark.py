#!/usr/bin/env python3
"""Benchmark the worker's job path: batched vs per-chunk generation, time spent outside the model, join cost.

    python scripts/benchmark.py [--device cpu|cuda|auto] [--model-dir DIR] [--model 0.6B-CustomVoice]
                                [--max-new-tokens N] [--json out.json] [--check]

1. Batched vs per-chunk: one 16-chunk job through the `Generator` with `max_batch=8` (2 generate calls) and
   with `max_batch=1` (16 calls), same seed and a fixed `params.max_new_tokens`, after a warm-up generation.
2. Outside the model: the same job through `Worker.handle` (wav), its wall time against the time spent inside
   the model's `generate` (a timing wrapper passed as the worker's `get_model`), and the parts of the rest
   (parse, split, checks, trim/crossfade, finish, encode, deliver) timed again on the job's own data.
3. Join cost: 10 / 30 / 60 minutes of synthetic 24 kHz chunks joined with `joiner.join` (crossfade 40 ms,
   pause 300 ms), checked against `joiner.joined_length`. Also shown, without a target: the first (cold)
   60-minute join of the process, and the path a job really takes for 60 minutes (the generator's
   render.finish: one join of all chunks when nothing is done per segment).

Without --model-dir it builds (or reuses) the tiny random checkpoints in .cache/tiny-models: those numbers
say how the pipeline behaves, not how fast real Qwen3-TTS is. With --model-dir pointing at real weights and
--device cuda it runs unchanged. Exit status is 0 whatever the numbers, unless --check is given: then 1 when
a target is missed (batched >= 3x faster, <= 10% of job time outside the model, 60 minutes join in <= 2 s).
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio import catalog  # noqa: E402
from audio.output import encoders, joiner  # noqa: E402
from audio.quality import check_chunk, frame_budget  # noqa: E402
from audio.text.splitter import split_text, text_weight  # noqa: E402
from scripts.bench_engines import ENGINE_VARIANTS, bench_engines, format_rows  # noqa: E402
from scripts.bench_engines import checks as engine_checks  # noqa: E402

TINY_MODEL_DIR = ROOT / ".cache" / "tiny-models"

SPEEDUP_TARGET = 3.0  # batched must be at least this many times faster than per-chunk
OUTSIDE_SHARE_TARGET = 0.10  # at most this share of a job's time outside the model
JOIN_TARGET_MINUTES = 60
JOIN_TARGET_S = 2.0  # joining JOIN_TARGET_MINUTES of audio

NUM_CHUNKS = 16
JOIN_MINUTES = (10, 30, 60)
JOIN_SAMPLE_RATE = 24000
JOIN_CHUNK_S = 10.0
JOIN_CHUNKS_PER_SEGMENT = 6
JOIN_PAUSE_MS = 300
JOIN_REPEATS = 3  # at least; the median is kept
JOIN_POOL = 64  # distinct noise chunks cycled through (64 x 10 s = 61 MB: far beyond any CPU cache)

_VOCABULARY = """
the a morning river signal quiet engine market story window garden letter answer station winter
people number sound light paper voice street music ocean minute table picture mountain question
moves carries finds opens follows reaches builds turns changes watches brings keeps holds shows
slowly early again later often almost nearly simply gently clearly together outside across
"""
_WORDS = _VOCABULARY.split()


# -- measurement helpers ---------------------------------------------------------------------------------------


@dataclass
class Call:
    batch: int
    seconds: float
    frames: list[int]
    max_new_tokens: int


@dataclass
class TimedModel:
    """A `SpeechModel` that times (and optionally keeps) every call into the model it wraps.

    Model time is `generate` plus `clone_prompt` (a Base model's speaker encoder and reference tokenising).
    """

    model: Any
    keep_audio: bool = False
    calls: list[Call] = field(default_factory=list)
    prompt_seconds: float = 0.0
    outputs: list[tuple[list[str], list[np.ndarray]]] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def frame_samples(self) -> int:
        return self.model.frame_samples

    def clone_prompt(self, voice: Any) -> Any:
        prompt, seconds = timed(lambda: self.model.clone_prompt(voice))
        self.prompt_seconds += seconds
        return prompt

    @property
    def capabilities(self) -> Any:
        return self.model.capabilities

    def generate(self, requests: Sequence[Any], **kwargs: Any) -> list[np.ndarray]:
        started = time.perf_counter()
        wavs = self.model.generate(requests, **kwargs)
        seconds = time.perf_counter() - started
        frames = [-(-len(w) // self.frame_samples) for w in wavs]
        self.calls.append(Call(len(requests), seconds, frames, max(r.budget_frames for r in requests) + 1))
        if self.keep_audio:
            self.outputs.append(([r.text for r in requests], wavs))
        return wavs

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.calls) + self.prompt_seconds

    @property
    def frames(self) -> int:
        return sum(sum(c.frames) for c in self.calls)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def median_run(fn: Callable[[], dict[str, Any]], repeats: int, key: str) -> dict[str, Any]:
    """Run `fn` `repeats` times and keep the run whose `key` is the median (a real run, not a mix)."""
    runs = sorted((fn() for _ in range(max(1, repeats))), key=lambda r: r[key])
    return runs[(len(runs) - 1) // 2]


def text_with_chunks(n: int, target_chars: int, max_chars: int, seed: int = 0) -> str:
    """English-like text that `split_text` cuts into exactly `n` chunks, the last one as full as the others."""
    rng = random.Random(seed)
    sentences = []
    best = None
    while True:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(7, 13))]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"]))
        text = " ".join(sentences)
        count = len(split_text(text, target_chars, max_chars))
        if count == n:
            best = text
        elif count > n:
            if best is None:
                raise ValueError(f"no text splits into exactly {n} chunks at {target_chars}/{max_chars} chars")
            return best


def _reference_wav_base64(seconds: float = 3.0, rate: int = 24000) -> str:
    """A deterministic voiced-ish reference recording, for Base (clone) models."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    wave = 0.2 * np.sin(2 * np.pi * (120 + 40 * np.sin(2 * np.pi * 3 * t)) * t)
    wave += 0.02 * np.random.default_rng(0).standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def job_input(model: str, text: str, *, seed: int, max_new_tokens: int) -> dict[str, Any]:
    job: dict[str, Any] = {
        "text": text,
        "model": model,
        "language": "English",
        "seed": seed,
        "output_format": "wav",
        "params": {"max_new_tokens": max_new_tokens},
    }
    kind = catalog.MODELS[model].kind
    if kind == catalog.VOICE_DESIGN:
        job["instruct"] = "A clear, neutral voice."
    elif kind == catalog.BASE:
        job["ref_audio"] = _reference_wav_base64()
        job["x_vector_only"] = True
    return job


# -- 1. batched vs per-chunk -------------------------------------------------------------------------------------


def _call_stats(calls: list[Call]) -> dict[str, float]:
    steps = sum(max(c.frames) for c in calls)  # decode steps: a batch steps once per frame for all its rows
    frames = sum(sum(c.frames) for c in calls)
    seconds = sum(c.seconds for c in calls)
    return {
        "s_per_call": seconds / len(calls),
        "ms_per_step": 1000.0 * seconds / max(1, steps),
        "ms_per_chunk_frame": 1000.0 * seconds / max(1, frames),
    }


def bench_batching(model: Any, settings: Any, plan: Any, max_batch: int, repeats: int) -> dict[str, Any]:
    from audio.generator import Generator
    from audio.worker import generator_config

    def run(batch: int) -> dict[str, Any]:
        wrapper = TimedModel(model)
        generator = Generator(lambda _name: wrapper, replace(generator_config(settings), max_batch=batch))
        synthesis, wall = timed(lambda: generator.run(plan))
        return {
            "max_batch": batch,
            "wall_s": wall,
            "model_s": wrapper.seconds,
            "calls": len(wrapper.calls),
            "frames": wrapper.frames,
            "retries": synthesis.retries,
            "chunks": synthesis.num_chunks,
            **_call_stats(wrapper.calls),
        }

    batched = median_run(lambda: run(max_batch), repeats, "wall_s")
    per_chunk = median_run(lambda: run(1), repeats, "wall_s")
    return {
        "chunks": per_chunk["chunks"],
        "max_new_tokens": plan.max_new_tokens,
        "batched": batched,
        "per_chunk": per_chunk,
        "speedup": per_chunk["wall_s"] / batched["wall_s"],
    }


# -- 2. job time outside the model --------------------------------------------------------------------------------


def bench_overhead(cache: Any, settings: Any, job: dict[str, Any], repeats: int) -> dict[str, Any]:
    from audio.schema import parse_job, plan_job
    from audio.worker import Worker

    def run() -> dict[str, Any]:
        wrapper = TimedModel(cache.get(job["model"]), keep_audio=True)
        worker = Worker(settings, models=cache, get_model=lambda _name: wrapper)
        captured = {}
        generator_run = worker.generator.run

        def capture(plan, **kwargs):
            captured["plan"] = plan
            captured["synthesis"] = generator_run(plan, **kwargs)
            return captured["synthesis"]

        worker.generator.run = capture
        reply, total = timed(lambda: worker.handle(job, "benchmark"))
        parts = _outside_parts(worker, wrapper, captured["plan"], captured["synthesis"], job, parse_job, plan_job)
        outside = total - wrapper.seconds
        return {
            "total_s": total,
            "model_s": wrapper.seconds,
            "clone_prompt_s": wrapper.prompt_seconds,
            "outside_s": outside,
            "outside_share": outside / total,
            "audio_s": reply["metadata"]["duration_seconds"],
            "chunks": reply["metadata"]["num_chunks"],
            "retries": reply["metadata"]["retries"],
            "parts": parts,
        }

    return median_run(run, repeats, "outside_share")


def _outside_parts(worker, wrapper, plan, synthesis, job, parse_job, plan_job) -> dict[str, float]:
    """Each step outside the model, timed again on the job's own data (so the sum roughly matches)."""
    from audio import render

    config = worker.generator.config
    rate, frame_samples = wrapper.sample_rate, wrapper.frame_samples
    chunks = [(t, w) for texts, wavs in wrapper.outputs for t, w in zip(texts, wavs, strict=True)]
    parts: dict[str, float] = {}
    _, parts["parse+plan"] = timed(
        lambda: plan_job(
            parse_job(job), default_model=worker.settings.default_model, max_chars=worker.settings.max_chars
        )
    )
    _, parts["split"] = timed(
        lambda: [split_text(s.text, config.chunk_target_chars, config.chunk_max_chars) for s in plan.segments]
    )

    def checks():
        for text, wav in chunks:
            budget = frame_budget(text_weight(text), rate / frame_samples, config.limits)
            if plan.max_new_tokens is not None:
                budget = max(1, min(budget, plan.max_new_tokens - 1))
            check_chunk(
                wav,
                rate,
                text_weight=text_weight(text),
                frames=-(-len(wav) // frame_samples),
                budget_frames=budget,
                user_capped=plan.max_new_tokens is not None,
                limits=config.limits,
            )

    _, parts["check"] = timed(checks)

    def trim_and_crossfade():
        trimmed = [
            joiner.trim_edges(w, rate, threshold_db=config.limits.silence_threshold_db, pad_ms=config.edge_pad_ms)
            for _, w in chunks
        ]
        return joiner.join([trimmed], [0], int(rate * config.crossfade_ms / 1000.0))

    _, parts["trim+crossfade"] = timed(trim_and_crossfade)
    (samples, out_rate), parts["render.finish"] = timed(lambda: render.finish(synthesis, plan))
    audio, parts["encode " + plan.output_format] = timed(lambda: encoders.encode(samples, out_rate, plan.output_format))
    _, parts["deliver " + plan.delivery] = timed(
        lambda: worker.deliverer.deliver(
            audio,
            fmt=plan.output_format,
            content_type=encoders.CONTENT_TYPES[plan.output_format],
            job_id="benchmark",
            mode=plan.delivery,
        )
    )
    return parts


# -- 3. join cost ---------------------------------------------------------------------------------------------------


def join_cost(
    minutes: float,
    *,
    sample_rate: int = JOIN_SAMPLE_RATE,
    chunk_s: float = JOIN_CHUNK_S,
    chunks_per_segment: int = JOIN_CHUNKS_PER_SEGMENT,
    crossfade_ms: float = 40.0,
    pause_ms: int = JOIN_PAUSE_MS,
    pool: int = JOIN_POOL,
    seed: int = 0,
    worker_path: bool = False,
) -> dict[str, Any]:
    """Time joining `minutes` of noise chunks grouped into podcast-like segments.

    By default one `joiner.join` call (crossfades within segments, pauses between them). With `worker_path`,
    what a job really does: `render.finish` on the generator's trimmed chunks (one join when nothing is done
    per segment).
    """
    chunk_len = round(chunk_s * sample_rate)
    n_chunks = max(1, round(minutes * 60 / chunk_s))
    rng = np.random.default_rng(seed)
    distinct = [(0.1 * rng.standard_normal(chunk_len)).astype(np.float32) for _ in range(min(pool, n_chunks))]
    chunks = [distinct[i % len(distinct)] for i in range(n_chunks)]
    segments = [chunks[i : i + chunks_per_segment] for i in range(0, n_chunks, chunks_per_segment)]
    pause = int(sample_rate * pause_ms / 1000.0)
    pauses = [0] + [pause] * (len(segments) - 1)
    crossfade = int(sample_rate * crossfade_ms / 1000.0)
    if worker_path:
        out, seconds = timed(lambda: _worker_join(segments, pause_ms, crossfade, sample_rate))
    else:
        out, seconds = timed(lambda: joiner.join(segments, pauses, crossfade))
    expected = joiner.joined_length([[len(c) for c in seg] for seg in segments], pauses, crossfade)
    return {
        "minutes": minutes,
        "segments": len(segments),
        "chunks": n_chunks,
        "seconds": seconds,
        "length": len(out),
        "expected_length": expected,
        "length_ok": len(out) == expected,
    }


def _worker_join(segments: list[list[np.ndarray]], pause_ms: int, crossfade: int, sample_rate: int) -> np.ndarray:
    from audio import render
    from audio.generator import Synthesis
    from audio.schema import parse_job, plan_job

    synthesis = Synthesis(
        chunks=segments,
        pauses_ms=[pause_ms] * len(segments),
        crossfade=crossfade,
        sample_rate=sample_rate,
        num_chunks=sum(len(seg) for seg in segments),
        retries=0,
        seed=0,
        model_time_s=0.0,
    )
    # A real plan of a plain job (native rate, no loudness target), whatever fields JobPlan grows.
    plan = plan_job(parse_job({"text": "x"}), default_model=catalog.DEFAULT_MODEL, max_chars=1)
    samples, _ = render.finish(synthesis, plan)
    return samples


# -- targets and the table ----------------------------------------------------------------------------------------


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target (and the join length checks) with whether it was met; only measurements that ran."""
    checks = []
    if "batching" in result:
        checks.append({"name": "batched speed-up", "passed": result["batching"]["speedup"] >= SPEEDUP_TARGET})
    if "overhead" in result:
        checks.append(
            {"name": "outside-model share", "passed": result["overhead"]["outside_share"] <= OUTSIDE_SHARE_TARGET}
        )
    for row in result.get("join", []):
        checks.append({"name": f"join {row['minutes']:g} min length", "passed": row["length_ok"]})
        if row["minutes"] == JOIN_TARGET_MINUTES:
            checks.append({"name": f"join {row['minutes']:g} min time", "passed": row["seconds"] <= JOIN_TARGET_S})
    if "join_worker_path" in result:
        row = result["join_worker_path"]
        checks.append({"name": f"worker-path join {row['minutes']:g} min length", "passed": row["length_ok"]})
    if "engines" in result:
        checks.extend(engine_checks(result["engines"], on_gpu=result["environment"]["device"].startswith("cuda")))
    return checks


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def _length_note(r: dict[str, Any]) -> str:
    return f"length {r['length']:,} " + ("== joined_length" if r["length_ok"] else f"!= {r['expected_length']:,}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def format_table(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = []
    if result.get("tiny_model"):
        banner = "!" * 100
        lines += [
            banner,
            "!! TINY RANDOM MODEL: these numbers are for the tiny randomly initialised test checkpoint, NOT for real",
            "!! Qwen3-TTS weights. Pass --model-dir with real weights (and --device cuda) for production numbers.",
            banner,
        ]
    for key in ("model", "model_dir", "device", "dtype", "attention", "torch_threads", "torch", "qwen_tts", "host"):
        lines.append(f"{key:<14}{env[key]}")
    lines.append("")
    header = f"{'measurement':<44}{'value':>14}  {'target':<10}{'result':<8}note"
    rows = [header, "-" * len(header)]

    def row(name: str, value: str, target: str = "", verdict: str = "", note: str = "") -> None:
        rows.append(f"{name:<44}{value:>14}  {target:<10}{verdict:<8}{note}".rstrip())

    if "batching" in result:
        b = result["batching"]
        n, tokens = b["chunks"], b["max_new_tokens"]
        rows.append(f"[1] batched vs per-chunk: {n} chunks, max_new_tokens={tokens} ({tokens - 1} frames/chunk)")
        for label, r in (("batched", b["batched"]), ("per-chunk", b["per_chunk"])):
            row(
                f"  {label} (max_batch={r['max_batch']})",
                f"{r['wall_s']:.3f} s",
                note=f"{r['calls']} calls, {r['frames']} frames, model {r['model_s']:.3f} s, {r['retries']} retries",
            )
        row(
            "  speed-up (per-chunk / batched)",
            f"{b['speedup']:.2f}x",
            f">= {SPEEDUP_TARGET:g}x",
            _verdict(b["speedup"] >= SPEEDUP_TARGET),
        )
        bb, pc = b["batched"], b["per_chunk"]
        row(f"  time per call B={bb['max_batch']} / B=1", f"{bb['s_per_call']:.3f} s", note=f"{pc['s_per_call']:.3f} s")
        row(
            f"  time per decode step B={bb['max_batch']} / B=1",
            f"{bb['ms_per_step']:.1f} ms",
            note=f"{pc['ms_per_step']:.1f} ms",
        )
        row(
            f"  time per chunk-frame B={bb['max_batch']} / B=1",
            f"{bb['ms_per_chunk_frame']:.1f} ms",
            note=f"{pc['ms_per_chunk_frame']:.1f} ms",
        )
    if "overhead" in result:
        o = result["overhead"]
        rows.append(f"[2] Worker.handle job: {o['chunks']} chunks, {o['audio_s']:.2f} s of audio, wav")
        row("  job total", f"{o['total_s']:.3f} s", note=f"{o['retries']} retries")
        prompt_s = o.get("clone_prompt_s", 0.0)
        row(
            "  inside the model",
            f"{o['model_s']:.3f} s",
            note="generate" + (f" + clone_prompt ({prompt_s:.3f} s)" if prompt_s else " calls"),
        )
        row("  outside the model", f"{o['outside_s']:.3f} s")
        row(
            "  outside share",
            f"{o['outside_share'] * 100:.1f}%",
            f"<= {OUTSIDE_SHARE_TARGET * 100:g}%",
            _verdict(o["outside_share"] <= OUTSIDE_SHARE_TARGET),
        )
        for name, seconds in o["parts"].items():
            row(f"    {name}", _ms(seconds), note="re-timed on the job's data")
        row("    rest (python, logging, seeds, ...)", _ms(o["outside_s"] - sum(o["parts"].values())))
    if result.get("join"):
        rows.append(
            f"[3] join at {JOIN_SAMPLE_RATE} Hz: {JOIN_CHUNK_S:g}-s chunks, {JOIN_CHUNKS_PER_SEGMENT} per segment, "
            f"crossfade 40 ms, pause {JOIN_PAUSE_MS} ms"
            + (f", median of {result['join_repeats']}" if result.get("join_repeats", 1) > 1 else "")
        )
        for r in result["join"]:
            is_target = r["minutes"] == JOIN_TARGET_MINUTES
            row(
                f"  join {r['minutes']:g} min ({r['segments']} segments, {r['chunks']} chunks)",
                f"{r['seconds']:.3f} s",
                f"<= {JOIN_TARGET_S:g} s" if is_target else "",
                _verdict(r["seconds"] <= JOIN_TARGET_S) if is_target else "",
                _length_note(r),
            )
    if "join_cold" in result:
        r = result["join_cold"]
        row(f"  join {r['minutes']:g} min, first in process (cold)", f"{r['seconds']:.3f} s", note="page faults")
    if "join_worker_path" in result:
        r = result["join_worker_path"]
        row(
            f"  worker path {r['minutes']:g} min (segments, then finish)",
            f"{r['seconds']:.3f} s",
            note=_length_note(r),
        )
    if "engines" in result:
        rows.extend(format_rows(result["engines"]))
    checks = evaluate(result)
    missed = [c["name"] for c in checks if not c["passed"]]
    rows.append("-" * len(header))
    summary = f"checks: {len(checks) - len(missed)}/{len(checks)} passed"
    rows.append(summary + (f"; failed: {', '.join(missed)}" if missed else ""))
    return "\n".join(lines + rows)


# -- main -----------------------------------------------------------------------------------------------------------


def settings_env(args: argparse.Namespace, model_dir: Path) -> dict[str, str]:
    env = {
        "QWEN_TTS_MODEL_DIR": str(model_dir),
        "QWEN_TTS_DEVICE": args.device,
        "QWEN_TTS_DTYPE": args.dtype,
        "QWEN_TTS_PRELOAD": "none",
        "QWEN_TTS_DEFAULT_MODEL": args.model,
        "QWEN_TTS_MAX_LOADED_MODELS": "1",
        "QWEN_TTS_MAX_BATCH": str(args.max_batch),
    }
    if args.model_dir is None:  # keep the tiny run from finding real weights in a Hugging Face cache
        env["HF_HOME"] = str(ROOT / ".cache" / "no-hf-home")
    else:
        env.update({k: os.environ[k] for k in ("HF_HOME", "HF_HUB_CACHE") if os.environ.get(k)})
    return env


def environment(args: argparse.Namespace, cache: Any, model_dir: Path) -> dict[str, Any]:
    import torch

    from audio.model_loader import versions

    runtime = cache.runtime
    device = runtime.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    have = versions()
    return {
        "model": args.model,
        "model_dir": str(model_dir),
        "device": device,
        "dtype": runtime.dtype,
        "attention": runtime.attention,
        "torch_threads": f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        "torch": have["torch"],
        "qwen_tts": have["qwen-tts"],
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto", help="auto (default), bfloat16, float16 or float32")
    parser.add_argument("--model-dir", type=Path, help="real weights; default: tiny random checkpoints (built once)")
    parser.add_argument("--model", default="0.6B-CustomVoice", help="model variant (default 0.6B-CustomVoice)")
    parser.add_argument("--max-new-tokens", type=int, default=13, help="params.max_new_tokens: N-1 frames/chunk")
    parser.add_argument("--max-batch", type=int, default=8, help="batched run's max_batch (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the median is kept")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--engines",
        default="reference,fast",
        help="[4] engines side by side: reference, fast, fast-graphs (CUDA), or none (default reference,fast)",
    )
    parser.add_argument("--engine-batches", default="1,8", help="[4] batch sizes (default 1,8)")
    parser.add_argument("--engine-frames", type=int, default=40, help="[4] frames per chunk (default 40)")
    parser.add_argument("--only-engines", action="store_true", help="run [4] alone")
    args = parser.parse_args(argv)
    args.engines = [] if args.engines == "none" else [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in ENGINE_VARIANTS]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; use {', '.join(ENGINE_VARIANTS)}")
    args.engine_batches = [int(b) for b in args.engine_batches.split(",")]
    variant = catalog.find_model(args.model)
    if variant is None:
        parser.error(f"unknown model {args.model!r}; one of {', '.join(catalog.MODELS)}")
    args.model = variant.name
    if args.max_new_tokens < 2:
        parser.error("--max-new-tokens must be at least 2 (one frame)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from audio.errors import ModelError
    from audio.model_loader import ModelCache
    from audio.schema import parse_job, plan_job
    from audio.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model_dir
    if model_dir is None:
        from scripts.build_tiny_checkpoint import build

        print(f"building/reusing tiny random checkpoints in {TINY_MODEL_DIR} ...", flush=True)
        model_dir = build(TINY_MODEL_DIR, seed=0)
    settings = Settings.from_env(settings_env(args, model_dir))
    cache = ModelCache(settings)
    try:
        model, load_s = timed(lambda: cache.get(args.model))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"loaded {args.model} in {load_s:.1f} s on {cache.runtime.device}", flush=True)

    text = text_with_chunks(NUM_CHUNKS, settings.chunk_target_chars, settings.chunk_max_chars)
    job = job_input(args.model, text, seed=args.seed, max_new_tokens=args.max_new_tokens)
    plan = plan_job(parse_job(job), default_model=settings.default_model, max_chars=settings.max_chars)

    # Warm-up, not counted: first calls at each batch size pay for lazy init, allocator growth, kernel choice.
    from audio.generator import Generator
    from audio.worker import generator_config

    warm = replace(plan, max_new_tokens=min(args.max_new_tokens, 4))
    for batch in (args.max_batch, 1):
        Generator(lambda _name: model, replace(generator_config(settings), max_batch=batch)).run(warm)

    result: dict[str, Any] = {
        "tiny_model": args.model_dir is None,
        "environment": environment(args, cache, model_dir),
        "load_s": load_s,
    }
    if not args.only_engines:
        print("[1/3] batched vs per-chunk ...", flush=True)
        result["batching"] = bench_batching(model, settings, plan, args.max_batch, args.repeats)
        print("[2/3] job time outside the model ...", flush=True)
        result["overhead"] = bench_overhead(cache, settings, job, args.repeats)
        print("[3/3] join cost ...", flush=True)
        join = functools.partial(join_cost, crossfade_ms=settings.crossfade_ms)
        # The first big join in a process pays first-touch page faults (costly in VMs that back guest memory
        # lazily); a long-running worker pays them once. Report that run, then warm up the worker path's
        # larger footprint and measure the steady state.
        result["join_cold"] = join(JOIN_TARGET_MINUTES)
        join(JOIN_TARGET_MINUTES, worker_path=True)
        # Page faults make big joins noisy on a busy machine; they are cheap, so always take a median of 3+.
        repeats = max(JOIN_REPEATS, args.repeats)
        result["join_repeats"] = repeats
        result["join"] = [median_run(lambda m=m: join(m), repeats, "seconds") for m in JOIN_MINUTES]
        result["join_worker_path"] = median_run(lambda: join(JOIN_TARGET_MINUTES, worker_path=True), repeats, "seconds")
    if args.engines:
        print(f"[4] engines {', '.join(args.engines)} ...", flush=True)
        result["engines"] = bench_engines(
            settings_env(args, model_dir),
            args.model,
            args.engines,
            batches=args.engine_batches,
            frames=args.engine_frames,
            repeats=args.repeats,
            seed=args.seed,
        )
    result["targets"] = evaluate(result)

    print()
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=_json_default))
        print(f"\nresults written to {args.json}")
    if args.check and not all(c["passed"] for c in result["targets"]):
        return 1
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
