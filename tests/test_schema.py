"""Tests for audio/schema.py: parse_job + plan_job on whole payloads, exact plans and exact error codes/messages."""

from __future__ import annotations

import pytest

from audio.catalog import MODELS
from audio.errors import InputError
from audio.schema import SegmentPlan, parse_job, plan_job

REF = "data:audio/wav;base64,UklGRiQAAABXQVZF"
MAX_CHARS = 50_000
ALL_SPEAKERS = "Vivian, Serena, Uncle_Fu, Dylan, Eric, Ryan, Aiden, Ono_Anna, Sohee"
ALL_MODELS = "1.7B-CustomVoice, 0.6B-CustomVoice, 1.7B-Base, 0.6B-Base, 1.7B-VoiceDesign"


def plan(payload, *, max_chars: int = MAX_CHARS, default_model: str = "1.7B-CustomVoice"):
    return plan_job(parse_job(payload), default_model=default_model, max_chars=max_chars)


def plan_error(payload, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        plan(payload, **kwargs)
    assert info.value.code == "invalid_input"
    return info.value


def only_segment(payload, **kwargs) -> SegmentPlan:
    result = plan(payload, **kwargs)
    assert len(result.segments) == 1
    return result.segments[0]


# --------------------------------------------------------------------------------------------------------------
# invalid_input: every rule, with the fragments of the message that tell the caller what to fix

INVALID = [
    # --- which model takes which voice fields
    pytest.param(
        {"text": "hi", "model": "1.7B-Base", "voice": "Ryan", "ref_audio": REF, "ref_text": "hello"},
        ["model 1.7B-Base clones a voice from ref_audio", "has no preset voices", "use a CustomVoice model"],
        id="voice-on-base-model",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-Base", "instruct": "happy", "ref_audio": REF, "ref_text": "hello"},
        ["model 1.7B-Base does not take instruct", "1.7B-CustomVoice or 1.7B-VoiceDesign"],
        id="instruct-on-base-model",
    ),
    pytest.param(
        {"text": "hi", "ref_audio": REF},
        ["model 1.7B-CustomVoice uses preset speakers", "ref_audio/ref_text need a Base model"],
        id="ref-audio-on-default-custom-voice",
    ),
    pytest.param(
        {"text": "hi", "model": "0.6B-CustomVoice", "ref_audio": REF, "ref_text": "hello"},
        ["model 0.6B-CustomVoice uses preset speakers", "ref_audio/ref_text need a Base model"],
        id="ref-audio-on-0.6B-custom-voice",
    ),
    pytest.param(
        {"text": "hi", "ref_text": "hello"},
        ["model 1.7B-CustomVoice uses preset speakers", "ref_audio/ref_text need a Base model"],
        id="ref-text-on-custom-voice",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-VoiceDesign"},
        ["model 1.7B-VoiceDesign needs instruct", "a description of the voice"],
        id="voice-design-without-instruct",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-VoiceDesign", "instruct": "   "},
        ["model 1.7B-VoiceDesign needs instruct"],
        id="voice-design-whitespace-instruct",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-VoiceDesign", "instruct": "a calm voice", "voice": "Ryan"},
        ["model 1.7B-VoiceDesign has no preset voices", "describe the voice in instruct"],
        id="voice-on-voice-design",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-VoiceDesign", "instruct": "a calm voice", "ref_audio": REF},
        ["model 1.7B-VoiceDesign does not clone", "ref_audio/ref_text need a Base model"],
        id="ref-audio-on-voice-design",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-Base"},
        ["model 1.7B-Base needs ref_audio", "base64, a data: URI or an http(s) URL"],
        id="base-without-ref-audio",
    ),
    pytest.param(
        {"text": "hi", "model": "0.6B-Base", "ref_text": "hello", "x_vector_only": True},
        ["model 0.6B-Base needs ref_audio"],
        id="base-x-vector-without-ref-audio",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-Base", "ref_audio": REF},
        ["model 1.7B-Base needs ref_text", "the transcript of ref_audio", "unless x_vector_only is true"],
        id="icl-clone-without-ref-text",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-Base", "ref_audio": REF, "x_vector_only": False},
        ["model 1.7B-Base needs ref_text", "unless x_vector_only is true"],
        id="icl-clone-explicit-x-vector-false-without-ref-text",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-Base", "ref_audio": REF, "ref_text": "  "},
        ["model 1.7B-Base needs ref_text"],
        id="icl-clone-whitespace-ref-text",
    ),
    pytest.param(
        {"text": "hi", "model": "1.7B-Base", "voice": "Ryan"},
        ["model 1.7B-Base clones a voice from ref_audio"],
        id="default-model-overridden-to-base-with-voice",
    ),
    # --- catalog look-ups
    pytest.param(
        {"text": "hi", "voice": "Bob"},
        ["unknown voice 'Bob'", f"use one of {ALL_SPEAKERS}", "aliases: male_1, male_2, female_1, female_2, alloy"],
        id="unknown-voice",
    ),
    pytest.param(
        {"text": "hi", "language": "Klingon"},
        [
            "unknown language 'Klingon'",
            "Auto, Chinese, English, Japanese, Korean, German, French, Russian, Portuguese, Spanish, Italian",
            "de, en, es, fr, it, ja, ko, pt, ru, zh",
        ],
        id="unknown-language",
    ),
    pytest.param(
        {"text": "hi", "params": {"language": "xx-YY"}},
        ["unknown language 'xx-YY'"],
        id="unknown-language-in-params",
    ),
    pytest.param(
        {"text": "hi", "model": "3B-CustomVoice"},
        ["unknown model '3B-CustomVoice'", f"use one of {ALL_MODELS}"],
        id="unknown-model",
    ),
    pytest.param(
        {"text": "hi", "model": "Qwen/Qwen3-TTS-12Hz-Tokenizer"},
        ["unknown model 'Qwen/Qwen3-TTS-12Hz-Tokenizer'"],
        id="unknown-full-model-id",
    ),
    # --- unknown fields are named
    pytest.param({"text": "hi", "foo": 1, "bar": 2}, ["unknown field(s): foo, bar"], id="unknown-top-level-fields"),
    pytest.param({"text": "hi", "params": {"temp": 0.5}}, ["unknown field(s): params.temp"], id="unknown-param-field"),
    pytest.param(
        {"segments": [{"text": "a"}, {"text": "b", "speaker": "Ryan"}]},
        ["unknown field(s): segments.1.speaker"],
        id="unknown-segment-field",
    ),
    pytest.param(
        {"segments": [{"text": "a", "output_format": "mp3"}]},
        ["unknown field(s): segments.0.output_format"],
        id="job-only-field-inside-segment",
    ),
    # --- text
    pytest.param({"text": ""}, ["text is empty"], id="empty-text"),
    pytest.param({"text": " \n\t "}, ["text is empty"], id="whitespace-only-text"),
    pytest.param(
        {"segments": [{"text": "a"}, {"text": "  "}]}, ["segments[1]: text is empty"], id="empty-segment-text"
    ),
    pytest.param({"text": 5}, ["text: Input should be a valid string"], id="text-not-a-string"),
    pytest.param({"segments": [{"voice": "Ryan"}]}, ["segments.0.text: Field required"], id="segment-without-text"),
    pytest.param(
        {"text": "hi", "segments": [{"text": "there"}]},
        ["give exactly one of text or segments"],
        id="text-and-segments",
    ),
    pytest.param({}, ["give exactly one of text or segments"], id="neither-text-nor-segments"),
    pytest.param({"voice": "Ryan"}, ["give exactly one of text or segments"], id="only-voice-fields"),
    pytest.param({"segments": []}, ["segments is empty", "at least one"], id="empty-segments-list"),
    # --- ranges
    pytest.param(
        {"text": "hi", "sample_rate": 7999},
        ["sample_rate: Input should be greater than or equal to 8000"],
        id="sr-7999",
    ),
    pytest.param(
        {"text": "hi", "sample_rate": 48001},
        ["sample_rate: Input should be less than or equal to 48000"],
        id="sr-48001",
    ),
    pytest.param(
        {"text": "hi", "pause_ms": -1}, ["pause_ms: Input should be greater than or equal to 0"], id="pause-minus-1"
    ),
    pytest.param(
        {"text": "hi", "pause_ms": 10001}, ["pause_ms: Input should be less than or equal to 10000"], id="pause-10001"
    ),
    pytest.param(
        {"segments": [{"text": "a", "pause_ms": 10001}]},
        ["segments.0.pause_ms: Input should be less than or equal to 10000"],
        id="segment-pause-10001",
    ),
    pytest.param({"text": "hi", "seed": -1}, ["seed: Input should be greater than or equal to 0"], id="seed-negative"),
    pytest.param(
        {"text": "hi", "seed": 2**32}, ["seed: Input should be less than or equal to 4294967295"], id="seed-2-pow-32"
    ),
    pytest.param(
        {"text": "hi", "loudness_lufs": 0}, ["loudness_lufs: Input should be less than or equal to -5"], id="lufs-0"
    ),
    pytest.param(
        {"text": "hi", "params": {"temperature": 0}},
        ["params.temperature: Input should be greater than 0"],
        id="temperature-0",
    ),
    pytest.param(
        {"text": "hi", "params": {"top_p": 1.5}},
        ["params.top_p: Input should be less than or equal to 1"],
        id="top-p-1.5",
    ),
    pytest.param(
        {"text": "hi", "params": {"max_new_tokens": 0}},
        ["params.max_new_tokens: Input should be greater than or equal to 1"],
        id="max-new-tokens-0",
    ),
    pytest.param(
        {"text": "hi", "params": {"top_k": -1}},
        ["params.top_k: Input should be greater than or equal to 0"],
        id="top-k-neg",
    ),
    pytest.param(
        {"text": "hi", "params": "hot"}, ["params: Input should be a valid dictionary"], id="params-not-an-object"
    ),
    # --- enumerations
    pytest.param(
        {"text": "hi", "output_format": "ogg"},
        ["output_format: must be one of wav, mp3, flac, opus, aac, pcm"],
        id="bad-output-format",
    ),
    pytest.param({"text": "hi", "delivery": "ftp"}, ["delivery: must be one of auto, base64, s3"], id="bad-delivery"),
    pytest.param({"text": "hi", "action": "speak"}, ["action: Input should be 'synthesize'"], id="bad-action"),
    # --- several problems are all reported
    pytest.param(
        {"text": "hi", "foo": 1, "sample_rate": 100, "params": {"top_p": 2}},
        ["unknown field(s): foo;", "sample_rate: Input should be greater than or equal to 8000", "params.top_p"],
        id="several-problems-at-once",
    ),
]


@pytest.mark.parametrize(("payload", "fragments"), INVALID)
def test_invalid_input(payload, fragments):
    message = plan_error(payload).message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([{"text": "hi"}], id="list"),
        pytest.param("hi", id="string"),
        pytest.param(None, id="null"),
        pytest.param(42, id="number"),
    ],
)
def test_non_object_input(payload):
    assert plan_error(payload).message == "job input must be a JSON object"


