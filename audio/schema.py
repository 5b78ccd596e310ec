"""The job contract's input shape (pydantic v2) and its resolution into a plain, validated `JobPlan`.

Field-level checks live on the models; cross-field rules that need the catalog (which model kind takes
which voice fields) live in `plan_job`. Every problem becomes an `InputError` a caller can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from audio.catalog import (
    BASE,
    CUSTOM_VOICE,
    DEFAULT_VOICE,
    LANGUAGE_CODES,
    LANGUAGES,
    MODELS,
    SPEAKERS,
    VOICE_ALIASES,
    VOICE_DESIGN,
    ModelVariant,
    find_model,
    resolve_language,
    resolve_voice,
)
from audio.errors import InputError, quoted, shown
from audio.output.delivery import MODES as DELIVERY_MODES
from audio.output.encoders import FORMATS as OUTPUT_FORMATS
from audio.output.encoders import G711_FORMATS
from audio.text.spoken import is_speakable
from audio.voices.store import is_voice_id

INFO_ACTIONS = ("health", "voices", "languages", "models")
VOICE_ACTIONS = ("create_voice", "list_voices", "get_voice", "delete_voice")
MIN_SAMPLE_RATE = 8000  # the lowest output rate a job may ask for (every model's own is higher)


def text_problem(value: str) -> str | None:
    """Why a string can't be tokenized or returned as UTF-8 (a lone surrogate, which JSON's "\\ud800" can
    carry), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone UTF-16 surrogate (U+{ord(value[exc.start]):04X}) at character {exc.start}, not valid text"
    return None


def _valid_text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# Every string field of the contract: valid Unicode text, or an invalid_input naming the field.
Text = Annotated[str, AfterValidator(_valid_text)]

# Sampling divides logits by these: a positive but tiny value overflows them to inf and the sampler picks an id
# outside the codebook. 0.01 is already as good as greedy.
MIN_DIVISOR = 0.01


def _divisor(value: float | None) -> float | None:
    if value is not None and 0 < value < MIN_DIVISOR:  # 0 and below: the field's own gt=0 says so
        raise ValueError(f"must be at least {MIN_DIVISOR} (smaller values overflow the sampler), got {value!r}")
    return value


Divisor = Annotated[float, AfterValidator(_divisor)]

# instruct and ref_text go into every chunk's prompt, whose attention is quadratic in its length: 100k characters
# asked for gigabytes. Longer than any voice description or a 20 s clip's transcript needs.
MAX_PROMPT_TEXT_CHARS = 2000


class _Strict(BaseModel):
    # strict: a number is a JSON number and a bool a JSON bool, as the contract documents: no "5" for 5, no
    # true for 1. allow_inf_nan off: NaN and infinity are refused with their own message (see _describe).
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


class Params(_Strict):
    temperature: Divisor | None = Field(default=None, gt=0, le=2)
    top_k: int | None = Field(default=None, ge=0, le=2048)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: Divisor | None = Field(default=None, gt=0, le=3)
    max_new_tokens: int | None = Field(default=None, ge=1, le=8192)
    subtalker_temperature: Divisor | None = Field(default=None, gt=0, le=2)
    subtalker_top_k: int | None = Field(default=None, ge=0, le=2048)
    subtalker_top_p: float | None = Field(default=None, gt=0, le=1)
    # The seed handler's examples put these under params; top-level fields win when both are given.
    language: Text | None = None
    instruct: Text | None = Field(default=None, max_length=MAX_PROMPT_TEXT_CHARS)

    def sampling(self) -> dict[str, Any]:
        """The generation kwargs qwen_tts takes (None = the model's generation_config default)."""
        names = ("temperature", "top_k", "top_p", "repetition_penalty")
        out = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        for n in ("temperature", "top_k", "top_p"):
            value = getattr(self, f"subtalker_{n}")
            if value is not None:
                out[f"subtalker_{n}"] = value
        return out


