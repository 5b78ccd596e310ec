"""Engines side by side (`scripts/benchmark.py --engines ...`): reference vs fast (vs fast with CUDA graphs).

For each engine, on its own model cache: load time (CUDA-graph capture and its self-check included), ms per
frame of a whole `generate` call (prompt building, the decode loop and the decode) at each batch size, a whole
8-chunk job through `Worker.handle`, and the time to the first streamed piece (one frame) and to the first decoded
second of audio against the whole chunk (the fast engine streams; the reference engine has audio only when the
chunk is done). With the tiny
checkpoints (EOS dead) every chunk is exactly its budget of frames long; with real weights rows may stop early,
so the frames counted are the longest row's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

ENGINE_VARIANTS = {
    "reference": {"QWEN_TTS_ENGINE": "reference"},
    "fast": {"QWEN_TTS_ENGINE": "fast", "QWEN_TTS_CUDA_GRAPHS": "off"},
    "fast-graphs": {"QWEN_TTS_ENGINE": "fast", "QWEN_TTS_CUDA_GRAPHS": "auto"},
}
FAST_TARGETS = {1: 3.0, 8: 2.5}  # fast vs reference on CPU (tiny model, 1 thread)
GRAPHS_TARGET_B1 = 8.0  # fast-graphs vs reference on a GPU, batch 1
JOB_CHUNKS = 8
GUARD_TARGET_PCT = 2.0  # the long-form guard's cost per frame, fast engine

_TEXTS = [
    "The morning train left the quiet station slowly, carrying letters to the mountain town.",
    "A gentle voice read the story aloud while the river kept its own slow rhythm outside.",
    "Every question in the market found an answer before the winter light began to fade.",
    "She opened the window and the music of the street filled the small room with noise.",
]


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def bench_engine(
    name: str, env: dict[str, str], model_name: str, *, batches: Sequence[int], frames: int, repeats: int, seed: int
) -> dict[str, Any]:
    from audio.guard import BatchGuard
    from audio.model_loader import ModelCache
    from audio.settings import Settings
    from audio.speech import ChunkRequest
    from audio.worker import Worker

    settings = Settings.from_env({**env, **ENGINE_VARIANTS[name]})
    cache = ModelCache(settings)
    started = time.perf_counter()
    model = cache.get(model_name)
    load_s = time.perf_counter() - started
    voice = _voice_for(model)
    call = {"language": "Auto", "voice": voice, "params": {}, "clone_prompt": None}

    def requests(batch: int, budget: int) -> list[Any]:
        return [ChunkRequest(_TEXTS[i % len(_TEXTS)], budget, seed=seed + i) for i in range(batch)]

    # Cold: the first second of audio after load (graph capture for new shapes included), then warm-ups.
    cold_s, _ = _median_time(lambda: model.generate(requests(1, 13), **call), 1)
    for batch in batches:
        model.generate(requests(batch, 4), **call)

    out: dict[str, Any] = {
        "engine": name,
        "load_s": load_s,
        "cold_first_audio_s": load_s + cold_s,
        "cuda_graphs": bool(getattr(model, "cuda_graphs", False)),
    }
    for batch in batches:
        seconds, wavs = _median_time(lambda b=batch: model.generate(requests(b, frames), **call), repeats)
        made = max(-(-len(w) // model.frame_samples) for w in wavs)
        out[f"b{batch}"] = {"seconds": seconds, "frames": made, "ms_per_frame": 1000 * seconds / max(made, 1)}

    # The long-form guard's cost: the largest batch again with a guard watching every row (audio/guard.py).
    guard_batch = max(batches)

    def guarded() -> Any:
        guard = BatchGuard(guard_batch, model.frame_rate_hz, settings.guard)
        return model.generate(requests(guard_batch, frames), guard=guard, **call)

    guard_s, _ = _median_time(guarded, repeats)
    plain_s = out[f"b{guard_batch}"]["seconds"]
    out["guard"] = {"batch": guard_batch, "seconds": guard_s, "overhead_pct": 100 * (guard_s - plain_s) / plain_s}

    worker = Worker(settings, models=cache)
    job = {
        "model": model_name,
        "text": " ".join(_TEXTS[i % len(_TEXTS)] for i in range(JOB_CHUNKS)),
        "seed": seed,
        "params": {"max_new_tokens": frames + 1},
    }
    if voice.instruct is not None:
        job["instruct"] = voice.instruct
    job_s, result = _median_time(lambda: worker.handle(job, "bench"), repeats)
    out["job"] = {
        "seconds": job_s,
        "chunks": result["metadata"]["num_chunks"],
        "audio_s": result["metadata"]["duration_seconds"],
    }

    # Time to the first streamed piece (the default schedule: one frame) and to the first decoded second of audio,
    # against the whole chunk (5 s of audio).
    long_frames = max(frames, round(5 * model.frame_rate_hz))
    second = round(model.frame_rate_hz)
    first_piece = {"s": None, "audio_s": None}
    if model.capabilities.streams:
        started = time.perf_counter()
        first_s = None
        frames_out = 0
        for piece in model.stream(requests(1, long_frames), **call):
            now = time.perf_counter() - started
            if first_piece["s"] is None:
                first_piece = {"s": now, "audio_s": piece.frames / model.frame_rate_hz}
            frames_out += piece.frames
            if first_s is None and frames_out >= second:
                first_s = now
        whole_s = time.perf_counter() - started
    else:
        whole_s, _ = _median_time(lambda: model.generate(requests(1, long_frames), **call), 1)
        first_s = whole_s
        first_piece = {"s": whole_s, "audio_s": long_frames / model.frame_rate_hz}
    out["first_audio"] = {
        "first_piece_s": first_piece["s"],
        "first_piece_audio_s": first_piece["audio_s"],
        "first_s": first_s,
        "whole_s": whole_s,
        "frames": long_frames,
    }
    return out


def _voice_for(model: Any) -> Any:
    from audio.catalog import CUSTOM_VOICE, VOICE_DESIGN
    from audio.speech import Voice

    if model.variant.kind == CUSTOM_VOICE:
        return Voice(speaker="Ryan")
    if model.variant.kind == VOICE_DESIGN:
        return Voice(instruct="A calm, clear voice.")
    raise SystemExit("--engines benchmarks CustomVoice or VoiceDesign models")


def bench_engines(
    env: dict[str, str],
    model_name: str,
    engines: Sequence[str],
    *,
    batches: Sequence[int],
    frames: int,
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    rows = [
        bench_engine(e, env, model_name, batches=batches, frames=frames, repeats=repeats, seed=seed) for e in engines
    ]
    return {"rows": rows, "batches": list(batches), "frames": frames}


def speedups(result: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Per engine and batch size: reference ms/frame / engine ms/frame."""
    by_name = {r["engine"]: r for r in result["rows"]}
    ref = by_name.get("reference")
    if ref is None:
        return {}
    return {
        name: {b: ref[f"b{b}"]["ms_per_frame"] / row[f"b{b}"]["ms_per_frame"] for b in result["batches"]}
        for name, row in by_name.items()
    }


