"""OpenAI-shaped jobs: exact mapping onto the contract's fields, every rejection, and the result's fit with
audio.schema (parse_job + plan_job) like any other job."""

from __future__ import annotations

import pytest

from audio.catalog import VOICE_ALIASES
from audio.errors import InputError
from audio.openai_compat import OPENAI_SPEECH_ROUTE, is_openai_job, to_job_input
from audio.schema import parse_job, plan_job

DEFAULT = "1.7B-CustomVoice"


def speech(**fields) -> dict:
    return {"openai_route": "/v1/audio/speech", "openai_input": fields}


def mapped(job: dict, default_model: str = DEFAULT) -> tuple[dict, float]:
    return to_job_input(job, default_model)


def error(job: dict, default_model: str = DEFAULT) -> str:
    with pytest.raises(InputError) as info:
        to_job_input(job, default_model)
    assert info.value.code == "invalid_input"
    return info.value.message


# --------------------------------------------------------------------------------------------------------------
# detection


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        pytest.param(speech(input="Hi"), True, id="route-and-input"),
        pytest.param({"openai_input": {"input": "Hi"}}, True, id="input-only"),
        pytest.param({"openai_route": "/v1/models"}, True, id="route-only"),
        pytest.param({"text": "Hi", "voice": "alloy"}, False, id="plain-job"),
        pytest.param({"action": "health"}, False, id="info-action"),
        pytest.param("openai_input", False, id="not-a-dict"),
        pytest.param(None, False, id="none"),
    ],
)
def test_is_openai_job(job, expected):
    assert is_openai_job(job) is expected


# --------------------------------------------------------------------------------------------------------------
# mapping


def test_minimal_request():
    assert mapped({"openai_route": "/v1/audio/speech", "openai_input": {"input": "Hi", "voice": "alloy"}}) == (
        {"text": "Hi", "voice": "alloy", "output_format": "mp3"},
        1.0,
    )


def test_full_request():
    job = speech(
        model="gpt-4o-mini-tts",
        input="Welcome back.",
        voice="coral",
        instructions="Speak cheerfully.",
        response_format="wav",
        speed=1.5,
        stream_format="audio",
    )
    assert mapped(job, default_model="0.6B-CustomVoice") == (
        {
            "text": "Welcome back.",
            "model": "0.6B-CustomVoice",
            "voice": "coral",
            "instruct": "Speak cheerfully.",
            "output_format": "wav",
        },
        1.5,
    )


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("tts-1", DEFAULT, id="tts-1"),
        pytest.param("tts-1-hd", DEFAULT, id="tts-1-hd"),
        pytest.param("gpt-4o-mini-tts", DEFAULT, id="gpt-4o-mini-tts"),
        pytest.param("tts-1-hd-1106", DEFAULT, id="tts-1-hd-snapshot"),
        pytest.param("gpt-4o-mini-tts-2025-03-20", DEFAULT, id="gpt-4o-mini-tts-snapshot"),
        pytest.param("TTS-1", DEFAULT, id="openai-name-any-case"),
        pytest.param("0.6B-CustomVoice", "0.6B-CustomVoice", id="short-name"),
        pytest.param("Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice", "1.7B-CustomVoice", id="full-id"),
        pytest.param("1.7b-customvoice", "1.7B-CustomVoice", id="short-name-any-case"),
    ],
)
def test_model(model, expected):
    job, _ = mapped(speech(model=model, input="Hi"))
    assert job["model"] == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"voice": {"id": "Ryan"}}, {"voice": "Ryan"}, id="voice-object"),
        pytest.param({"voice": "Uncle_Fu"}, {"voice": "Uncle_Fu"}, id="our-speaker"),
        pytest.param({"response_format": "PCM"}, {"output_format": "pcm"}, id="format-any-case"),
        pytest.param({"response_format": "opus"}, {"output_format": "opus"}, id="opus"),
        pytest.param({"instructions": "  "}, {}, id="blank-instructions-dropped"),
        pytest.param({"voice": None, "model": None, "speed": None}, {}, id="nulls-are-not-given"),
        pytest.param(
            {"model": "1.7B-VoiceDesign", "voice": "alloy", "instructions": "a calm, low male voice"},
            {"model": "1.7B-VoiceDesign", "instruct": "a calm, low male voice"},
            id="voice-design-drops-voice",
        ),
    ],
)
def test_optional_fields(fields, expected):
    job, speed = mapped(speech(input="Hi", **fields))
    assert job == {"text": "Hi", "output_format": "mp3", **expected}
    assert speed == 1.0


