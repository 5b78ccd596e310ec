"""The packaging files and helper scripts: job files that validate, hub settings that match the worker's own,
the model downloader (with an injected download function), and the job client against a loopback HTTP server.

No test here reaches the network: downloads are fakes or forced offline, and HTTP goes to 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from audio.catalog import DEFAULT_MODEL, MODELS
from audio.errors import InputError
from audio.schema import INFO_ACTIONS, parse_job, plan_job
from audio.settings import DEFAULT_MODEL_DIR, Settings
from scripts import download_models as dm

ROOT = Path(__file__).resolve().parents[1]
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
HUB_TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())
TEST_INPUT = json.loads((ROOT / "test_input.json").read_text())
DOCKERFILE = (ROOT / "Dockerfile.serverless").read_text()
HUB_ENV = {entry["key"]: entry["input"] for entry in HUB["config"]["env"]}


# -- job files ------------------------------------------------------------------------------------------------


def check_job(job_input: dict[str, Any]) -> None:
    """Raise InputError unless the worker would accept this job input (without running a model)."""
    if job_input.get("action") in INFO_ACTIONS:
        extra = set(job_input) - {"action"}
        if extra:
            raise InputError(f"unknown fields for an info action: {sorted(extra)}")
        return
    plan_job(parse_job(job_input), default_model=DEFAULT_MODEL, max_chars=50_000)


JOBS = [
    pytest.param(TEST_INPUT["input"], id="test_input.json"),
    *(pytest.param(test["input"], id=f"tests.json:{test['name']}") for test in HUB_TESTS["tests"]),
]


@pytest.mark.parametrize("job_input", JOBS)
def test_job_files_hold_valid_jobs(job_input):
    check_job(job_input)


def test_the_check_rejects_a_bad_job():
    with pytest.raises(InputError, match="unknown field"):
        check_job({"text": "Hi.", "speaker": "Ryan"})
    with pytest.raises(InputError, match="unknown fields for an info action"):
        check_job({"action": "health", "verbose": True})


def test_test_input_is_the_documented_default_job():
    plan = plan_job(parse_job(TEST_INPUT["input"]), default_model=DEFAULT_MODEL, max_chars=50_000)
    (segment,) = plan.segments
    assert (segment.text, segment.speaker, segment.language, segment.model.name) == (
        "Hello from Qwen3 TTS on RunPod.",
        "Ryan",
        "English",
        "1.7B-CustomVoice",
    )
    assert (plan.output_format, plan.delivery) == ("wav", "auto")


def test_hub_tests_cover_health_and_synthesis():
    tests = {t["name"]: t for t in HUB_TESTS["tests"]}
    assert tests["health"]["input"] == {"action": "health"}
    assert tests["synthesize_english_ryan"]["input"]["text"] == TEST_INPUT["input"]["text"]
    assert all(t["timeout"] >= 60_000 for t in tests.values())  # milliseconds: room for a cold start


def test_hub_tests_env_is_a_valid_worker_config():
    env = {e["key"]: e["value"] for e in HUB_TESTS["config"]["env"]}
    settings = Settings.from_env(env)
    # The Hub's test workers have no volume: the default model is fetched, preloaded, on start.
    assert (settings.default_model, settings.preload, settings.auto_download) == (
        "0.6B-CustomVoice",
        ("0.6B-CustomVoice",),
        True,
    )
    assert HUB_TESTS["config"]["gpuCount"] == 1


# -- hub.json -------------------------------------------------------------------------------------------------


def test_hub_listing_basics():
    assert (HUB["type"], HUB["category"], HUB["config"]["runsOn"], HUB["config"]["gpuCount"]) == (
        "serverless",
        "audio",
        "GPU",
        1,
    )


def test_hub_model_options_are_the_catalog():
    model = HUB_ENV["QWEN_TTS_DEFAULT_MODEL"]
    assert [option["value"] for option in model["options"]] == list(MODELS)
    assert model["default"] == DEFAULT_MODEL


@pytest.mark.parametrize("key", [k for k, v in HUB_ENV.items() if "options" in v])
def test_hub_option_defaults_are_options(key):
    values = [option["value"] for option in HUB_ENV[key]["options"]]
    assert HUB_ENV[key]["default"] in values


# With S3 configured, so that the S3_* settings' defaults are compared too (unconfigured S3 ignores them).
S3_CONFIGURED = {
    "BUCKET_ENDPOINT_URL": "https://s3.example.com/audio",
    "BUCKET_ACCESS_KEY_ID": "AKIA1234",
    "BUCKET_SECRET_ACCESS_KEY": "secret",
}


@pytest.mark.parametrize("key", [k for k, v in HUB_ENV.items() if "default" in v])
def test_hub_defaults_are_the_worker_defaults(key):
    """Deploying from the Hub with its defaults configures the worker exactly as leaving the variable unset."""
    base = S3_CONFIGURED if key.startswith("S3_") else {}
    assert Settings.from_env({**base, key: str(HUB_ENV[key]["default"])}) == Settings.from_env(base)


def test_hub_defaults_check_can_fail():
    assert Settings.from_env({**S3_CONFIGURED, "S3_KEY_PREFIX": "audio/"}) != Settings.from_env(S3_CONFIGURED)
    assert Settings.from_env({"QWEN_TTS_MAX_BATCH": "4"}) != Settings.from_env({})


def _runpod_logger() -> Path:
    spec = importlib.util.find_spec("runpod")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "serverless" / "modules" / "rp_logger.py"


class RecordingEnv(Mapping[str, str]):
    """An environment that records every variable it is asked for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("Settings.from_env must ask for its variables by name, not iterate the environment")

    def __len__(self) -> int:
        return len(self.values)