class VoiceFields(_Strict):
    model: Text | None = None
    voice: Text | None = None
    language: Text | None = None
    instruct: Text | None = Field(default=None, max_length=MAX_PROMPT_TEXT_CHARS)
    ref_audio: Text | None = None
    ref_text: Text | None = Field(default=None, max_length=MAX_PROMPT_TEXT_CHARS)
    x_vector_only: bool | None = None
    pause_ms: int | None = Field(default=None, ge=0, le=10_000)


class SegmentIn(VoiceFields):
    text: Text


class SynthesisJob(VoiceFields):
    action: Literal["synthesize"] = "synthesize"
    text: Text | None = None
    segments: list[SegmentIn] | None = None
    output_format: Text | None = None
    sample_rate: int | None = Field(default=None, ge=MIN_SAMPLE_RATE, le=48_000)
    loudness_lufs: float | None = Field(default=None, ge=-70, le=-5)
    delivery: Text | None = None
    stream: bool | None = None
    wav_header: bool | None = None  # ulaw/alaw in a WAV file instead of raw bytes
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    params: Params | None = None
    join: bool | None = None  # false: one audio item per segment (a clone batch), not one joined track
    voice_consistency: Literal["none", "clone"] | None = None  # VoiceDesign across chunks (see plan_job)
    captions: Literal["srt", "vtt"] | None = None  # captions of the spoken text, returned beside the audio

    @field_validator("params")
    @classmethod
    def _params(cls, value: Params | None) -> Params:
        return value or Params()

    @field_validator("output_format")
    @classmethod
    def _format(cls, value: str | None) -> str:
        fmt = (value or "wav").strip().lower()
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"must be one of {', '.join(OUTPUT_FORMATS)}")
        return fmt

    @field_validator("delivery")
    @classmethod
    def _delivery(cls, value: str | None) -> str:
        mode = (value or "auto").strip().lower()
        if mode not in DELIVERY_MODES:
            raise ValueError(f"must be one of {', '.join(DELIVERY_MODES)}")
        return mode


class CreateVoiceJob(_Strict):
    """`create_voice`: from a reference clip (`ref_audio`) or designed from a description (`instruct`)."""

    action: Literal["create_voice"]
    name: Text
    ref_audio: Text | None = None
    ref_text: Text | None = Field(default=None, max_length=MAX_PROMPT_TEXT_CHARS)
    x_vector_only: bool = False
    language: Text | None = None
    model: Text | None = None  # a Base model to build the prompt for now (else on first use)
    instruct: Text | None = Field(default=None, max_length=MAX_PROMPT_TEXT_CHARS)
    sample_text: Text | None = Field(default=None, max_length=500)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    params: Params | None = None  # sampling for the designed sample


class VoiceIdJob(_Strict):
    action: Literal["get_voice", "delete_voice"]
    voice_id: Text


class ListVoicesJob(_Strict):
    action: Literal["list_voices"]


def parse_voice_action(payload: dict) -> CreateVoiceJob | VoiceIdJob | ListVoicesJob:
    model = {"create_voice": CreateVoiceJob, "list_voices": ListVoicesJob}.get(payload.get("action"), VoiceIdJob)
    _check_field_names(payload)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InputError(f"{payload.get('action')}: {_describe(exc)}") from None


@dataclass(frozen=True)
class SegmentPlan:
    """One piece of text with everything needed to speak it."""

    text: str
    model: ModelVariant
    language: str
    speaker: str | None = None
    instruct: str | None = None
    ref_audio: str | None = None  # as sent; decoded by the reference module
    ref_text: str | None = None
    x_vector_only: bool = False
    pause_ms: int = 300  # silence before this segment (ignored for the first)
    saved_voice: str | None = None  # a saved voice's voice_id (Base models); its reference is on the volume
    # VoiceDesign with voice_consistency "clone": the Base model its designed voice is cloned on after the
    # first chunk (the same size).
    clone_model: ModelVariant | None = None


@dataclass(frozen=True)
class JobPlan:
    segments: list[SegmentPlan]
    output_format: str
    sample_rate: int | None
    loudness_lufs: float | None
    delivery: str
    stream: bool
    seed: int | None
    sampling: dict[str, Any]
    max_new_tokens: int | None
    warnings: list[str] = field(default_factory=list)
    speed: float = 1.0  # tempo, pitch kept: only the OpenAI-shaped input sets it
    wav_header: bool = False  # ulaw/alaw wrapped in a WAV header
    join: bool = True  # False: each segment is delivered as its own audio item
    voice_consistency: str = "none"  # "clone": a designed voice's first chunk is the reference for the rest
    captions: str | None = None  # "srt" | "vtt"

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(s.model.name for s in self.segments))