@pytest.mark.parametrize("speed", [0.25, 1, 2.5, 4.0], ids=lambda s: f"speed={s}")
def test_speed_in_range(speed):
    _, got = mapped(speech(input="Hi", speed=speed))
    assert got == float(speed)
    assert isinstance(got, float)


@pytest.mark.parametrize(
    "route", ["/v1/audio/speech", "/v1/audio/speech/", "/audio/speech", " /v1/audio/speech "], ids=repr
)
def test_route_spellings(route):
    job, _ = mapped({"openai_route": route, "openai_input": {"input": "Hi"}})
    assert job == {"text": "Hi", "output_format": "mp3"}


def test_missing_route_means_speech():
    assert mapped({"openai_input": {"input": "Hi"}}) == ({"text": "Hi", "output_format": "mp3"}, 1.0)


def test_input_at_the_limit():
    job, _ = mapped(speech(input="a" * 4096))
    assert len(job["text"]) == 4096


def test_request_is_not_modified():
    job = speech(input="Hi", voice={"id": "alloy"}, speed=2)
    before = repr(job)
    mapped(job)
    assert repr(job) == before


# --------------------------------------------------------------------------------------------------------------
# invalid_input, with the fragment that tells the caller what to fix

INVALID = [
    pytest.param(
        {"openai_route": "/v1/chat/completions", "openai_input": {"input": "Hi"}},
        ["'/v1/chat/completions'", "only /v1/audio/speech"],
        id="bad-route",
    ),
    pytest.param({"openai_route": "/v1/models"}, ["'/v1/models'", "only /v1/audio/speech"], id="models-route"),
    pytest.param({"openai_route": 7, "openai_input": {"input": "Hi"}}, ["7", "/v1/audio/speech"], id="route-type"),
    pytest.param({"openai_route": OPENAI_SPEECH_ROUTE}, ["openai_input must be an object"], id="no-openai-input"),
    pytest.param(
        {"openai_route": OPENAI_SPEECH_ROUTE, "openai_input": "Hi"}, ["openai_input must be an object"], id="not-dict"
    ),
    pytest.param(speech(voice="alloy"), ["openai_input.input is required"], id="missing-input"),
    pytest.param(speech(input=""), ["openai_input.input is empty"], id="empty-input"),
    pytest.param(speech(input=" \n "), ["openai_input.input is empty"], id="blank-input"),
    pytest.param(speech(input=["Hi"]), ["openai_input.input must be a string"], id="input-type"),
    pytest.param(speech(input="a" * 4097), ["4097 characters", "at most 4096"], id="input-too-long"),
    pytest.param(
        speech(input="Hi", model="gpt-4o"),
        ["unknown model 'gpt-4o'", "tts-1, tts-1-hd, gpt-4o-mini-tts", "1.7B-CustomVoice, 0.6B-CustomVoice"],
        id="unknown-model",
    ),
    pytest.param(speech(input="Hi", speed=0.2), ["speed must be from 0.25 to 4.0, got 0.2"], id="speed-0.2"),
    pytest.param(speech(input="Hi", speed=4.5), ["speed must be from 0.25 to 4.0, got 4.5"], id="speed-4.5"),
    pytest.param(speech(input="Hi", speed="fast"), ["speed must be a number", "'fast'"], id="speed-type"),
    pytest.param(speech(input="Hi", speed=True), ["speed must be a number"], id="speed-bool"),
    pytest.param(speech(input="Hi", speed=float("nan")), ["speed must be a number"], id="speed-nan"),
    pytest.param(
        speech(input="Hi", response_format="ogg"), ["unknown response_format 'ogg'", "mp3, opus"], id="bad-format"
    ),
    pytest.param(speech(input="Hi", voice=3), ["voice must be a voice name"], id="voice-type"),
    pytest.param(speech(input="Hi", task_type="Clone"), ["unknown task_type 'Clone'", "CustomVoice"], id="task"),
    pytest.param(
        speech(input="Hi", task_type="Base", model="0.6B-CustomVoice"),
        ["model 0.6B-CustomVoice is not a Base model"],
        id="task-vs-model",
    ),
    pytest.param(speech(input="Hi", voice={"name": "x"}), ["voice must be a voice name"], id="voice-object-shape"),
    pytest.param(speech(input="Hi", instructions=1), ["instructions must be a string"], id="instructions-type"),
    pytest.param(
        speech(input="Hi", stream_format="sse"),
        ["stream_format 'sse' is not supported on the queue", '"audio"'],
        id="sse",
    ),
    pytest.param(
        speech(input="Hi", temperature=0.5, pitch=1),
        ["unknown field(s) in openai_input: temperature, pitch", "takes model, input, voice", "task_type"],
        id="unknown-inner-key",
    ),
    pytest.param(
        {**speech(input="Hi"), "text": "Hi"},
        ["unknown field(s) text", "only openai_route and openai_input"],
        id="unknown-outer-key",
    ),
]


