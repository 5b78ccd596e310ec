"""The OpenAI-shaped job: `{"openai_route": "/v1/audio/speech", "openai_input": {...}}`, as RunPod's `/openai/*`
passthrough (and runpod-workers/worker-vllm) delivers it, mapped onto the job contract's fields.

Owns which OpenAI speech fields are accepted, their checks (OpenAI's own limits: `input` at most 4096
characters, `speed` 0.25-4.0), and the mapping: `input` -> `text`, `voice` -> `voice`, `instructions` ->
`instruct`, `response_format` (default mp3) -> `output_format`, and OpenAI's model names -> the worker's
default model. `speed` has no contract field: it is returned beside the job for the caller to apply after
synthesis (`audio.output.postprocess.time_stretch`, pitch kept). Everything else (voice names and aliases, model
kinds, text limits) is left to `audio.schema`, like any other job. Pure: no I/O, no model, no environment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from audio.catalog import BASE, CUSTOM_VOICE, MODELS, VOICE_DESIGN, find_model
from audio.errors import InputError, quoted, shown
from audio.schema import text_problem
from audio.voices.store import is_voice_id

OPENAI_SPEECH_ROUTE = "/v1/audio/speech"
# The same route as a client with a base URL that already ends in /v1 might name it.
_ROUTE_ALIASES = (OPENAI_SPEECH_ROUTE, "/audio/speech")
_OUTER_FIELDS = ("openai_route", "openai_input")
SPEECH_FIELDS = ("model", "input", "voice", "instructions", "response_format", "speed", "stream_format")
# The worker's extras beside OpenAI's fields (same names in HTTP mode and in openai_input), and their contract field.
EXTRA_FIELDS = {
    "language": "language",
    "seed": "seed",
    "ref_audio": "ref_audio",
    "ref_text": "ref_text",
    "x_vector_only_mode": "x_vector_only",
    "task_type": None,  # picks the model kind
    "max_new_tokens": None,  # params.max_new_tokens
}
# The JSON type each extra must have (strictly: no "5" for 5, no true for 1).
_EXTRA_TYPES = {
    "language": str,
    "seed": int,
    "ref_audio": str,
    "ref_text": str,
    "x_vector_only_mode": bool,
    "task_type": str,
    "max_new_tokens": int,
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}
TASK_TYPES = {"CustomVoice": CUSTOM_VOICE, "VoiceDesign": VOICE_DESIGN, "Base": BASE}
STREAM_FORMATS = ("audio", "sse")

MAX_INPUT_CHARS = 4096  # OpenAI's limit for /v1/audio/speech
MIN_SPEED, MAX_SPEED = 0.25, 4.0
DEFAULT_RESPONSE_FORMAT = "mp3"  # OpenAI's default (the contract's own default is wav)
# OpenAI's and the contract's format names are the same; OpenAI's pcm (24 kHz s16le mono) is the contract's
# pcm at the model's 24 kHz, as no sample_rate is passed.
RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm", "ulaw", "alaw")

# OpenAI's speech models, dated snapshots included (tts-1-1106, gpt-4o-mini-tts-2025-03-20): all mean "the
# worker's default model".
_OPENAI_MODEL = re.compile(r"tts-1(-hd)?(-1106)?|gpt-4o-mini-tts(-\d{4}-\d{2}-\d{2})?")
OPENAI_MODEL_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


def is_openai_job(job_input: object) -> bool:
    """Whether a job input is OpenAI-shaped: a dict with `openai_route` or `openai_input`."""
    return isinstance(job_input, dict) and any(k in job_input for k in _OUTER_FIELDS)


@dataclass(frozen=True)
class SpeechRequest:
    job: dict[str, Any]  # the contract's job input
    speed: float  # applied after synthesis (no contract field)
    stream_format: str  # "audio" | "sse" (only the HTTP mode serves "sse")


def to_job_input(job_input: dict, default_model: str) -> tuple[dict, float]:
    """Map an OpenAI-shaped job onto the contract: (the contract's job input, speed).

    A missing `openai_route` means the speech route. `stream_format` is accepted only as "audio" here (its
    default: the whole file): the queue has no event stream (the HTTP mode serves "sse")."""
    unknown = [k for k in job_input if k not in _OUTER_FIELDS]
    if unknown:
        raise InputError(
            f"unknown field(s) {', '.join(shown(str(k)) for k in unknown)}: an OpenAI-shaped job has only openai_route "
            "and openai_input (or send a plain job with text, voice, ...)"
        )
    _check_route(job_input.get("openai_route"))
    request = job_input.get("openai_input")
    if not isinstance(request, dict):
        raise InputError(
            "openai_input must be an object: the /v1/audio/speech request body, e.g. "
            '{"model": "tts-1", "input": "Hello", "voice": "alloy"}'
        )
    speech = speech_request(request, default_model, where="openai_input")
    if speech.stream_format != "audio":
        raise InputError(
            f"stream_format {quoted(speech.stream_format)} is not supported on the queue: this worker returns the "
            'whole audio at once; use "audio" or leave it out (the HTTP mode serves "sse")'
        )
    return speech.job, speech.speed


def speech_request(request: dict, default_model: str, *, where: str = "request") -> SpeechRequest:
    """An OpenAI speech request body (plus the worker's extras) as a contract job.

    The job holds `text` and `output_format` always, and `model`, `voice`, `instruct` and the extras where given.
    An OpenAI model name becomes default_model (or, with `task_type`, the default model's size in that kind); a
    worker model name or full id becomes its short name. `voice` is dropped for VoiceDesign and Base models
    (OpenAI's SDK makes voice mandatory), except a saved voice's id on a Base model. Raises InputError naming
    what's wrong: unknown fields, a missing, empty or too long `input`, an unknown model, task type or format,
    a speed outside 0.25-4.0. A `null` value counts as not given."""
    unknown = [k for k in request if k not in SPEECH_FIELDS and k not in EXTRA_FIELDS]
    if unknown:
        raise InputError(
            f"unknown field(s) in {where}: {', '.join(shown(str(k)) for k in unknown)}; "
            f"{OPENAI_SPEECH_ROUTE} takes {', '.join((*SPEECH_FIELDS, *EXTRA_FIELDS))}"
        )
    given = {k: v for k, v in request.items() if v is not None}
    for name, kind in _EXTRA_TYPES.items():
        value = given.get(name)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise InputError(f"{where}.{name} must be {_TYPE_NAMES[kind]}, got {_json_type(value)}")
        if isinstance(value, str):
            _string(name, value, where)
    stream_format = given.get("stream_format", "audio")
    if stream_format not in STREAM_FORMATS:
        raise InputError(f"unknown stream_format {quoted(stream_format)}: use one of {', '.join(STREAM_FORMATS)}")
    job: dict[str, Any] = {"text": _text(given.get("input"))}
    model = _model(given["model"], default_model) if "model" in given else None
    model = _task_model(given.get("task_type"), model, given.get("model"), default_model)
    if model is not None:
        job["model"] = model
    variant = find_model(model or default_model)
    if "voice" in given:
        voice = _voice(given["voice"])
        if variant is None or variant.kind == CUSTOM_VOICE or (variant.kind == BASE and is_voice_id(voice)):
            job["voice"] = voice
    instructions = _string("instructions", given.get("instructions", ""))
    if instructions.strip():  # blank means none, as with OpenAI
        job["instruct"] = instructions
    job["output_format"] = _response_format(given.get("response_format", DEFAULT_RESPONSE_FORMAT))
    for name, field in EXTRA_FIELDS.items():
        if field is not None and name in given:
            job[field] = given[name]
    if "max_new_tokens" in given:
        job["params"] = {"max_new_tokens": given["max_new_tokens"]}
    return SpeechRequest(job, _speed(given.get("speed", 1.0)), stream_format)


def _task_model(task_type: Any, model: str | None, asked: Any, default_model: str) -> str | None:
    """`task_type` picks the kind: the named worker model must be of it; else the default model's size in it."""
    if task_type is None:
        return model
    kind = TASK_TYPES.get(task_type) if isinstance(task_type, str) else None
    if kind is None:
        raise InputError(f"unknown task_type {quoted(task_type)}: use one of {', '.join(TASK_TYPES)}")
    named = find_model(str(asked)) if asked is not None else None
    if named is not None:
        if named.kind != kind:
            raise InputError(f"model {named.name} is not a {task_type} model (task_type {task_type})")
        return named.name
    size = MODELS[default_model].size
    same_kind = [v for v in MODELS.values() if v.kind == kind]
    return next((v.name for v in same_kind if v.size == size), same_kind[0].name)


def _check_route(route: Any) -> None:
    if route is None:
        return
    if isinstance(route, str) and (route.strip().rstrip("/") or "/") in _ROUTE_ALIASES:
        return
    raise InputError(f"openai_route {quoted(route)} is not served here: this worker takes only {OPENAI_SPEECH_ROUTE}")


def _json_type(value: Any) -> str:
    names = {bool: "true/false", str: "a string", int: "an integer", float: "a number", list: "a list"}
    return {**names, dict: "an object"}.get(type(value), type(value).__name__)


def _string(name: str, value: Any, where: str = "openai_input") -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}.{name} must be a string, got {_json_type(value)}")
    problem = text_problem(value)
    if problem is not None:
        raise InputError(f"{where}.{name} {problem}")
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
            f"unknown model {quoted(name)}: use an OpenAI model name ({', '.join(OPENAI_MODEL_NAMES)}: this worker's "
            f"default, {default_model}) or one of {', '.join(MODELS)}"
        )
    return variant.name


def _voice(value: Any) -> str:
    # OpenAI's newer API also takes a custom voice as {"id": "..."}; here the id names a speaker or alias.
    if isinstance(value, dict) and set(value) == {"id"}:
        value = value["id"]
    if not isinstance(value, str):
        raise InputError('openai_input.voice must be a voice name (e.g. "alloy", "Ryan") or {"id": name}')
    return _string("voice", value)


def _response_format(value: Any) -> str:
    fmt = _string("response_format", value).strip().lower()
    if fmt not in RESPONSE_FORMATS:
        raise InputError(f"unknown response_format {quoted(value)}: use one of {', '.join(RESPONSE_FORMATS)}")
    return fmt


def _speed(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"openai_input.speed must be a number from {MIN_SPEED} to {MAX_SPEED}, got {quoted(value)}")
    if not MIN_SPEED <= value <= MAX_SPEED:
        raise InputError(f"openai_input.speed must be from {MIN_SPEED} to {MAX_SPEED}, got {value}")
    return float(value)