HUB_DEFAULTS = {key: str(entry["default"]) for key, entry in HUB_ENV.items() if "default" in entry}


def variables_settings_reads() -> set[str]:
    """Every variable Settings.from_env (S3Config.from_env included) asks for. Some are asked for only when others
    are set (S3's key prefix and URL lifetime, once S3 is configured): recorded over several environments."""
    asked: set[str] = set()
    for values in ({}, S3_CONFIGURED, HUB_DEFAULTS, {**HUB_DEFAULTS, **S3_CONFIGURED}):
        env = RecordingEnv(values)
        Settings.from_env(env)
        asked |= env.asked
    return asked


SETTINGS_READS = variables_settings_reads()

# Older names the worker still reads; the Hub form offers the current name, whose description names the old one.
ALIASES = {
    "S3_ENDPOINT": "BUCKET_ENDPOINT_URL",
    "S3_ACCESS_KEY": "BUCKET_ACCESS_KEY_ID",
    "S3_SECRET_KEY": "BUCKET_SECRET_ACCESS_KEY",
    "BUCKET_NAME": "S3_BUCKET",
}


# Hub variables read by something other than Settings.from_env, and the file that reads each.
READ_ELSEWHERE = {
    "QWEN_TTS_LOG_LEVEL": ROOT / "audio" / "serving" / "service.py",  # configure_logging
    "RUNPOD_LOG_LEVEL": _runpod_logger(),
}


def test_every_variable_settings_reads_is_in_hub_json():
    missing = sorted(SETTINGS_READS - set(HUB_ENV) - set(ALIASES))
    assert not missing, (
        f"Settings.from_env reads {', '.join(missing)}, missing from .runpod/hub.json config.env: add an entry "
        "for each (key; input: name, type, description, default = the worker's default; advanced if it is one), "
        "and a row in README's Configuration table"
    )


def test_every_hub_variable_is_read_by_the_worker():
    unread = sorted(set(HUB_ENV) - SETTINGS_READS - set(READ_ELSEWHERE))
    assert not unread, (
        f".runpod/hub.json config.env has {', '.join(unread)}, which Settings.from_env never reads: read it in "
        "audio/settings.py, list it in READ_ELSEWHERE (tests/test_scripts.py) with the file that reads it, "
        "or remove the entry"
    )


@pytest.mark.parametrize("key", list(READ_ELSEWHERE))
def test_variables_read_elsewhere_are_read_there(key):
    assert f'"{key}"' in READ_ELSEWHERE[key].read_text(), f"{key} is not read in {READ_ELSEWHERE[key]}"


@pytest.mark.parametrize("alias, name", list(ALIASES.items()))
def test_older_names_mean_the_same_and_are_documented(alias, name):
    assert alias in SETTINGS_READS, f"{alias} is no longer read: drop it from ALIASES and from {name}'s description"
    value = S3_CONFIGURED.get(name, "other-bucket")
    base = {k: v for k, v in S3_CONFIGURED.items() if k != name}
    assert Settings.from_env({**base, alias: value}) == Settings.from_env({**base, name: value})
    assert f"Older name: {alias}." in HUB_ENV[name]["description"]


def test_the_recording_sees_conditional_reads():
    assert {"S3_KEY_PREFIX", "S3_URL_EXPIRY_SECONDS", "HF_HOME", "QWEN_TTS_MAX_INLINE_BYTES"} <= SETTINGS_READS