def test_default_model_applies_its_rules():
    error = plan_error({"text": "hi"}, default_model="0.6B-Base")
    assert "model 0.6B-Base needs ref_audio" in error.message


def test_segment_error_names_the_segment():
    error = plan_error({"segments": [{"text": "a"}, {"text": "b", "model": "1.7B-Base"}]})
    assert error.message.startswith("segments[1]: model 1.7B-Base needs ref_audio")


def test_inherited_fields_a_segment_kind_cannot_use_are_dropped():
    # A podcast mixing kinds: the top-level voice/instruct serve the CustomVoice segment, ref_* the Base one.
    result = plan(
        {
            "voice": "Ryan",
            "instruct": "calm",
            "ref_audio": REF,
            "ref_text": "reference words",
            "segments": [
                {"text": "a", "model": "1.7B-Base"},
                {"text": "b", "model": "1.7B-CustomVoice"},
                {"text": "c", "model": "1.7B-VoiceDesign"},
            ],
        }
    )
    base, custom, design = result.segments
    assert (base.speaker, base.instruct, base.ref_audio, base.ref_text) == (None, None, REF, "reference words")
    assert (custom.speaker, custom.instruct, custom.ref_audio, custom.ref_text) == ("Ryan", "calm", None, None)
    assert (design.speaker, design.instruct, design.ref_audio, design.ref_text) == (None, "calm", None, None)