def _describe(error: ValidationError) -> str:
    problems = []
    unknown = []
    for item in error.errors():
        where = shown(".".join(str(p) for p in item["loc"])) or "input"
        if item["type"] == "extra_forbidden":
            unknown.append(where)
        else:
            problems.append(f"{where}: {_message(item)}")
    if unknown:
        problems.insert(0, f"unknown field(s): {', '.join(unknown)}")
    return "; ".join(problems)


def _message(item: dict) -> str:
    """pydantic's message, or ours where the caller needs to know what was sent (the JSON type, a NaN)."""
    kind, value = item["type"], item.get("input")
    json_type = {bool: "true/false", str: "a string", float: "a fractional number", list: "a list", dict: "an object"}
    sent = json_type.get(type(value), "null" if value is None else type(value).__name__)
    if kind == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):  # an int field too
        return "must be a finite number, not NaN" if value != value else f"must be a finite number, not {value}"
    if kind == "int_type":
        return f"Input should be a valid integer (a JSON number without a fraction), not {sent}"
    if kind == "float_type":
        return f"Input should be a valid number (a JSON number), not {sent}"
    if kind == "bool_type":
        return f"Input should be a valid boolean (true or false), not {sent}"
    if kind == "string_type":
        return f"Input should be a valid string, not {sent}"
    if kind in ("string_too_long", "too_long") and isinstance(value, str):  # too_long: after Text's validator
        limit = item["ctx"]["max_length"]
        return f"is {len(value)} characters; at most {limit} are taken"
    if kind == "model_type":
        return f"Input should be a valid dictionary (a JSON object), not {sent}"
    return item["msg"].removeprefix("Value error, ")


def _check_field_names(payload: dict) -> None:
    """pydantic refuses a field name that isn't valid text without naming it: name it (escaped)."""
    nested = [("", payload)]
    nested += [("params.", payload["params"])] if isinstance(payload.get("params"), dict) else []
    segments = payload.get("segments")
    if isinstance(segments, list):
        nested += [(f"segments.{i}.", s) for i, s in enumerate(segments) if isinstance(s, dict)]
    for where, level in nested:
        bad = [shown(k) for k in level if isinstance(k, str) and text_problem(k)]
        if bad:
            raise InputError(f"unknown field(s): {', '.join(where + k for k in bad)} (not valid Unicode text)")


def parse_job(payload: Any) -> SynthesisJob:
    if not isinstance(payload, dict):
        raise InputError("job input must be a JSON object")
    _check_field_names(payload)
    try:
        return SynthesisJob.model_validate(payload)
    except ValidationError as exc:
        raise InputError(_describe(exc)) from None


def _pick(*values):
    return next((v for v in values if v is not None), None)


def resolve_job_language(raw: str | None) -> str:
    return _language(raw)


def _language(raw: str | None) -> str:
    if raw is None or not raw.strip():
        return "Auto"
    lang = resolve_language(raw)
    if lang is None:
        codes = ", ".join(sorted(LANGUAGE_CODES))
        raise InputError(f"unknown language {quoted(raw)}: use one of {', '.join(LANGUAGES)} or a code ({codes})")
    return lang


def _model(raw: str | None, default_model: str) -> ModelVariant:
    name = raw if raw is not None and raw.strip() else default_model
    variant = find_model(name)
    if variant is None:
        raise InputError(f"unknown model {quoted(name)}: use one of {', '.join(MODELS)}")
    return variant