@pytest.mark.parametrize("key", list(HUB_ENV))
def test_hub_variables_are_documented(key):
    entry = HUB_ENV[key]
    assert entry["name"].strip() and len(entry["description"]) >= 20
    assert entry["type"] in ("string", "number", "boolean")


PRESETS = {preset["name"]: preset["defaults"] for preset in HUB["config"]["presets"]}


def preset_env(defaults: Mapping[str, object]) -> dict[str, str]:
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in defaults.items()}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_set_hub_variables_to_valid_values(name):
    defaults = PRESETS[name]
    assert set(defaults) <= set(HUB_ENV)
    for key, value in defaults.items():
        if "options" in HUB_ENV[key]:
            assert value in [option["value"] for option in HUB_ENV[key]["options"]]
    settings = Settings.from_env(preset_env(defaults))
    assert settings.preload == (settings.default_model,)  # warm before the first job
    assert settings.auto_download  # a one-click deployment without the weights on a volume still starts


def test_presets_are_quality_low_cost_and_clone():
    models = [Settings.from_env(preset_env(d)).default_model for d in PRESETS.values()]
    assert models == ["1.7B-CustomVoice", "0.6B-CustomVoice", "1.7B-Base"]


# -- Dockerfile -----------------------------------------------------------------------------------------------


def test_root_dockerfile_is_dockerfile_serverless():
    """The RunPod Hub builds `Dockerfile`; the documented builds use `-f Dockerfile.serverless`: one content."""
    root = (ROOT / "Dockerfile").read_bytes()
    assert root == (ROOT / "Dockerfile.serverless").read_bytes(), (
        "Dockerfile and Dockerfile.serverless differ: they must be identical (edit one, then copy it over the other)"
    )


def test_dockerfile_copies_files_that_exist():
    sources = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            sources += line.split()[1:-1]
    assert "requirements.txt" in sources
    assert "handler.py" in sources
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert missing == []


def test_dockerfile_runtime_defaults():
    assert 'CMD ["python", "-u", "handler.py"]' in DOCKERFILE
    assert "HF_HOME=/runpod-volume/huggingface-cache" in DOCKERFILE
    assert "${QWEN_TTS_BAKED_MODEL_DIR:-/runpod-volume/models}" in DOCKERFILE
    assert re.search(r"HF_HUB_OFFLINE\s*=", DOCKERFILE) is None  # download tools must work in the container


def test_downloader_default_dir_is_the_worker_default():
    assert dm.DEFAULT_MODEL_DIR == DEFAULT_MODEL_DIR


# -- download_models ------------------------------------------------------------------------------------------


class FakeHub:
    """Records download calls; each writes the files of a complete model unless told to fail."""

    def __init__(self, error: Exception | None = None, complete: bool = True):
        self.calls: list[dict[str, str]] = []
        self.error = error
        self.complete = complete

    def __call__(self, *, repo_id: str, local_dir: str) -> str:
        self.calls.append({"repo_id": repo_id, "local_dir": local_dir})
        if self.error is not None:
            raise self.error
        if self.complete:
            make_model_dir(Path(local_dir))
        return local_dir


def make_model_dir(path: Path) -> Path:
    (path / "speech_tokenizer").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "speech_tokenizer/config.json"):
        (path / name).write_text("{}")
    return path


def test_missing_model_is_downloaded_to_its_dir(tmp_path):
    hub = FakeHub()
    paths = dm.download_models(["0.6B-Base"], tmp_path, hub, log=lambda _: None)
    dest = tmp_path / "Qwen3-TTS-12Hz-0.6B-Base"
    assert hub.calls == [{"repo_id": "Qwen/Qwen3-TTS-12Hz-0.6B-Base", "local_dir": str(dest)}]
    assert paths == [dest]


def test_present_model_is_skipped(tmp_path):
    dest = make_model_dir(tmp_path / "Qwen3-TTS-12Hz-1.7B-CustomVoice")
    hub = FakeHub()
    messages: list[str] = []
    assert dm.download_models(["1.7B-CustomVoice"], tmp_path, hub, log=messages.append) == [dest]
    assert hub.calls == []
    assert messages == [f"1.7B-CustomVoice: already in {dest}, skipping"]


def test_force_asks_the_hub_even_for_a_present_model(tmp_path):
    make_model_dir(tmp_path / "Qwen3-TTS-12Hz-1.7B-CustomVoice")
    hub = FakeHub()
    dm.download_models(["1.7B-CustomVoice"], tmp_path, hub, force=True, log=lambda _: None)
    assert [c["repo_id"] for c in hub.calls] == ["Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"]


