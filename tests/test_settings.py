"""Tests for audio/settings.py: Settings.from_env on plain dicts, never the process environment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from audio.output.delivery import S3Config
from audio.settings import Settings

HOME_CACHE = Path.home() / ".cache" / "huggingface" / "hub"
RUNPOD_CACHE = Path("/runpod-volume/huggingface-cache/hub")
DEFAULTS = Settings.from_env({})


def test_defaults_from_an_empty_env():
    s = Settings.from_env({})
    assert s.model_dir == Path("/runpod-volume/models")
    assert s.hf_cache_dirs == (RUNPOD_CACHE, HOME_CACHE)
    assert s.default_model == "1.7B-CustomVoice"
    assert s.device == "auto"
    assert s.dtype == "auto"
    assert s.max_loaded_models == 2
    assert s.preload == ("1.7B-CustomVoice",)
    assert s.max_chars == 50_000
    assert s.max_batch == 8
    assert s.max_retries == 2
    assert s.chunk_target_chars == 150
    assert s.chunk_max_chars == 250
    assert s.crossfade_ms == 40.0
    assert s.edge_pad_ms == 60.0
    assert (s.sentence_pause_ms, s.clause_pause_ms) == (300.0, 120.0)
    assert s.silence_threshold_db == -50.0
    assert s.min_s_per_char == 0.02
    assert s.max_s_per_char == 0.25
    assert s.duration_slack_s == 2.0
    assert s.max_inline_bytes == 19_000_000
    assert s.s3 is None
    assert s.allow_private_urls is False
    assert s.voice_cache == 32
    assert s.voice_dir == Path("/runpod-volume/voices")
    assert s.max_saved_voices == 1000
    assert s.voices_readonly is False


def test_voice_settings_from_env():
    s = Settings.from_env(
        {
            "QWEN_TTS_ALLOW_PRIVATE_URLS": "true",
            "QWEN_TTS_VOICE_CACHE": "0",
            "QWEN_TTS_VOICE_DIR": "/data/voices",
            "QWEN_TTS_MAX_SAVED_VOICES": "5",
            "QWEN_TTS_VOICES_READONLY": "yes",
        }
    )
    assert (s.allow_private_urls, s.voice_cache, s.voice_dir, s.max_saved_voices, s.voices_readonly) == (
        True,
        0,
        Path("/data/voices"),
        5,
        True,
    )


def test_empty_values_mean_defaults():
    env = {
        name: ""
        for name in (
            "QWEN_TTS_MODEL_DIR",
            "QWEN_TTS_DEFAULT_MODEL",
            "QWEN_TTS_DEVICE",
            "QWEN_TTS_DTYPE",
            "QWEN_TTS_MAX_LOADED_MODELS",
            "QWEN_TTS_MAX_CHARS",
            "QWEN_TTS_MAX_BATCH",
            "QWEN_TTS_MAX_RETRIES",
            "QWEN_TTS_CHUNK_TARGET_CHARS",
            "QWEN_TTS_CHUNK_MAX_CHARS",
            "QWEN_TTS_CROSSFADE_MS",
            "QWEN_TTS_SENTENCE_PAUSE_MS",
            "QWEN_TTS_CLAUSE_PAUSE_MS",
            "QWEN_TTS_MIN_SECONDS_PER_CHAR",
            "QWEN_TTS_MAX_SECONDS_PER_CHAR",
            "QWEN_TTS_MAX_INLINE_BYTES",
            "HF_HUB_CACHE",
            "HF_HOME",
            "QWEN_TTS_PRELOAD",
        )
    }
    assert Settings.from_env(env) == DEFAULTS


@pytest.mark.parametrize(
    ("name", "value", "changes"),
    [
        pytest.param("QWEN_TTS_MODEL_DIR", "/models", {"model_dir": Path("/models")}, id="model-dir"),
        pytest.param(
            "QWEN_TTS_DEFAULT_MODEL",
            "0.6B-Base",
            {"default_model": "0.6B-Base", "preload": ("0.6B-Base",)},
            id="default-model-also-preloaded",
        ),
        pytest.param(
            "QWEN_TTS_DEFAULT_MODEL",
            "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign",
            {"default_model": "1.7B-VoiceDesign", "preload": ("1.7B-VoiceDesign",)},
            id="default-model-full-id",
        ),
        pytest.param("QWEN_TTS_DEVICE", " CUDA:1 ", {"device": "cuda:1"}, id="device"),
        pytest.param("QWEN_TTS_DTYPE", "BFloat16", {"dtype": "bfloat16"}, id="dtype"),
        pytest.param("QWEN_TTS_MAX_LOADED_MODELS", "5", {"max_loaded_models": 5}, id="max-loaded-models"),
        pytest.param("QWEN_TTS_PRELOAD", "0.6B-Base", {"preload": ("0.6B-Base",)}, id="preload"),
        pytest.param("QWEN_TTS_MAX_CHARS", "1000", {"max_chars": 1000}, id="max-chars"),
        pytest.param("QWEN_TTS_MAX_BATCH", " 3 ", {"max_batch": 3}, id="max-batch"),
        pytest.param("QWEN_TTS_MAX_RETRIES", "0", {"max_retries": 0}, id="max-retries-zero"),
        pytest.param("QWEN_TTS_CHUNK_TARGET_CHARS", "100", {"chunk_target_chars": 100}, id="chunk-target"),
        pytest.param(
            "QWEN_TTS_CHUNK_TARGET_CHARS",
            "300",
            {"chunk_target_chars": 300, "chunk_max_chars": 300},
            id="chunk-target-over-250-raises-max",
        ),
        pytest.param("QWEN_TTS_CHUNK_MAX_CHARS", "400", {"chunk_max_chars": 400}, id="chunk-max"),
        pytest.param("QWEN_TTS_CROSSFADE_MS", "25.5", {"crossfade_ms": 25.5}, id="crossfade-ms"),
        pytest.param("QWEN_TTS_SENTENCE_PAUSE_MS", "450", {"sentence_pause_ms": 450.0}, id="sentence-pause-ms"),
        pytest.param("QWEN_TTS_CLAUSE_PAUSE_MS", "0", {"clause_pause_ms": 0.0}, id="clause-pause-ms"),
        pytest.param("QWEN_TTS_MIN_SECONDS_PER_CHAR", "0.01", {"min_s_per_char": 0.01}, id="min-s-per-char"),
        pytest.param("QWEN_TTS_MAX_SECONDS_PER_CHAR", "0.5", {"max_s_per_char": 0.5}, id="max-s-per-char"),
        pytest.param("QWEN_TTS_MAX_INLINE_BYTES", "1000000", {"max_inline_bytes": 1_000_000}, id="max-inline-bytes"),
        pytest.param(
            "HF_HUB_CACHE",
            "/cache/hub",
            {"hf_cache_dirs": (Path("/cache/hub"), RUNPOD_CACHE, HOME_CACHE)},
            id="hf-hub-cache",
        ),
        pytest.param(
            "HF_HOME", "/data/hf", {"hf_cache_dirs": (Path("/data/hf/hub"), RUNPOD_CACHE, HOME_CACHE)}, id="hf-home"
        ),
    ],
)
def test_each_variable_changes_only_its_field(name, value, changes):
    assert Settings.from_env({name: value}) == dataclasses.replace(DEFAULTS, **changes)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("none", id="none"),
        pytest.param("NONE", id="none-upper"),
        pytest.param("0", id="zero"),
        pytest.param("off", id="off"),
        pytest.param("false", id="false"),
    ],
)
def test_preload_nothing(value):
    assert Settings.from_env({"QWEN_TTS_PRELOAD": value}).preload == ()


@pytest.mark.parametrize("value", [pytest.param("", id="empty"), pytest.param("  ", id="blank")])
def test_blank_preload_means_the_default_model(value):
    # Platform forms send unset fields as "": that must not silently turn preloading off.
    assert Settings.from_env({"QWEN_TTS_PRELOAD": value}).preload == ("1.7B-CustomVoice",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "Qwen/Qwen3-TTS-12Hz-1.7B-Base, 0.6b-customvoice",
            ("1.7B-Base", "0.6B-CustomVoice"),
            id="full-id-and-lower-case",
        ),
        pytest.param(
            "1.7B-CustomVoice;1.7B-VoiceDesign", ("1.7B-CustomVoice", "1.7B-VoiceDesign"), id="semicolon-separated"
        ),
        pytest.param("0.6B-Base,", ("0.6B-Base",), id="trailing-comma"),
        pytest.param(
            "Qwen3-TTS-12Hz-0.6B-Base , , 1.7B-Base", ("0.6B-Base", "1.7B-Base"), id="dir-name-and-empty-items"
        ),
    ],
)
def test_preload_list(value, expected):
    assert Settings.from_env({"QWEN_TTS_PRELOAD": value}).preload == expected


def test_preload_does_not_follow_default_model_when_set():
    s = Settings.from_env({"QWEN_TTS_DEFAULT_MODEL": "0.6B-Base", "QWEN_TTS_PRELOAD": "1.7B-Base"})
    assert s.default_model == "0.6B-Base"
    assert s.preload == ("1.7B-Base",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"QWEN_TTS_MAX_BATCH": "eight"}, "QWEN_TTS_MAX_BATCH must be an integer, got 'eight'", id="max-batch-word"
        ),
        pytest.param(
            {"QWEN_TTS_MAX_CHARS": "2.5"}, "QWEN_TTS_MAX_CHARS must be an integer, got '2.5'", id="max-chars-float"
        ),
        pytest.param(
            {"QWEN_TTS_MAX_INLINE_BYTES": "19MB"},
            "QWEN_TTS_MAX_INLINE_BYTES must be an integer, got '19MB'",
            id="inline-bytes-unit",
        ),
        pytest.param(
            {"QWEN_TTS_MAX_LOADED_MODELS": "0"},
            "QWEN_TTS_MAX_LOADED_MODELS must be at least 1, got 0",
            id="max-loaded-models-zero",
        ),
        pytest.param({"QWEN_TTS_MAX_BATCH": "0"}, "QWEN_TTS_MAX_BATCH must be at least 1, got 0", id="max-batch-zero"),
        pytest.param(
            {"QWEN_TTS_MAX_RETRIES": "-1"}, "QWEN_TTS_MAX_RETRIES must be at least 0, got -1", id="retries-negative"
        ),
        pytest.param(
            {"QWEN_TTS_CHUNK_TARGET_CHARS": "19"},
            "QWEN_TTS_CHUNK_TARGET_CHARS must be at least 20, got 19",
            id="chunk-target-too-small",
        ),
        pytest.param(
            {"QWEN_TTS_CHUNK_MAX_CHARS": "149"},
            "QWEN_TTS_CHUNK_MAX_CHARS must be at least 150, got 149",
            id="chunk-max-below-target",
        ),
        pytest.param(
            {"QWEN_TTS_CROSSFADE_MS": "forty"}, "QWEN_TTS_CROSSFADE_MS must be a number, got 'forty'", id="crossfade"
        ),
        pytest.param(
            {"QWEN_TTS_MAX_SECONDS_PER_CHAR": "1/4"},
            "QWEN_TTS_MAX_SECONDS_PER_CHAR must be a number, got '1/4'",
            id="max-s-per-char",
        ),
        pytest.param(
            {"QWEN_TTS_DEFAULT_MODEL": "3B-CustomVoice"},
            "QWEN_TTS_DEFAULT_MODEL='3B-CustomVoice' is not a known model",
            id="unknown-default-model",
        ),
        pytest.param(
            {"QWEN_TTS_PRELOAD": "1.7B-Base,bogus"},
            "QWEN_TTS_PRELOAD='bogus' is not a known model",
            id="unknown-preload-model",
        ),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ValueError) as info:
        Settings.from_env(env)
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------------------------
# Hugging Face cache directories


def test_hf_cache_dirs_order():
    s = Settings.from_env({"HF_HUB_CACHE": "/a/hub", "HF_HOME": "/b"})
    assert s.hf_cache_dirs == (Path("/a/hub"), Path("/b/hub"), RUNPOD_CACHE, HOME_CACHE)


def test_hf_cache_dirs_include_hf_home_hub_and_runpod_cache():
    dirs = Settings.from_env({"HF_HOME": "/data/hf"}).hf_cache_dirs
    assert Path("/data/hf/hub") in dirs
    assert Path("/runpod-volume/huggingface-cache/hub") in dirs


def test_hf_cache_dirs_have_no_duplicates():
    s = Settings.from_env(
        {"HF_HUB_CACHE": "/runpod-volume/huggingface-cache/hub", "HF_HOME": "/runpod-volume/huggingface-cache"}
    )
    assert s.hf_cache_dirs == (RUNPOD_CACHE, HOME_CACHE)


# --------------------------------------------------------------------------------------------------------------
# S3


def test_s3_is_none_when_unset():
    assert Settings.from_env({"QWEN_TTS_MAX_BATCH": "4"}).s3 is None


def test_s3_from_runpod_bucket_variables_aws():
    s = Settings.from_env(
        {
            "BUCKET_ENDPOINT_URL": "https://my-bucket.s3.us-west-2.amazonaws.com",
            "BUCKET_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "BUCKET_SECRET_ACCESS_KEY": "secret-example",
        }
    )
    assert s.s3 == S3Config(
        bucket="my-bucket",
        endpoint_url="https://s3.us-west-2.amazonaws.com",
        access_key_id="AKIAEXAMPLE",
        secret_access_key="secret-example",
        region="us-west-2",
    )
    assert s.s3.key_prefix == "tts-output/"
    assert s.s3.url_expiry_s == 3600


def test_s3_from_runpod_bucket_variables_path_style():
    s = Settings.from_env(
        {
            "BUCKET_ENDPOINT_URL": "https://minio.example.com:9000/tts",
            "BUCKET_ACCESS_KEY_ID": "key",
            "BUCKET_SECRET_ACCESS_KEY": "secret",
            "S3_KEY_PREFIX": "podcasts",
        }
    )
    assert s.s3 == S3Config(
        bucket="tts",
        endpoint_url="https://minio.example.com:9000",
        access_key_id="key",
        secret_access_key="secret",
        region=None,
        key_prefix="podcasts/",
    )


def test_s3_partly_configured_is_an_error():
    with pytest.raises(ValueError) as info:
        Settings.from_env({"BUCKET_ENDPOINT_URL": "https://minio.example.com/tts", "BUCKET_ACCESS_KEY_ID": "key"})
    assert "S3 is partly configured" in str(info.value)
    assert "BUCKET_SECRET_ACCESS_KEY" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "QWEN_TTS_CROSSFADE_MS",
        "QWEN_TTS_SENTENCE_PAUSE_MS",
        "QWEN_TTS_CLAUSE_PAUSE_MS",
        "QWEN_TTS_MIN_SECONDS_PER_CHAR",
        "QWEN_TTS_MAX_SECONDS_PER_CHAR",
    ],
)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_numbers_are_rejected(name, value):
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [pytest.param("true", True, id="true"), pytest.param("ON", True, id="on"), pytest.param("0", False, id="zero")],
)
def test_auto_download_flag(value, expected):
    assert Settings.from_env({"QWEN_TTS_AUTO_DOWNLOAD": value}).auto_download is expected


def test_auto_download_rejects_other_words():
    with pytest.raises(ValueError, match="QWEN_TTS_AUTO_DOWNLOAD must be true or false, got 'maybe'"):
        Settings.from_env({"QWEN_TTS_AUTO_DOWNLOAD": "maybe"})