def test_a_segments_own_field_its_kind_cannot_use_is_an_error():
    error = plan_error({"segments": [{"text": "a", "model": "1.7B-Base", "ref_audio": REF, "voice": "Ryan"}]})
    assert "segments[0]: model 1.7B-Base clones a voice from ref_audio" in error.message


# --------------------------------------------------------------------------------------------------------------
# max_chars


def test_text_at_max_chars_is_accepted():
    assert only_segment({"text": "x" * 10}, max_chars=10).text == "x" * 10


def test_text_over_max_chars():
    message = plan_error({"text": "x" * 11}, max_chars=10).message
    assert "text is 11 characters" in message
    assert "at most 10 per job" in message
    assert "QWEN_TTS_MAX_CHARS" in message


def test_segments_sum_over_max_chars():
    # Each segment is under the limit; together they are one over.
    message = plan_error({"segments": [{"text": "x" * 6}, {"text": "y" * 5}]}, max_chars=10).message
    assert "text is 11 characters" in message
    assert "at most 10 per job" in message


def test_segments_sum_at_max_chars_is_accepted():
    result = plan({"segments": [{"text": "x" * 6}, {"text": "y" * 4}]}, max_chars=10)
    assert [s.text for s in result.segments] == ["x" * 6, "y" * 4]