@pytest.mark.parametrize(
    "missing",
    ["config.json", "model.safetensors", "speech_tokenizer/config.json"],
)
def test_a_model_missing_any_marker_file_is_downloaded(tmp_path, missing):
    dest = make_model_dir(tmp_path / "Qwen3-TTS-12Hz-0.6B-CustomVoice")
    (dest / missing).unlink()
    hub = FakeHub()
    dm.download_models(["0.6B-CustomVoice"], tmp_path, hub, log=lambda _: None)
    assert len(hub.calls) == 1


def test_sharded_weights_count_as_present(tmp_path):
    dest = make_model_dir(tmp_path / "Qwen3-TTS-12Hz-1.7B-Base")
    (dest / "model.safetensors").rename(dest / "model.safetensors.index.json")
    assert dm.is_present(dest)


def test_full_ids_and_any_case_resolve_once(tmp_path):
    hub = FakeHub()
    dm.download_models(["Qwen/Qwen3-TTS-12Hz-1.7B-Base", "1.7b-base", "0.6B-Base"], tmp_path, hub, log=print)
    assert [c["repo_id"] for c in hub.calls] == ["Qwen/Qwen3-TTS-12Hz-1.7B-Base", "Qwen/Qwen3-TTS-12Hz-0.6B-Base"]


def test_unknown_name_downloads_nothing_and_lists_the_models(tmp_path, capsys):
    hub = FakeHub()
    code = dm.main(["0.6B-Base", "2B-Turbo", "--model-dir", str(tmp_path)], download=hub, env={})
    err = capsys.readouterr().err
    assert code == 2
    assert hub.calls == []
    assert err.count("\n") == 1
    assert err.startswith("error: unknown model(s): 2B-Turbo. Valid models: ")
    assert all(name in err for name in MODELS)


def test_default_is_the_env_default_model_in_the_env_model_dir(tmp_path):
    hub = FakeHub()
    env = {"QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice", "QWEN_TTS_MODEL_DIR": str(tmp_path)}
    assert dm.main([], download=hub, env=env) == 0
    assert hub.calls == [
        {
            "repo_id": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
            "local_dir": str(tmp_path / "Qwen3-TTS-12Hz-0.6B-CustomVoice"),
        }
    ]


def test_default_without_env_is_the_catalog_default(tmp_path):
    hub = FakeHub()
    assert dm.main(["--model-dir", str(tmp_path)], download=hub, env={}) == 0
    assert [c["repo_id"] for c in hub.calls] == ["Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"]


def test_all_downloads_every_model_in_catalog_order(tmp_path):
    hub = FakeHub()
    assert dm.main(["--all", "--model-dir", str(tmp_path)], download=hub, env={}) == 0
    assert [c["repo_id"] for c in hub.calls] == [f"Qwen/Qwen3-TTS-12Hz-{name}" for name in MODELS]


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(requests.ConnectionError("Failed to resolve 'huggingface.co'"), id="connection-error"),
        pytest.param(OSError("Network is unreachable"), id="os-error"),
        pytest.param(PermissionError(13, "Permission denied"), id="read-only-volume"),
    ],
)
def test_hub_failure_prints_one_line_and_exits_1(tmp_path, capsys, error):
    code = dm.main(["0.6B-Base", "--model-dir", str(tmp_path)], download=FakeHub(error=error), env={})
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("error: could not download Qwen/Qwen3-TTS-12Hz-0.6B-Base to ")
    assert "Traceback" not in err


def test_incomplete_download_is_an_error(tmp_path, capsys):
    code = dm.main(["0.6B-Base", "--model-dir", str(tmp_path)], download=FakeHub(complete=False), env={})
    assert code == 1
    assert "run again with --force" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_with_the_real_hub_client_offline(tmp_path):
    """The real snapshot_download, forced offline: one line on stderr, exit 1, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "download_models.py"), "0.6B-Base", "--model-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: could not download Qwen/Qwen3-TTS-12Hz-0.6B-Base")


# -- speak ----------------------------------------------------------------------------------------------------


def test_speak_writes_audio_and_says_loudly_when_it_is_the_tiny_model(tmp_path, tiny_model_dir):
    out = tmp_path / "hello.wav"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "speak.py"), "Hello there.", "--out", str(out), "--tiny"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "QWEN_TTS_MODEL_DIR": str(tmp_path / "models")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REAL WEIGHTS UNAVAILABLE: using the TINY RANDOM checkpoint" in proc.stderr
    assert out.read_bytes()[:4] == b"RIFF"
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["duration_seconds"] == 19 * 1920 / 24000