@pytest.mark.parametrize(("job", "fragments"), INVALID)
def test_invalid(job, fragments):
    message = error(job)
    for fragment in fragments:
        assert fragment in message


# --------------------------------------------------------------------------------------------------------------
# the mapped job is a valid contract job


def _plan(job: dict):
    contract, _ = to_job_input(job, DEFAULT)
    return plan_job(parse_job(contract), default_model=DEFAULT, max_chars=50_000)


def test_minimal_request_plans_with_the_alias_target():
    plan = _plan({"openai_route": "/v1/audio/speech", "openai_input": {"input": "Hi", "voice": "alloy"}})
    assert plan.output_format == "mp3"
    assert [(s.text, s.model.name, s.speaker) for s in plan.segments] == [("Hi", DEFAULT, VOICE_ALIASES["alloy"])]


def test_full_request_plans():
    plan = _plan(
        speech(
            model="tts-1-hd",
            input="Welcome back.",
            voice={"id": "echo"},
            instructions="Speak cheerfully.",
            response_format="flac",
            speed=0.75,
        )
    )
    assert plan.output_format == "flac"
    assert plan.warnings == []
    (segment,) = plan.segments
    assert (segment.text, segment.model.name, segment.speaker, segment.instruct) == (
        "Welcome back.",
        DEFAULT,
        VOICE_ALIASES["echo"],
        "Speak cheerfully.",
    )


@pytest.mark.parametrize("voice", sorted(v for v in VOICE_ALIASES if not v.endswith(("_1", "_2"))))
def test_every_openai_voice_name_plans(voice):
    (segment,) = _plan(speech(input="Hi", voice=voice)).segments
    assert segment.speaker == VOICE_ALIASES[voice]


def test_voice_design_request_plans():
    (segment,) = _plan(
        speech(model="1.7B-VoiceDesign", input="Hi", voice="alloy", instructions="a calm voice")
    ).segments
    assert (segment.model.name, segment.speaker, segment.instruct) == ("1.7B-VoiceDesign", None, "a calm voice")


def test_unknown_voice_is_left_to_the_schema():
    with pytest.raises(InputError, match="unknown voice 'nobody'"):
        _plan(speech(input="Hi", voice="nobody"))


EXTRAS = [
    pytest.param(
        {"language": "de", "seed": 9, "max_new_tokens": 40},
        {"language": "de", "seed": 9, "params": {"max_new_tokens": 40}},
        id="language-seed-tokens",
    ),
    pytest.param(
        {"task_type": "Base", "ref_audio": "UklGRg==", "ref_text": "Hi.", "voice": "alloy"},
        {"model": "1.7B-Base", "ref_audio": "UklGRg==", "ref_text": "Hi."},
        id="base-clone-drops-voice",
    ),
    pytest.param(
        {"task_type": "Base", "ref_audio": "UklGRg==", "x_vector_only_mode": True, "model": "tts-1"},
        {"model": "1.7B-Base", "ref_audio": "UklGRg==", "x_vector_only": True},
        id="x-vector",
    ),
    pytest.param(
        {"task_type": "VoiceDesign", "instructions": "calm"},
        {"model": "1.7B-VoiceDesign", "instruct": "calm"},
        id="design",
    ),
    pytest.param(
        {"task_type": "CustomVoice", "voice": "alloy"}, {"model": "1.7B-CustomVoice", "voice": "alloy"}, id="custom"
    ),
    pytest.param({"task_type": "Base", "voice": "v_0123456789abcdef"}, None, id="saved-voice-kept"),
]


@pytest.mark.parametrize(("extra", "want"), EXTRAS)
def test_extras_map_onto_the_contract(extra, want):
    from audio.voices.store import is_voice_id

    job, _ = to_job_input(speech(input="Hi", **extra), DEFAULT)
    if want is None:
        assert job["model"] == "1.7B-Base"
        assert ("voice" in job) == is_voice_id(extra["voice"])
        return
    assert job == {"text": "Hi", "output_format": "mp3", **want}


def test_task_type_takes_the_default_models_size():
    job, _ = to_job_input(speech(input="Hi", task_type="Base"), "0.6B-CustomVoice")
    assert job["model"] == "0.6B-Base"
    job, _ = to_job_input(speech(input="Hi", task_type="VoiceDesign", instructions="x"), "0.6B-CustomVoice")
    assert job["model"] == "1.7B-VoiceDesign"  # the only VoiceDesign model
