"""The worker's configuration, read once from the environment at the edge and passed inward as plain values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from audio.catalog import DEFAULT_MODEL, find_model
from audio.guard import GuardLimits
from audio.output.delivery import S3Config
from audio.speech import DEFAULT_ENGINE, ENGINES, STREAM_PIECE_FRAMES

DEFAULT_MODEL_DIR = "/runpod-volume/models"
DEFAULT_VOICE_DIR = "/runpod-volume/voices"
RUNPOD_HF_CACHE = "/runpod-volume/huggingface-cache/hub"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite, non-negative number, got {raw!r}")
    return value


def _frame_counts(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(int(part) for part in raw.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name} must be frame counts separated by commas (like 1,2,4,8,12), got {raw!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name} must be positive frame counts, got {raw!r}")
    return values


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _model_name(raw: str, variable: str) -> str:
    variant = find_model(raw)
    if variant is None:
        raise ValueError(f"{variable}={raw!r} is not a known model")
    return variant.name


def _hf_cache_dirs(env: Mapping[str, str]) -> tuple[Path, ...]:
    dirs = []
    if env.get("HF_HUB_CACHE"):
        dirs.append(Path(env["HF_HUB_CACHE"]))
    if env.get("HF_HOME"):
        dirs.append(Path(env["HF_HOME"]) / "hub")
    dirs.append(Path(RUNPOD_HF_CACHE))
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return tuple(dict.fromkeys(dirs))


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path(DEFAULT_MODEL_DIR)
    hf_cache_dirs: tuple[Path, ...] = (Path(RUNPOD_HF_CACHE),)
    default_model: str = DEFAULT_MODEL
    device: str = "auto"  # auto | cuda | cuda:N | cpu
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    engine: str = DEFAULT_ENGINE  # fast (our decode loop) | reference (qwen_tts's own generate)
    cuda_graphs: str = "auto"  # auto (on with CUDA) | off
    # Streamed piece sizes in codec frames, the last repeating: first audio after one frame, then ~1 s pieces.
    stream_piece_frames: tuple[int, ...] = STREAM_PIECE_FRAMES
    max_loaded_models: int = 2
    auto_download: bool = False  # fetch a missing model from the Hugging Face hub into HF_HOME on first use
    preload: tuple[str, ...] = (DEFAULT_MODEL,)
    max_chars: int = 50_000
    # The longest track a job may plan (speech at the languages' prior rates plus its pauses, over its speed):
    # a bit over what QWEN_TTS_MAX_CHARS of CJK text take (50,000 × 3 units × 0.078 s ≈ 3 h 15 min; English
    # prose is ~55 min), so a text within the character limit always fits and only pauses or speed reach it.
    max_output_s: float = 12_000.0
    max_batch: int = 8
    max_retries: int = 2
    chunk_target_chars: int = 150
    chunk_max_chars: int = 250
    crossfade_ms: float = 40.0
    edge_pad_ms: float = 60.0
    sentence_pause_ms: float = 300.0  # silence between chunks after a sentence end
    clause_pause_ms: float = 120.0  # after a clause break (`,;:`); a forced mid-clause cut crossfades
    silence_threshold_db: float = -50.0
    # Plausible speech rate bounds for a chunk's duration check, in seconds per unit of text weight.
    min_s_per_char: float = 0.02
    max_s_per_char: float = 0.25
    duration_slack_s: float = 2.0
    guard: GuardLimits = field(
        default_factory=GuardLimits
    )  # the long-form guard: expected durations, loops, stalls, silences
    max_inline_bytes: int = 19_000_000
    s3: S3Config | None = None
    allow_private_urls: bool = False  # ref_audio URLs to loopback/private/link-local addresses
    voice_cache: int = 32  # clone prompts kept per worker
    voice_dir: Path = Path(DEFAULT_VOICE_DIR)
    max_saved_voices: int = 1000
    voices_readonly: bool = False
    # Serving (issue 10): queue (RunPod's job queue) or http (a load-balancing endpoint's own server).
    mode: str = "queue"
    streaming: bool = False  # queue: the handler is a generator (stream items; /runsync returns a list)
    concurrency: int = 1  # jobs one worker takes at once
    max_queue: int = 16  # http: requests waiting beyond the running ones before 429
    # http: the largest request body, refused 413 before it is read: a job at QWEN_TTS_MAX_CHARS with a reference
    # clip at its 25 MB limit, base64 (33.4 MB), fits with room for the rest of its fields.
    max_request_bytes: int = 40_000_000
    refresh_worker: bool = False  # ask RunPod for a fresh worker after every job
    port: int = 80
    port_health: int = 80
    # Live sessions (the HTTP mode's WebSocket): an unfinished sentence is spoken up to a clause break once it
    # holds this many characters; audio a slow client has not read yet, at most; a session silent this long ends.
    live_clause_chars: int = 100
    live_buffer_s: float = 20.0
    live_idle_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        default_model = _model_name(env.get("QWEN_TTS_DEFAULT_MODEL") or DEFAULT_MODEL, "QWEN_TTS_DEFAULT_MODEL")
        # Unset or blank (platform forms often send ""): preload the default model. "none" turns it off.
        preload_raw = (env.get("QWEN_TTS_PRELOAD") or "").strip()
        if not preload_raw:
            preload: tuple[str, ...] = (default_model,)
        elif preload_raw.lower() in ("none", "0", "false", "off"):
            preload = ()
        else:
            preload = tuple(
                _model_name(p, "QWEN_TTS_PRELOAD") for p in preload_raw.replace(";", ",").split(",") if p.strip()
            )
        target = _int(env, "QWEN_TTS_CHUNK_TARGET_CHARS", 150, minimum=20)
        port = _int(env, "PORT", 80, minimum=1)
        return cls(
            model_dir=Path(env.get("QWEN_TTS_MODEL_DIR") or DEFAULT_MODEL_DIR),
            hf_cache_dirs=_hf_cache_dirs(env),
            default_model=default_model,
            device=(env.get("QWEN_TTS_DEVICE") or "auto").strip().lower(),
            dtype=(env.get("QWEN_TTS_DTYPE") or "auto").strip().lower(),
            engine=_choice(env, "QWEN_TTS_ENGINE", DEFAULT_ENGINE, ENGINES),
            cuda_graphs=_choice(env, "QWEN_TTS_CUDA_GRAPHS", "auto", ("auto", "off")),
            stream_piece_frames=_frame_counts(env, "QWEN_TTS_STREAM_PIECE_FRAMES", STREAM_PIECE_FRAMES),
            max_loaded_models=_int(env, "QWEN_TTS_MAX_LOADED_MODELS", 2, minimum=1),
            auto_download=_bool(env, "QWEN_TTS_AUTO_DOWNLOAD", False),
            preload=preload,
            max_chars=_int(env, "QWEN_TTS_MAX_CHARS", 50_000, minimum=1),
            max_output_s=_float(env, "QWEN_TTS_MAX_OUTPUT_SECONDS", 12_000.0),
            max_batch=_int(env, "QWEN_TTS_MAX_BATCH", 8, minimum=1),
            max_retries=_int(env, "QWEN_TTS_MAX_RETRIES", 2),
            chunk_target_chars=target,
            chunk_max_chars=_int(env, "QWEN_TTS_CHUNK_MAX_CHARS", max(250, target), minimum=target),
            crossfade_ms=_float(env, "QWEN_TTS_CROSSFADE_MS", 40.0),
            sentence_pause_ms=_float(env, "QWEN_TTS_SENTENCE_PAUSE_MS", 300.0),
            clause_pause_ms=_float(env, "QWEN_TTS_CLAUSE_PAUSE_MS", 120.0),
            min_s_per_char=_float(env, "QWEN_TTS_MIN_SECONDS_PER_CHAR", 0.02),
            max_s_per_char=_float(env, "QWEN_TTS_MAX_SECONDS_PER_CHAR", 0.25),
            guard=_guard(env),
            max_inline_bytes=_int(env, "QWEN_TTS_MAX_INLINE_BYTES", 19_000_000, minimum=1),
            s3=S3Config.from_env(env),
            allow_private_urls=_bool(env, "QWEN_TTS_ALLOW_PRIVATE_URLS", False),
            voice_cache=_int(env, "QWEN_TTS_VOICE_CACHE", 32),
            voice_dir=Path(env.get("QWEN_TTS_VOICE_DIR") or DEFAULT_VOICE_DIR),
            max_saved_voices=_int(env, "QWEN_TTS_MAX_SAVED_VOICES", 1000),
            voices_readonly=_bool(env, "QWEN_TTS_VOICES_READONLY", False),
            mode=_choice(env, "QWEN_TTS_MODE", "queue", ("queue", "http")),
            streaming=_bool(env, "QWEN_TTS_STREAMING", False),
            concurrency=_int(env, "QWEN_TTS_CONCURRENCY", 1, minimum=1),
            max_queue=_int(env, "QWEN_TTS_MAX_QUEUE", 16),
            max_request_bytes=_int(env, "QWEN_TTS_MAX_REQUEST_BYTES", 40_000_000, minimum=1),
            refresh_worker=_bool(env, "QWEN_TTS_REFRESH_WORKER", False),
            port=port,
            port_health=_int(env, "PORT_HEALTH", port, minimum=1),
            live_clause_chars=_int(env, "QWEN_TTS_LIVE_CLAUSE_CHARS", 100, minimum=20),
            live_buffer_s=_float(env, "QWEN_TTS_LIVE_BUFFER_SECONDS", 20.0),
            live_idle_s=_float(env, "QWEN_TTS_LIVE_IDLE_SECONDS", 60.0),
        )


def _guard(env: Mapping[str, str]) -> GuardLimits:
    d = GuardLimits()
    return GuardLimits(
        enabled=_bool(env, "QWEN_TTS_GUARD", d.enabled),
        band_low=_float(env, "QWEN_TTS_GUARD_MIN_RATIO", d.band_low),
        band_high=_float(env, "QWEN_TTS_GUARD_MAX_RATIO", d.band_high),
        budget_multiple=_float(env, "QWEN_TTS_GUARD_BUDGET_MULTIPLE", d.budget_multiple),
        loop_min_s=_float(env, "QWEN_TTS_GUARD_LOOP_SECONDS", d.loop_min_s),
        stall_s=_float(env, "QWEN_TTS_GUARD_STALL_SECONDS", d.stall_s),
        max_silence_s=_float(env, "QWEN_TTS_GUARD_MAX_SILENCE_SECONDS", d.max_silence_s),
    )