# What each model kind can't use. Given by the caller for this text, such a field is an error; inherited from
# the job's top level by a segment of another kind (a podcast mixing preset and cloned voices), it is dropped.
_UNUSED = {
    CUSTOM_VOICE: ("ref_audio", "ref_text"),
    VOICE_DESIGN: ("voice", "ref_audio", "ref_text"),
    BASE: ("voice", "instruct"),
}
_UNUSED_MESSAGES = {
    (CUSTOM_VOICE, "ref_audio"): "uses preset speakers; ref_audio/ref_text need a Base model (e.g. 1.7B-Base)",
    (CUSTOM_VOICE, "ref_text"): "uses preset speakers; ref_audio/ref_text need a Base model (e.g. 1.7B-Base)",
    (VOICE_DESIGN, "voice"): "has no preset voices; describe the voice in instruct instead",
    (VOICE_DESIGN, "ref_audio"): "does not clone; ref_audio/ref_text need a Base model (e.g. 1.7B-Base)",
    (VOICE_DESIGN, "ref_text"): "does not clone; ref_audio/ref_text need a Base model (e.g. 1.7B-Base)",
    (BASE, "voice"): "clones a voice from ref_audio and has no preset voices; use a CustomVoice model for voice names",
    (BASE, "instruct"): "does not take instruct; use 1.7B-CustomVoice or 1.7B-VoiceDesign",
}


def _segment(
    where: str, text: str, own: VoiceFields, job: SynthesisJob, default_model: str, warnings: list[str]
) -> SegmentPlan:
    if not text.strip():
        raise InputError(f"{where}text is empty")
    variant = _model(_pick(own.model, job.model), default_model)
    prefix = f"{where}model {variant.name}"
    fields = {
        "voice": (own.voice, job.voice),
        "instruct": (own.instruct, _pick(job.instruct, job.params.instruct)),
        "ref_audio": (own.ref_audio, job.ref_audio),
        "ref_text": (own.ref_text, job.ref_text),
    }
    values = {name: _pick(mine, inherited) for name, (mine, inherited) in fields.items()}
    saved_voice = _saved_voice(where, own, job)
    if saved_voice is not None:
        # A saved voice is a clone reference: it runs on the Base model of the requested size.
        if variant.kind != BASE:
            variant = MODELS[f"{variant.size}-Base"]
            prefix = f"{where}model {variant.name}"
        fields["voice"] = fields["ref_audio"] = fields["ref_text"] = (None, None)
        values["voice"] = values["ref_audio"] = values["ref_text"] = None
        if fields["instruct"][0] is not None:
            raise InputError(f"{where}a saved voice (voice {saved_voice}) does not take instruct")
        fields["instruct"] = (None, None)
    for name in _UNUSED[variant.kind]:
        if fields[name][0] is not None:
            raise InputError(f"{prefix} {_UNUSED_MESSAGES[variant.kind, name]}")
        values[name] = None
    voice, instruct, ref_audio, ref_text = (values[n] for n in ("voice", "instruct", "ref_audio", "ref_text"))
    x_vector_only = bool(_pick(own.x_vector_only, job.x_vector_only, False))
    language = _language(_pick(own.language, job.language, job.params.language))

    speaker = None
    if variant.kind == CUSTOM_VOICE:
        speaker = resolve_voice(voice or DEFAULT_VOICE)
        if speaker is None:
            names = ", ".join(s.name for s in SPEAKERS.values())
            aliases = ", ".join(VOICE_ALIASES)
            raise InputError(f"{where}unknown voice {quoted(voice)}: use one of {names} (aliases: {aliases})")
        dialect = SPEAKERS[speaker.lower()].dialect
        if dialect and language == "Auto":
            warnings.append(
                f"voice {speaker} speaks the {dialect} dialect: with language Auto (or Chinese) qwen_tts uses "
                f"{speaker}'s dialect for all text; set language for another language, or pick a voice without "
                "a dialect for standard Mandarin"
            )
        if instruct and not variant.honours_instruct:
            warnings.append(
                f"model {variant.name} ignores instruct (only 1.7B-CustomVoice follows style instructions); "
                "it was not applied"
            )
            instruct = None
    elif variant.kind == VOICE_DESIGN:
        if not instruct or not instruct.strip():
            raise InputError(f"{prefix} needs instruct: a description of the voice, e.g. 'a calm, low male voice'")
    elif variant.kind == BASE and saved_voice is None:
        if not ref_audio:
            raise InputError(f"{prefix} needs ref_audio (base64, a data: URI or an http(s) URL) to clone")
        if not x_vector_only and not (ref_text and ref_text.strip()):
            raise InputError(f"{prefix} needs ref_text, the transcript of ref_audio, unless x_vector_only is true")
    return SegmentPlan(
        text=text,
        model=variant,
        language=language,
        speaker=speaker,
        instruct=instruct,
        ref_audio=ref_audio,
        ref_text=ref_text if not x_vector_only else None,
        x_vector_only=x_vector_only,
        pause_ms=_pick(own.pause_ms, job.pause_ms, 300),
        saved_voice=saved_voice,
    )


