"""Tests for audio/catalog.py: exact model names and ids, speaker and alias resolution, language resolution."""

from __future__ import annotations

import pytest

from audio.catalog import (
    BASE,
    CUSTOM_VOICE,
    DEFAULT_MODEL,
    DEFAULT_VOICE,
    LANGUAGE_CODES,
    LANGUAGES,
    MODELS,
    SPEAKERS,
    VOICE_ALIASES,
    VOICE_DESIGN,
    find_model,
    resolve_language,
    resolve_voice,
)

# --------------------------------------------------------------------------------------------------------------
# models


def test_model_names():
    assert list(MODELS) == ["1.7B-CustomVoice", "0.6B-CustomVoice", "1.7B-Base", "0.6B-Base", "1.7B-VoiceDesign"]
    assert DEFAULT_MODEL == "1.7B-CustomVoice"


@pytest.mark.parametrize(
    ("name", "kind", "size", "dir_name", "repo_id", "honours_instruct"),
    [
        pytest.param(
            "1.7B-CustomVoice",
            CUSTOM_VOICE,
            "1.7B",
            "Qwen3-TTS-12Hz-1.7B-CustomVoice",
            "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice",
            True,
            id="1.7B-CustomVoice",
        ),
        pytest.param(
            "0.6B-CustomVoice",
            CUSTOM_VOICE,
            "0.6B",
            "Qwen3-TTS-12Hz-0.6B-CustomVoice",
            "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
            False,
            id="0.6B-CustomVoice",
        ),
        pytest.param(
            "1.7B-Base",
            BASE,
            "1.7B",
            "Qwen3-TTS-12Hz-1.7B-Base",
            "Qwen/Qwen3-TTS-12Hz-1.7B-Base",
            True,
            id="1.7B-Base",
        ),
        pytest.param(
            "0.6B-Base",
            BASE,
            "0.6B",
            "Qwen3-TTS-12Hz-0.6B-Base",
            "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
            True,
            id="0.6B-Base",
        ),
        pytest.param(
            "1.7B-VoiceDesign",
            VOICE_DESIGN,
            "1.7B",
            "Qwen3-TTS-12Hz-1.7B-VoiceDesign",
            "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign",
            True,
            id="1.7B-VoiceDesign",
        ),
    ],
)
def test_model_variant(name, kind, size, dir_name, repo_id, honours_instruct):
    variant = MODELS[name]
    assert variant.name == name
    assert variant.kind == kind
    assert variant.size == size
    assert variant.dir_name == dir_name
    assert variant.repo_id == repo_id
    assert variant.honours_instruct is honours_instruct


def test_only_0_6b_custom_voice_ignores_instruct():
    assert [m.name for m in MODELS.values() if not m.honours_instruct] == ["0.6B-CustomVoice"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("1.7B-CustomVoice", "1.7B-CustomVoice", id="short-name"),
        pytest.param("0.6b-base", "0.6B-Base", id="short-name-lower"),
        pytest.param("1.7B-VOICEDESIGN", "1.7B-VoiceDesign", id="short-name-upper"),
        pytest.param("  0.6B-CustomVoice \n", "0.6B-CustomVoice", id="padded"),
        pytest.param("Qwen/Qwen3-TTS-12Hz-1.7B-Base", "1.7B-Base", id="full-id"),
        pytest.param("qwen/qwen3-tts-12hz-0.6b-customvoice", "0.6B-CustomVoice", id="full-id-lower"),
        pytest.param("QWEN/QWEN3-TTS-12HZ-1.7B-VOICEDESIGN", "1.7B-VoiceDesign", id="full-id-upper"),
        pytest.param("Qwen3-TTS-12Hz-0.6B-Base", "0.6B-Base", id="dir-name"),
    ],
)
def test_find_model(query, expected):
    variant = find_model(query)
    assert variant is not None
    assert variant.name == expected
    assert variant is MODELS[expected]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="empty"),
        pytest.param("1.7B", id="size-only"),
        pytest.param("CustomVoice", id="kind-only"),
        pytest.param("1.7B-Custom", id="truncated-name"),
        pytest.param("0.6B-VoiceDesign", id="no-such-size"),
        pytest.param("Qwen/Qwen3-TTS-Tokenizer-12Hz", id="tokenizer"),
        pytest.param("Qwen/Qwen3-TTS-12Hz-1.7B-Base-Extra", id="suffix"),
    ],
)
def test_find_model_unknown(query):
    assert find_model(query) is None


def test_every_full_id_and_dir_name_round_trips():
    for variant in MODELS.values():
        assert find_model(variant.repo_id) is variant
        assert find_model(variant.dir_name) is variant


# --------------------------------------------------------------------------------------------------------------
# voices


