"""The tiny checkpoint builder: real directory names, real configs, deterministic per seed, cached."""

from __future__ import annotations

import hashlib
import json

from audio.catalog import MODELS
from scripts.build_tiny_checkpoint import build


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_all_five_variants_under_their_real_names_with_real_config(tiny_model_dir):
    for variant in MODELS.values():
        directory = tiny_model_dir / variant.dir_name
        config = json.loads((directory / "config.json").read_text())
        assert (config["tts_model_type"], config["tts_model_size"]) == (
            variant.kind,
            "0b6" if variant.size == "0.6B" else "1b7",
        )
        assert (directory / "speech_tokenizer" / "config.json").is_file()
        assert (directory / "generation_config.json").is_file()
    custom = json.loads((tiny_model_dir / "Qwen3-TTS-12Hz-1.7B-CustomVoice" / "config.json").read_text())
    assert sorted(custom["talker_config"]["spk_id"]) == sorted(
        ["vivian", "serena", "uncle_fu", "dylan", "eric", "ryan", "aiden", "ono_anna", "sohee"]
    )


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    names = ["0.6B-CustomVoice"]
    first = build(tmp_path / "a", seed=3, names=names) / MODELS["0.6B-CustomVoice"].dir_name
    again = build(tmp_path / "b", seed=3, names=names) / MODELS["0.6B-CustomVoice"].dir_name
    other = build(tmp_path / "c", seed=4, names=names) / MODELS["0.6B-CustomVoice"].dir_name
    for rel in ("model.safetensors", "speech_tokenizer/model.safetensors", "tokenizer.json"):
        assert digest(first / rel) == digest(again / rel)
    assert digest(first / "model.safetensors") != digest(other / "model.safetensors")


def test_a_matching_build_is_reused_not_rebuilt(tmp_path):
    out = build(tmp_path, seed=1, names=["0.6B-Base"])
    weights = out / MODELS["0.6B-Base"].dir_name / "model.safetensors"
    before = weights.stat().st_mtime_ns
    build(tmp_path, seed=1, names=["0.6B-Base"])
    assert weights.stat().st_mtime_ns == before