def _saved_voice(where: str, own: VoiceFields, job: SynthesisJob) -> str | None:
    """The voice_id a segment speaks with, if any: the nearest level that names a voice source decides."""
    for level in (own, job):
        saved = level.voice if is_voice_id(level.voice) else None
        if saved is not None and level.ref_audio is not None:
            raise InputError(f"{where}give a saved voice (voice {saved}) or ref_audio, not both")
        if saved is not None:
            return saved
        if level.ref_audio is not None or level.voice is not None:
            return None
    return None


def plan_job(job: SynthesisJob, *, default_model: str, max_chars: int) -> JobPlan:
    if (job.text is None) == (job.segments is None):
        raise InputError("give exactly one of text or segments")
    warnings: list[str] = []
    if job.text is not None:
        # A single text's fields are all its own: pass them as the segment's, with nothing to inherit.
        own = VoiceFields(**job.model_dump(include=set(VoiceFields.model_fields)))
        own.instruct = _pick(job.instruct, job.params.instruct)
        segments = [_segment("", job.text, own, job, default_model, warnings)]
    else:
        if not job.segments:
            raise InputError("segments is empty: give at least one {text, ...}")
        segments = [
            _segment(f"segments[{i}]: ", s.text, s, job, default_model, warnings) for i, s in enumerate(job.segments)
        ]
    join = job.join is not False
    if not join:
        if job.segments is None:
            raise InputError("join: false returns one audio item per segment: give segments, not text")
        pausing = ["pause_ms"] if job.pause_ms is not None else []
        pausing += [f"segments[{i}].pause_ms" for i, s in enumerate(job.segments) if s.pause_ms is not None]
        if pausing:
            where = ", ".join(pausing)
            raise InputError(
                f"{where}: pause_ms is the silence between joined segments and has no meaning with join: false "
                "(each segment is its own audio item); leave it out"
            )
    consistency = job.voice_consistency or "none"
    if consistency == "clone":
        designed = [s for s in segments if s.model.kind == VOICE_DESIGN]
        if not designed:
            warnings.append('voice_consistency "clone" applies to VoiceDesign voices; this job has none')
        segments = [
            replace(s, clone_model=MODELS[f"{s.model.size}-Base"]) if s.model.kind == VOICE_DESIGN else s
            for s in segments
        ]
    if not any(is_speakable(s.text) for s in segments):
        raise InputError("the text has nothing to speak: it holds only punctuation, symbols, emoji or whitespace")
    total = sum(len(s.text) for s in segments)
    if total > max_chars:
        raise InputError(
            f"text is {total} characters; this worker takes at most {max_chars} per job "
            "(QWEN_TTS_MAX_CHARS). Split it into several jobs."
        )
    return JobPlan(
        segments=segments,
        output_format=job.output_format,
        sample_rate=job.sample_rate,
        loudness_lufs=job.loudness_lufs,
        delivery=job.delivery,
        stream=bool(job.stream),
        seed=job.seed,
        sampling=job.params.sampling(),
        max_new_tokens=job.params.max_new_tokens,
        warnings=list(dict.fromkeys(warnings)),
        wav_header=_wav_header(job),
        join=join,
        voice_consistency=consistency,
        captions=job.captions,
    )


def _wav_header(job: SynthesisJob) -> bool:
    if job.wav_header and job.output_format not in G711_FORMATS:
        raise InputError(f"wav_header is for {' and '.join(G711_FORMATS)} output, not {job.output_format}")
    return bool(job.wav_header)