# --------------------------------------------------------------------------------------------------------------
# valid jobs: exact plans


def test_minimal_job_plan():
    result = plan({"text": "Hello there."})
    assert result.segments == [
        SegmentPlan(text="Hello there.", model=MODELS["1.7B-CustomVoice"], language="Auto", speaker="Ryan")
    ]
    assert result.segments[0].pause_ms == 300
    assert result.output_format == "wav"
    assert result.sample_rate is None
    assert result.loudness_lufs is None
    assert result.delivery == "auto"
    assert result.stream is False
    assert result.seed is None
    assert result.sampling == {}
    assert result.max_new_tokens is None
    assert result.warnings == []
    assert result.models == ["1.7B-CustomVoice"]


def test_default_model_argument_is_used():
    segment = only_segment({"text": "hi"}, default_model="0.6B-CustomVoice")
    assert segment.model == MODELS["0.6B-CustomVoice"]
    assert segment.speaker == "Ryan"


def test_explicit_model_beats_default_model():
    assert only_segment({"text": "hi", "model": "1.7B-CustomVoice"}, default_model="0.6B-Base").model.name == (
        "1.7B-CustomVoice"
    )


def test_job_level_fields_are_carried():
    result = plan(
        {
            "text": "hi",
            "output_format": " MP3 ",
            "sample_rate": 44100,
            "loudness_lufs": -16,
            "delivery": "S3",
            "stream": True,
            "seed": 1234,
        }
    )
    assert result.output_format == "mp3"
    assert result.sample_rate == 44100
    assert result.loudness_lufs == -16.0
    assert result.delivery == "s3"
    assert result.stream is True
    assert result.seed == 1234


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"sample_rate": 8000}, id="sr-8000"),
        pytest.param({"sample_rate": 48000}, id="sr-48000"),
        pytest.param({"pause_ms": 0}, id="pause-0"),
        pytest.param({"pause_ms": 10000}, id="pause-10000"),
        pytest.param({"seed": 0}, id="seed-0"),
        pytest.param({"seed": 2**32 - 1}, id="seed-max"),
        pytest.param({"params": {"temperature": 2, "top_p": 1, "max_new_tokens": 8192}}, id="params-upper-bounds"),
        pytest.param({"params": {"max_new_tokens": 1, "top_k": 0}}, id="params-lower-bounds"),
    ],
)
def test_boundary_values_are_accepted(extra):
    assert plan({"text": "hi", **extra}).segments[0].text == "hi"


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm"])
def test_every_output_format(fmt):
    assert plan({"text": "hi", "output_format": fmt}).output_format == fmt


