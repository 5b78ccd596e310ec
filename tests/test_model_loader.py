"""Model resolution (volume dir, HF cache layouts, sibling tokenizer), runtime choice and the LRU cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audio.catalog import MODELS, TOKENIZER_DIR_NAME
from audio.errors import ModelError
from audio.model_loader import (
    ModelCache,
    _load_qwen_tts,
    choose_attention,
    find_model_path,
    find_tokenizer_path,
    pick_runtime,
)
from audio.settings import Settings
from audio.speech import ChunkRequest, Voice

CV = MODELS["0.6B-CustomVoice"]


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"QWEN_TTS_MODEL_DIR": str(tmp_path / "volume"), "HF_HOME": str(tmp_path / "hf"), **env})


def test_model_dir_layout_is_found_first(tiny_model_dir, tmp_path):
    settings = settings_for(tmp_path, QWEN_TTS_MODEL_DIR=str(tiny_model_dir))
    assert find_model_path(CV, settings) == tiny_model_dir / "Qwen3-TTS-12Hz-0.6B-CustomVoice"


@pytest.mark.parametrize(
    "hub",
    [
        pytest.param("hf/hub", id="HF_HOME-hub"),
        pytest.param("runpod-cache/hub", id="HF_HUB_CACHE"),
    ],
)
def test_hugging_face_cache_snapshot_is_found(tiny_model_dir, tmp_path, hub):
    snapshot = tmp_path / hub / "models--Qwen--Qwen3-TTS-12Hz-0.6B-CustomVoice" / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(tiny_model_dir / CV.dir_name, target_is_directory=True)
    settings = settings_for(tmp_path, HF_HUB_CACHE=str(tmp_path / "runpod-cache/hub"))
    assert find_model_path(CV, settings) == snapshot


def test_runpod_cache_dir_is_searched_by_default():
    assert Path("/runpod-volume/huggingface-cache/hub") in Settings.from_env({}).hf_cache_dirs


def test_sibling_tokenizer_is_used_without_writing_to_the_volume(tiny_model_dir, tmp_path):
    volume = tmp_path / "volume"
    model = volume / CV.dir_name
    shutil.copytree(tiny_model_dir / CV.dir_name, model, ignore=shutil.ignore_patterns("speech_tokenizer"))
    shutil.copytree(tiny_model_dir / CV.dir_name / "speech_tokenizer", volume / TOKENIZER_DIR_NAME)
    before = sorted(p.relative_to(volume) for p in volume.rglob("*"))
    settings = settings_for(tmp_path)
    assert find_tokenizer_path(model, settings) == volume / TOKENIZER_DIR_NAME

    loaded = ModelCache(settings).get(CV.name)
    wavs = loaded.generate([ChunkRequest("Hi.", 2, seed=1)], language="Auto", voice=Voice(speaker="Ryan"), params={})
    assert [len(w) for w in wavs] == [2 * loaded.frame_samples]
    assert sorted(p.relative_to(volume) for p in volume.rglob("*")) == before


def test_model_without_any_tokenizer_is_unavailable(tiny_model_dir, tmp_path):
    volume = tmp_path / "volume"
    shutil.copytree(
        tiny_model_dir / CV.dir_name, volume / CV.dir_name, ignore=shutil.ignore_patterns("speech_tokenizer")
    )
    with pytest.raises(ModelError, match="has no speech tokenizer"):
        ModelCache(settings_for(tmp_path)).get(CV.name)


def test_corrupt_weights_are_model_unavailable(tiny_model_dir, tmp_path):
    volume = tmp_path / "volume"
    shutil.copytree(tiny_model_dir / CV.dir_name, volume / CV.dir_name)
    (volume / CV.dir_name / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelError) as info:
        ModelCache(settings_for(tmp_path)).get(CV.name)
    assert info.value.code == "model_unavailable"
    assert "could not be loaded" in info.value.message
    assert "huggingface-cli download Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice" in info.value.message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, ("cpu", "float32", "sdpa"), id="auto-on-cpu"),
        pytest.param({"QWEN_TTS_DTYPE": "bfloat16"}, ("cpu", "bfloat16", "sdpa"), id="explicit-dtype"),
        pytest.param({"QWEN_TTS_DEVICE": "cpu"}, ("cpu", "float32", "sdpa"), id="explicit-cpu"),
    ],
)
def test_runtime_choice(env, expected):
    runtime = pick_runtime(Settings.from_env(env))
    assert (runtime.device, runtime.dtype, runtime.attention) == expected


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        pytest.param({"QWEN_TTS_DEVICE": "cuda"}, "no CUDA device", id="cuda-without-gpu"),
        pytest.param({"QWEN_TTS_DTYPE": "float8"}, "not one of auto", id="bad-dtype"),
    ],
)
def test_impossible_runtime_is_model_unavailable(env, fragment):
    with pytest.raises(ModelError, match=fragment):
        pick_runtime(Settings.from_env(env))


def test_lru_cache_keeps_at_most_the_limit_and_evicts_least_recent(tiny_model_dir, tmp_path):
    cache = ModelCache(settings_for(tmp_path, QWEN_TTS_MODEL_DIR=str(tiny_model_dir), QWEN_TTS_MAX_LOADED_MODELS="2"))
    first = cache.get("0.6B-CustomVoice")
    cache.get("1.7B-VoiceDesign")
    assert cache.get("0.6B-CustomVoice") is first  # a hit refreshes recency
    cache.get("0.6B-Base")
    assert cache.loaded() == ["0.6B-CustomVoice", "0.6B-Base"]


def test_auto_download_fetches_a_missing_model_into_the_hf_cache(tiny_model_dir, tmp_path):
    fetched = []

    def download(repo_id):  # stands in for snapshot_download: lays out the HF cache like the hub client does
        fetched.append(repo_id)
        snapshot = tmp_path / "hf/hub/models--Qwen--Qwen3-TTS-12Hz-0.6B-CustomVoice/snapshots/rev1"
        snapshot.parent.mkdir(parents=True)
        snapshot.symlink_to(tiny_model_dir / CV.dir_name, target_is_directory=True)

    cache = ModelCache(settings_for(tmp_path, QWEN_TTS_AUTO_DOWNLOAD="true"), download=download)
    assert cache.get(CV.name).sample_rate == 24000
    assert fetched == ["Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"]


def test_failed_auto_download_is_model_unavailable(tmp_path):
    def download(repo_id):
        raise ConnectionError("hub unreachable")

    cache = ModelCache(settings_for(tmp_path, QWEN_TTS_AUTO_DOWNLOAD="1"), download=download)
    with pytest.raises(ModelError, match=r"downloading Qwen/Qwen3-TTS-12Hz-0\.6B-CustomVoice failed"):
        cache.get(CV.name)


def test_without_auto_download_nothing_is_fetched(tmp_path):
    cache = ModelCache(settings_for(tmp_path), download=lambda repo_id: pytest.fail("must not download"))
    with pytest.raises(ModelError, match="is not on this worker"):
        cache.get(CV.name)


def test_preload_loads_and_warms_every_kind(make_settings):
    from audio.worker import Worker

    settings = make_settings({"QWEN_TTS_PRELOAD": "0.6B-Base,1.7B-VoiceDesign,0.6B-CustomVoice"})
    worker = Worker(settings, models=ModelCache(settings))
    worker.preload()
    assert worker.models.loaded() == ["0.6B-Base", "1.7B-VoiceDesign", "0.6B-CustomVoice"]


@pytest.mark.parametrize(
    ("device", "dtype", "flash", "expected"),
    [
        pytest.param("cuda:0", "bfloat16", True, "flash_attention_2", id="cuda-bf16-flash"),
        pytest.param("cuda:0", "float16", True, "flash_attention_2", id="cuda-fp16-flash"),
        pytest.param("cuda:0", "float32", True, "sdpa", id="cuda-fp32-never-flash"),
        pytest.param("cuda:0", "bfloat16", False, "sdpa", id="cuda-bf16-no-flash-attn"),
        pytest.param("cpu", "bfloat16", True, "sdpa", id="cpu-never-flash"),
    ],
)
def test_attention_choice(device, dtype, flash, expected):
    assert choose_attention(device, dtype, flash) == expected


def test_import_error_while_loading_is_reported_as_a_missing_module(tiny_model_dir, tmp_path):
    def load(path, tokenizer, runtime):
        raise ModuleNotFoundError("No module named 'flash_attn'", name="flash_attn")

    cache = ModelCache(settings_for(tmp_path, QWEN_TTS_MODEL_DIR=str(tiny_model_dir)), load=load)
    with pytest.raises(ModelError) as info:
        cache.get(CV.name)
    assert info.value.message == (
        "model 0.6B-CustomVoice could not be loaded: a module of the inference stack could not be imported "
        "(flash_attn) (ImportError). The worker image is missing a dependency; the model files are not the problem."
    )
    assert cache.loaded() == [] and cache.loads() == {}


def test_out_of_memory_while_loading_is_reported_as_such(tiny_model_dir, tmp_path):
    import torch

    def load(path, tokenizer, runtime):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cache = ModelCache(settings_for(tmp_path, QWEN_TTS_MODEL_DIR=str(tiny_model_dir)), load=load)
    with pytest.raises(ModelError, match=r"could not be loaded: the GPU ran out of memory \(OutOfMemoryError\)"):
        cache.get(CV.name)


def test_sibling_tokenizer_view_is_removed_after_loading(tiny_model_dir, tmp_path):
    volume = tmp_path / "volume"
    shutil.copytree(
        tiny_model_dir / CV.dir_name, volume / CV.dir_name, ignore=shutil.ignore_patterns("speech_tokenizer")
    )
    shutil.copytree(tiny_model_dir / CV.dir_name / "speech_tokenizer", volume / TOKENIZER_DIR_NAME)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    views = []

    def load(path, tokenizer, runtime):
        tts = _load_qwen_tts(path, tokenizer, runtime, scratch=scratch)
        views.append(path.name)
        return tts

    loaded = ModelCache(settings_for(tmp_path), load=load).get(CV.name)
    assert views == [CV.dir_name]
    assert list(scratch.iterdir()) == []  # the symlink view is gone
    wavs = loaded.generate([ChunkRequest("Hi.", 2, seed=1)], language="Auto", voice=Voice(speaker="Ryan"), params={})
    assert [len(w) for w in wavs] == [2 * loaded.frame_samples]


def test_model_loads_count_each_load_since_start(tiny_model_dir, tmp_path):
    cache = ModelCache(settings_for(tmp_path, QWEN_TTS_MODEL_DIR=str(tiny_model_dir), QWEN_TTS_MAX_LOADED_MODELS="1"))
    for name in ("0.6B-CustomVoice", "0.6B-CustomVoice", "1.7B-VoiceDesign", "0.6B-CustomVoice"):
        cache.get(name)
    assert cache.loads() == {"0.6B-CustomVoice": 2, "1.7B-VoiceDesign": 1}
    assert cache.loaded() == ["0.6B-CustomVoice"]


def test_evicted_model_is_freed_before_the_next_loads(tiny_model_dir, tmp_path):
    import weakref

    refs: list[weakref.ref] = []
    alive_at_load = []

    def load(path, tokenizer, runtime):
        alive_at_load.append([r() is not None for r in refs])
        return _load_qwen_tts(path, tokenizer, runtime)

    settings = settings_for(tmp_path, QWEN_TTS_MODEL_DIR=str(tiny_model_dir), QWEN_TTS_MAX_LOADED_MODELS="1")
    cache = ModelCache(settings, load=load)
    refs.append(weakref.ref(cache.get("0.6B-CustomVoice")))
    cache.get("1.7B-VoiceDesign")
    assert alive_at_load == [[], [False]]