def test_speakers():
    assert [s.name for s in SPEAKERS.values()] == [
        "Vivian",
        "Serena",
        "Uncle_Fu",
        "Dylan",
        "Eric",
        "Ryan",
        "Aiden",
        "Ono_Anna",
        "Sohee",
    ]
    assert DEFAULT_VOICE == "Ryan"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("Ryan", "Ryan", id="canonical"),
        pytest.param("ryan", "Ryan", id="lower"),
        pytest.param("rYaN", "Ryan", id="mixed"),
        pytest.param("UNCLE_FU", "Uncle_Fu", id="underscore-upper"),
        pytest.param(" ono_anna ", "Ono_Anna", id="padded"),
        pytest.param("sohee", "Sohee", id="sohee"),
        pytest.param("male_1", "Ryan", id="male_1"),
        pytest.param("male_2", "Aiden", id="male_2"),
        pytest.param("female_1", "Vivian", id="female_1"),
        pytest.param("female_2", "Serena", id="female_2"),
        pytest.param("Male_1", "Ryan", id="alias-capitalised"),
        pytest.param("alloy", "Serena", id="alloy"),
        pytest.param("ash", "Aiden", id="ash"),
        pytest.param("ballad", "Uncle_Fu", id="ballad"),
        pytest.param("coral", "Vivian", id="coral"),
        pytest.param("ECHO", "Ryan", id="echo-upper"),
        pytest.param("fable", "Aiden", id="fable"),
        pytest.param("nova", "Serena", id="nova"),
        pytest.param("onyx", "Uncle_Fu", id="onyx"),
        pytest.param("sage", "Ono_Anna", id="sage"),
        pytest.param("shimmer", "Sohee", id="shimmer"),
        pytest.param("verse", "Ryan", id="verse"),
    ],
)
def test_resolve_voice(query, expected):
    assert resolve_voice(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="empty"),
        pytest.param("Bob", id="unknown-name"),
        pytest.param("male_3", id="unknown-alias"),
        pytest.param("uncle fu", id="space-not-underscore"),
        pytest.param("onyx2", id="near-alias"),
    ],
)
def test_resolve_voice_unknown(query):
    assert resolve_voice(query) is None


def test_every_alias_names_a_speaker():
    speaker_names = {s.name for s in SPEAKERS.values()}
    assert {alias: target for alias, target in VOICE_ALIASES.items() if target not in speaker_names} == {}
    assert set(VOICE_ALIASES).isdisjoint(SPEAKERS)


# --------------------------------------------------------------------------------------------------------------
# languages


def test_languages():
    assert LANGUAGES == (
        "Auto",
        "Chinese",
        "English",
        "Japanese",
        "Korean",
        "German",
        "French",
        "Russian",
        "Portuguese",
        "Spanish",
        "Italian",
    )
    assert sorted(LANGUAGE_CODES) == ["de", "en", "es", "fr", "it", "ja", "ko", "pt", "ru", "zh"]
    assert set(LANGUAGE_CODES.values()) == set(LANGUAGES) - {"Auto"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("English", "English", id="name"),
        pytest.param("english", "English", id="name-lower"),
        pytest.param("  PORTUGUESE ", "Portuguese", id="name-upper-padded"),
        pytest.param("auto", "Auto", id="auto"),
        pytest.param("en", "English", id="en"),
        pytest.param("EN", "English", id="EN"),
        pytest.param("en-US", "English", id="en-US"),
        pytest.param("en_GB", "English", id="en_GB"),
        pytest.param("zh", "Chinese", id="zh"),
        pytest.param("zh-CN", "Chinese", id="zh-CN"),
        pytest.param("zh_CN", "Chinese", id="zh_CN"),
        pytest.param("zh-Hans-CN", "Chinese", id="zh-Hans-CN"),
        pytest.param("ja", "Japanese", id="ja"),
        pytest.param("ja-JP", "Japanese", id="ja-JP"),
        pytest.param("ko", "Korean", id="ko"),
        pytest.param("de", "German", id="de"),
        pytest.param("de-AT", "German", id="de-AT"),
        pytest.param("fr", "French", id="fr"),
        pytest.param("fr-CA", "French", id="fr-CA"),
        pytest.param("ru", "Russian", id="ru"),
        pytest.param("pt", "Portuguese", id="pt"),
        pytest.param("pt-BR", "Portuguese", id="pt-BR"),
        pytest.param("es", "Spanish", id="es"),
        pytest.param("es-MX", "Spanish", id="es-MX"),
        pytest.param("it", "Italian", id="it"),
    ],
)
def test_resolve_language(query, expected):
    assert resolve_language(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="empty"),
        pytest.param("Klingon", id="unknown-name"),
        pytest.param("xx", id="unknown-code"),
        pytest.param("nl-NL", id="unsupported-locale"),
        pytest.param("eng", id="three-letter-code"),
        pytest.param("-en", id="leading-separator"),
    ],
)
def test_resolve_language_unknown(query):
    assert resolve_language(query) is None


OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


@pytest.mark.parametrize("alias", list(VOICE_ALIASES), ids=list(VOICE_ALIASES))
def test_aliases_never_name_a_dialect_speaker(alias):
    assert SPEAKERS[VOICE_ALIASES[alias].lower()].dialect is None


def test_every_openai_voice_is_an_alias():
    assert set(OPENAI_VOICES) <= set(VOICE_ALIASES)


def test_dialect_speakers_are_dylan_and_eric():
    assert {s.name: s.dialect for s in SPEAKERS.values() if s.dialect} == {"Dylan": "Beijing", "Eric": "Sichuan"}