@pytest.mark.parametrize("mode", ["auto", "base64", "s3"])
def test_every_delivery_mode(mode):
    assert plan({"text": "hi", "delivery": mode}).delivery == mode


def test_sampling_params():
    result = plan(
        {
            "text": "hi",
            "params": {
                "temperature": 0.7,
                "top_k": 50,
                "top_p": 0.9,
                "repetition_penalty": 1.1,
                "max_new_tokens": 2048,
                "subtalker_temperature": 0.5,
                "subtalker_top_k": 10,
                "subtalker_top_p": 0.8,
            },
        }
    )
    assert result.sampling == {
        "temperature": 0.7,
        "top_k": 50,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
        "subtalker_temperature": 0.5,
        "subtalker_top_k": 10,
        "subtalker_top_p": 0.8,
    }
    assert result.max_new_tokens == 2048


@pytest.mark.parametrize(
    ("voice", "speaker"),
    [
        pytest.param("male_1", "Ryan", id="male_1"),
        pytest.param("male_2", "Aiden", id="male_2"),
        pytest.param("female_1", "Vivian", id="female_1"),
        pytest.param("female_2", "Serena", id="female_2"),
        pytest.param("FEMALE_1", "Vivian", id="alias-upper-case"),
        pytest.param("rYaN", "Ryan", id="speaker-mixed-case"),
        pytest.param(" uncle_fu ", "Uncle_Fu", id="speaker-padded-lower"),
        pytest.param("ONO_ANNA", "Ono_Anna", id="speaker-upper"),
        pytest.param("Sohee", "Sohee", id="speaker-canonical"),
        pytest.param("alloy", "Serena", id="openai-alloy"),
        pytest.param("echo", "Ryan", id="openai-echo"),
        pytest.param("Shimmer", "Sohee", id="openai-shimmer-capitalised"),
        pytest.param("onyx", "Uncle_Fu", id="openai-onyx"),
        pytest.param("", "Ryan", id="empty-voice-is-default"),
    ],
)
def test_voice_resolution(voice, speaker):
    assert only_segment({"text": "hi", "voice": voice}).speaker == speaker


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        pytest.param("English", "English", id="name"),
        pytest.param("english", "English", id="name-lower"),
        pytest.param("JAPANESE", "Japanese", id="name-upper"),
        pytest.param("auto", "Auto", id="auto-lower"),
        pytest.param("", "Auto", id="empty-is-auto"),
        pytest.param("en", "English", id="en"),
        pytest.param("en-US", "English", id="en-US"),
        pytest.param("EN_gb", "English", id="EN_gb"),
        pytest.param("zh", "Chinese", id="zh"),
        pytest.param("zh_CN", "Chinese", id="zh_CN"),
        pytest.param("zh-CN", "Chinese", id="zh-CN"),
        pytest.param("ja", "Japanese", id="ja"),
        pytest.param("ko", "Korean", id="ko"),
        pytest.param("de", "German", id="de"),
        pytest.param("fr", "French", id="fr"),
        pytest.param("ru", "Russian", id="ru"),
        pytest.param("pt", "Portuguese", id="pt"),
        pytest.param("pt-BR", "Portuguese", id="pt-BR"),
        pytest.param("es", "Spanish", id="es"),
        pytest.param("it", "Italian", id="it"),
    ],
)
def test_language_resolution(language, expected):
    assert only_segment({"text": "hi", "language": language}).language == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("1.7B-CustomVoice", "1.7B-CustomVoice", id="short-name"),
        pytest.param("0.6b-customvoice", "0.6B-CustomVoice", id="short-name-lower"),
        pytest.param("Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice", "1.7B-CustomVoice", id="full-id"),
        pytest.param("Qwen3-TTS-12Hz-0.6B-CustomVoice", "0.6B-CustomVoice", id="dir-name"),
        pytest.param("", "1.7B-CustomVoice", id="empty-is-default"),
    ],
)
def test_custom_voice_model_names(model, expected):
    assert only_segment({"text": "hi", "model": model}).model.name == expected


