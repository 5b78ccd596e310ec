"""The OpenAI-shaped job: `{"openai_route": "/v1/audio/speech", "openai_input": {...}}`, as RunPod's `/openai/*`
passthrough (and runpod-workers/worker-vllm) delivers it, mapped onto the job contract's fields.

Owns which OpenAI speech fields are accepted, their checks (OpenAI's own limits: `input` at most 4096
characters, `speed` 0.25-4.0), and the mapping: `input` -> `text`, `voice` -> `voice`, `instructions` ->
`instruct`, `response_format` (default mp3) -> `output_format`, and OpenAI's model names -> the worker's
default model. `speed` has no contract field: it is returned beside the job for the caller to apply after
synthesis (`audio.postprocess.time_stretch`, pitch kept). Everything else (voice names and aliases, model
kinds, text limits) is left to `audio.schema`, like any other job. Pure: no I/O, no model, no environment.
"""

from __future__ import annotations

import math
import re
from typing import Any

from audio.catalog import MODELS, VOICE_DESIGN, find_model
from audio.errors import InputError

OPENAI_SPEECH_ROUTE = "/v1/audio/speech"
# The same route as a client with a base URL that already ends in /v1 might name it.
_ROUTE_ALIASES = (OPENAI_SPEECH_ROUTE, "/audio/speech")
_OUTER_FIELDS = ("openai_route", "openai_input")
SPEECH_FIELDS = ("model", "input", "voice", "instructions", "response_format", "speed", "stream_format")

MAX_INPUT_CHARS = 4096  # OpenAI's limit for /v1/audio/speech
MIN_SPEED, MAX_SPEED = 0.25, 4.0
DEFAULT_RESPONSE_FORMAT = "mp3"  # OpenAI's default (the contract's own default is wav)
# OpenAI's and the contract's format names are the same; OpenAI's pcm (24 kHz s16le mono) is the contract's
# pcm at the model's 24 kHz, as no sample_rate is passed.
RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")

# OpenAI's speech models, dated snapshots included (tts-1-1106, gpt-4o-mini-tts-2025-03-20): all mean "the
# worker's default model".
_OPENAI_MODEL = re.compile(r"tts-1(-hd)?(-1106)?|gpt-4o-mini-tts(-\d{4}-\d{2}-\d{2})?")
OPENAI_MODEL_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


def is_openai_job(job_input: object) -> bool:
    """Whether a job input is OpenAI-shaped: a dict with `openai_route` or `openai_input`."""
    return isinstance(job_input, dict) and any(k in job_input for k in _OUTER_FIELDS)


def to_job_input(job_input: dict, default_model: str) -> tuple[dict, float]:
    """Map an OpenAI-shaped job onto the contract: (the contract's job input, speed).

    The job input holds `text` and `output_format` always, and `model`, `voice`, `instruct` where given.
    An OpenAI model name becomes default_model; a worker model name or full id becomes its short name.
    `voice` is dropped for a VoiceDesign model (OpenAI's SDK makes voice mandatory; there `instructions`
    describes the voice). Raises InputError naming what's wrong: another route, unknown fields, a missing,
    empty or too long `input`, an unknown model or format, a speed outside 0.25-4.0.

    A missing `openai_route` means the speech route. Of OpenAI's optional extras only `stream_format` is
    accepted, and only as "audio" (its default: the whole file); "sse" (events) is not served. A `null`
    value counts as not given.
    """
    unknown = [k for k in job_input if k not in _OUTER_FIELDS]
    if unknown:
        raise InputError(
            f"unknown field(s) {', '.join(map(str, unknown))}: an OpenAI-shaped job has only openai_route "
            "and openai_input (or send a plain job with text, voice, ...)"
        )
    _check_route(job_input.get("openai_route"))
    request = job_input.get("openai_input")
    if not isinstance(request, dict):
        raise InputError(
            "openai_input must be an object: the /v1/audio/speech request body, e.g. "
            '{"model": "tts-1", "input": "Hello", "voice": "alloy"}'
        )
    unknown = [k for k in request if k not in SPEECH_FIELDS]
    if unknown:
        raise InputError(
            f"unknown field(s) in openai_input: {', '.join(map(str, unknown))}; "
            f"{OPENAI_SPEECH_ROUTE} takes {', '.join(SPEECH_FIELDS)}"
        )
    given = {k: v for k, v in request.items() if v is not None}

    _check_stream_format(given.get("stream_format"))
    job: dict[str, Any] = {"text": _text(given.get("input"))}
    model = _model(given["model"], default_model) if "model" in given else None
    if model is not None:
        job["model"] = model
    if "voice" in given:
        voice = _voice(given["voice"])
        variant = find_model(model or default_model)
        if variant is None or variant.kind != VOICE_DESIGN:
            job["voice"] = voice
    instructions = _string("instructions", given.get("instructions", ""))
    if instructions.strip():  # blank means none, as with OpenAI
        job["instruct"] = instructions
    job["output_format"] = _response_format(given.get("response_format", DEFAULT_RESPONSE_FORMAT))
    return job, _speed(given.get("speed", 1.0))


def _check_route(route: Any) -> None:
    if route is None:
        return
    if isinstance(route, str) and (route.strip().rstrip("/") or "/") in _ROUTE_ALIASES:
        return
    raise InputError(f"openai_route {route!r} is not served here: this worker takes only {OPENAI_SPEECH_ROUTE}")


def _check_stream_format(value: Any) -> None:
    if value is None or value == "audio":
        return
    raise InputError(
        f"stream_format {value!r} is not supported: this worker returns the whole audio at once; "
        'use "audio" or leave it out'
    )


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(f"openai_input.{name} must be a string, got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    if value is None:
        raise InputError("openai_input.input is required: the text to speak")
    text = _string("input", value)
    if not text.strip():
        raise InputError("openai_input.input is empty: give the text to speak")
    if len(text) > MAX_INPUT_CHARS:
        raise InputError(
            f"openai_input.input is {len(text)} characters; {OPENAI_SPEECH_ROUTE} takes at most {MAX_INPUT_CHARS} "
            "(as OpenAI's does). Send longer text as a plain job with text or segments."
        )
    return text


def _model(value: Any, default_model: str) -> str:
    name = _string("model", value).strip()
    if _OPENAI_MODEL.fullmatch(name.lower()):
        return default_model
    variant = find_model(name)
    if variant is None:
        raise InputError(
            f"unknown model {name!r}: use an OpenAI model name ({', '.join(OPENAI_MODEL_NAMES)}: this worker's "
            f"default, {default_model}) or one of {', '.join(MODELS)}"
        )
    return variant.name


def _voice(value: Any) -> str:
    # OpenAI's newer API also takes a custom voice as {"id": "..."}; here the id names a speaker or alias.
    if isinstance(value, dict) and set(value) == {"id"}:
        value = value["id"]
    if not isinstance(value, str):
        raise InputError('openai_input.voice must be a voice name (e.g. "alloy", "Ryan") or {"id": name}')
    return value


def _response_format(value: Any) -> str:
    fmt = _string("response_format", value).strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise InputError(f"unknown response_format {value!r}: use one of {', '.join(RESPONSE_FORMATS)}")
    return fmt


def _speed(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"openai_input.speed must be a number from {MIN_SPEED} to {MAX_SPEED}, got {value!r}")
    if not MIN_SPEED <= value <= MAX_SPEED:
        raise InputError(f"openai_input.speed must be from {MIN_SPEED} to {MAX_SPEED}, got {value}")
    return float(value)
