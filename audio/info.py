"""The info actions (`health`, `voices`, `languages`, `models`): what a worker reports about itself and the
catalog. Read-only answers built from plain values the worker hands in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from audio import catalog
from audio.errors import InputError, quoted
from audio.model_loader import ModelCache, find_model_path, versions
from audio.output import encoders
from audio.schema import INFO_ACTIONS, VOICE_ACTIONS
from audio.settings import Settings


@dataclass(frozen=True)
class WorkerState:
    """What `health` reports of a worker's life: when it started, and why it can't synthesize, if it can't."""

    started_at: float  # time.time()
    startup_error: str | None  # the preload failed
    unusable: str | None  # a job left the GPU or model unusable
    s3_configured: bool


def answer(action: str, settings: Settings, models: ModelCache, state: WorkerState) -> dict[str, Any]:
    if action == "health":
        return health(settings, models, state)
    if action == "voices":
        return {
            "custom_voice": [
                {"name": s.name, "native_language": s.native_language, "description": s.description}
                for s in catalog.SPEAKERS.values()
            ],
            "aliases": catalog.VOICE_ALIASES,
            "default": catalog.DEFAULT_VOICE,
            "voice_design": "describe the voice in `instruct` (model 1.7B-VoiceDesign)",
            "base": "clone from `ref_audio` + `ref_text`, or `x_vector_only: true` (models 1.7B-Base, 0.6B-Base)",
        }
    if action == "languages":
        return {"languages": list(catalog.LANGUAGES), "codes": catalog.LANGUAGE_CODES}
    if action == "models":
        return {
            "models": [
                {
                    "name": v.name,
                    "id": v.repo_id,
                    "kind": v.kind,
                    "size": v.size,
                    "instruct": v.honours_instruct,
                    "present": find_model_path(v, settings) is not None,
                    "loaded": v.name in models.loaded(),
                }
                for v in catalog.MODELS.values()
            ],
            "default": settings.default_model,
        }
    raise InputError(f"unknown action {quoted(action)}: use synthesize, {', '.join(INFO_ACTIONS + VOICE_ACTIONS)}")


def health(settings: Settings, models: ModelCache, state: WorkerState) -> dict[str, Any]:
    uptime_s = round(time.time() - state.started_at, 1)
    if state.startup_error is not None:
        return {
            "status": "unavailable",
            "startup_error": state.startup_error,
            "loaded_models": models.loaded(),
            "model_loads": models.loads(),
            "default_model": settings.default_model,
            "uptime_seconds": uptime_s,
            "versions": versions(),
        }
    runtime = models.runtime
    unusable = {"status": "unusable", "unusable_reason": state.unusable} if state.unusable else {}
    return {
        "status": "ok",
        "device": runtime.device,
        "dtype": runtime.dtype,
        "attention": runtime.attention,
        "engine": settings.engine,
        "loaded_models": models.loaded(),
        "model_loads": models.loads(),
        "default_model": settings.default_model,
        "output_formats": encoders.available_formats(),
        "s3_configured": state.s3_configured,
        "uptime_seconds": uptime_s,
        "versions": versions(),
        **unusable,
    }