def test_full_base_model_id_with_x_vector_clone():
    segment = only_segment(
        {"text": "hi", "model": "Qwen/Qwen3-TTS-12Hz-0.6B-Base", "ref_audio": REF, "x_vector_only": True}
    )
    assert segment == SegmentPlan(
        text="hi", model=MODELS["0.6B-Base"], language="Auto", ref_audio=REF, x_vector_only=True
    )


def test_icl_clone_plan():
    segment = only_segment({"text": "hi", "model": "1.7B-Base", "ref_audio": REF, "ref_text": "hello there"})
    assert segment == SegmentPlan(
        text="hi", model=MODELS["1.7B-Base"], language="Auto", ref_audio=REF, ref_text="hello there"
    )


def test_x_vector_only_without_ref_text_is_ok():
    segment = only_segment({"text": "hi", "model": "1.7B-Base", "ref_audio": REF, "x_vector_only": True})
    assert segment.speaker is None
    assert segment.ref_text is None
    assert segment.x_vector_only is True


def test_x_vector_only_drops_ref_text():
    segment = only_segment(
        {"text": "hi", "model": "1.7B-Base", "ref_audio": REF, "ref_text": "hello", "x_vector_only": True}
    )
    assert segment.ref_text is None
    assert segment.x_vector_only is True


def test_voice_design_plan():
    segment = only_segment({"text": "hi", "model": "1.7B-VoiceDesign", "instruct": "a calm, low male voice"})
    assert segment == SegmentPlan(
        text="hi", model=MODELS["1.7B-VoiceDesign"], language="Auto", instruct="a calm, low male voice"
    )


def test_voice_design_instruct_from_params():
    segment = only_segment({"text": "hi", "model": "1.7B-VoiceDesign", "params": {"instruct": "a bright voice"}})
    assert segment.instruct == "a bright voice"


def test_params_language_and_instruct_used_when_top_level_absent():
    segment = only_segment({"text": "hi", "params": {"language": "de", "instruct": "whisper"}})
    assert segment.language == "German"
    assert segment.instruct == "whisper"


def test_top_level_language_and_instruct_win_over_params():
    segment = only_segment(
        {"text": "hi", "language": "fr", "instruct": "shout", "params": {"language": "de", "instruct": "whisper"}}
    )
    assert segment.language == "French"
    assert segment.instruct == "shout"


def test_instruct_kept_on_1_7b_custom_voice():
    result = plan({"text": "hi", "instruct": "speak slowly"})
    assert result.segments[0].instruct == "speak slowly"
    assert result.warnings == []


def test_instruct_on_0_6b_custom_voice_warns_and_is_dropped():
    result = plan({"text": "hi", "model": "0.6B-CustomVoice", "instruct": "speak slowly"})
    assert len(result.warnings) == 1
    assert "model 0.6B-CustomVoice ignores instruct" in result.warnings[0]
    assert "it was not applied" in result.warnings[0]
    assert result.segments[0].instruct is None
    assert result.segments[0].speaker == "Ryan"


def test_params_instruct_on_0_6b_custom_voice_warns_too():
    result = plan({"text": "hi", "model": "0.6B-CustomVoice", "params": {"instruct": "speak slowly"}})
    assert len(result.warnings) == 1
    assert result.segments[0].instruct is None


# --------------------------------------------------------------------------------------------------------------
# segments: inheritance, overrides, pauses


def test_segments_inherit_every_top_level_field():
    result = plan(
        {
            "model": "1.7B-CustomVoice",
            "voice": "female_2",
            "language": "ja",
            "instruct": "cheerful",
            "pause_ms": 750,
            "segments": [{"text": "one"}, {"text": "two"}],
        }
    )
    expected = {
        "model": MODELS["1.7B-CustomVoice"],
        "language": "Japanese",
        "speaker": "Serena",
        "instruct": "cheerful",
        "pause_ms": 750,
    }
    assert result.segments == [SegmentPlan(text="one", **expected), SegmentPlan(text="two", **expected)]


def test_segments_override_voice_language_instruct_pause():
    result = plan(
        {
            "voice": "Ryan",
            "language": "en",
            "instruct": "calm",
            "pause_ms": 750,
            "segments": [
                {"text": "one"},
                {"text": "two", "voice": "Sohee", "language": "ko", "instruct": "excited", "pause_ms": 0},
            ],
        }
    )
    cv = MODELS["1.7B-CustomVoice"]
    assert result.segments == [
        SegmentPlan(text="one", model=cv, language="English", speaker="Ryan", instruct="calm", pause_ms=750),
        SegmentPlan(text="two", model=cv, language="Korean", speaker="Sohee", instruct="excited", pause_ms=0),
    ]