def checks(result: dict[str, Any], on_gpu: bool) -> list[dict[str, Any]]:
    out = []
    ups = speedups(result)
    if "fast" in ups and not on_gpu:
        for batch, target in FAST_TARGETS.items():
            if batch in ups["fast"]:
                out.append(
                    {"name": f"fast >= {target:g}x reference at B={batch}", "passed": ups["fast"][batch] >= target}
                )
    if "fast-graphs" in ups and on_gpu and 1 in ups["fast-graphs"]:
        out.append(
            {
                "name": f"fast-graphs >= {GRAPHS_TARGET_B1:g}x reference at B=1",
                "passed": ups["fast-graphs"][1] >= GRAPHS_TARGET_B1,
            }
        )
    return out


def format_rows(result: dict[str, Any]) -> list[str]:
    batches = result["batches"]
    ups = speedups(result)
    lines = [
        f"[4] engines: generate calls of {result['frames']} frames per chunk, ms per frame (speed-up vs reference)"
    ]
    head = f"  {'engine':<13}" + "".join(f"{'B=' + str(b):>18}" for b in batches)
    head += f"{'8-chunk job':>14}{'first piece':>13}{'first 1 s':>11}{'whole 5 s':>11}{'cold start':>12}  graphs"
    lines.append(head)
    for row in result["rows"]:
        cells = []
        for b in batches:
            ms = row[f"b{b}"]["ms_per_frame"]
            up = ups.get(row["engine"], {}).get(b)
            cells.append(f"{ms:8.1f} ms" + (f" ({up:4.1f}x)" if up else "        "))
        fa = row["first_audio"]
        lines.append(
            f"  {row['engine']:<13}"
            + "".join(f"{c:>18}" for c in cells)
            + f"{row['job']['seconds']:>12.2f} s{fa['first_piece_s']:>11.3f} s{fa['first_s']:>9.2f} s"
            + f"{fa['whole_s']:>9.2f} s"
            + f"{row['cold_first_audio_s']:>10.2f} s  {'on' if row['cuda_graphs'] else 'off'}"
        )
    for row in result["rows"]:
        guard = row["guard"]
        lines.append(
            f"  guard on {row['engine']} at B={guard['batch']}: {guard['overhead_pct']:+.1f} % of the call "
            f"(target < {GUARD_TARGET_PCT:g} % of the fast engine's frame time)"
        )
    return lines