def test_segments_override_model():
    result = plan(
        {
            "language": "en",
            "segments": [
                {"text": "one", "voice": "Aiden"},
                {"text": "two", "model": "1.7B-VoiceDesign", "instruct": "an old wizard"},
                {"text": "three", "model": "0.6B-Base", "ref_audio": REF, "ref_text": "hello"},
                {"text": "four", "voice": "Eric"},
            ],
        }
    )
    assert result.segments == [
        SegmentPlan(text="one", model=MODELS["1.7B-CustomVoice"], language="English", speaker="Aiden"),
        SegmentPlan(text="two", model=MODELS["1.7B-VoiceDesign"], language="English", instruct="an old wizard"),
        SegmentPlan(text="three", model=MODELS["0.6B-Base"], language="English", ref_audio=REF, ref_text="hello"),
        SegmentPlan(text="four", model=MODELS["1.7B-CustomVoice"], language="English", speaker="Eric"),
    ]
    assert result.models == ["1.7B-CustomVoice", "1.7B-VoiceDesign", "0.6B-Base"]


def test_segments_inherit_clone_fields():
    other = "https://example.com/other.wav"
    result = plan(
        {
            "model": "1.7B-Base",
            "ref_audio": REF,
            "ref_text": "hello",
            "segments": [
                {"text": "one"},
                {"text": "two", "x_vector_only": True},
                {"text": "three", "ref_audio": other, "ref_text": "other words"},
            ],
        }
    )
    base = MODELS["1.7B-Base"]
    assert result.segments == [
        SegmentPlan(text="one", model=base, language="Auto", ref_audio=REF, ref_text="hello"),
        SegmentPlan(text="two", model=base, language="Auto", ref_audio=REF, x_vector_only=True),
        SegmentPlan(text="three", model=base, language="Auto", ref_audio=other, ref_text="other words"),
    ]


def test_segment_x_vector_only_false_overrides_top_level_true():
    result = plan(
        {
            "model": "1.7B-Base",
            "ref_audio": REF,
            "x_vector_only": True,
            "segments": [{"text": "one"}, {"text": "two", "x_vector_only": False, "ref_text": "hello"}],
        }
    )
    assert [(s.x_vector_only, s.ref_text) for s in result.segments] == [(True, None), (False, "hello")]


def test_segments_use_params_language():
    result = plan({"params": {"language": "es"}, "segments": [{"text": "uno"}, {"text": "dos", "language": "it"}]})
    assert [s.language for s in result.segments] == ["Spanish", "Italian"]


def test_pause_ms_default_is_300():
    result = plan({"segments": [{"text": "one"}, {"text": "two"}, {"text": "three", "pause_ms": 1200}]})
    assert [s.pause_ms for s in result.segments] == [300, 300, 1200]


def test_seed_podcast_example():
    result = plan(
        {
            "segments": [
                {"text": "Welcome to the show.", "voice": "male_1"},
                {"text": "Thanks for having me.", "voice": "female_1"},
                {"text": "Let's get started.", "voice": "male_1"},
            ],
            "params": {"language": "en"},
        }
    )
    cv = MODELS["1.7B-CustomVoice"]
    assert result.segments == [
        SegmentPlan(text="Welcome to the show.", model=cv, language="English", speaker="Ryan"),
        SegmentPlan(text="Thanks for having me.", model=cv, language="English", speaker="Vivian"),
        SegmentPlan(text="Let's get started.", model=cv, language="English", speaker="Ryan"),
    ]
    assert result.models == ["1.7B-CustomVoice"]
    assert result.warnings == []


def test_stream_is_planned_without_a_warning():
    # The worker decides: a streaming deployment streams it, any other warns (tests/test_streaming.py).
    result = plan({"text": "hi", "stream": True})
    assert result.stream is True
    assert result.warnings == []
