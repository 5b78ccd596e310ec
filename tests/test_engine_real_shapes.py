"""The engine on the released models' structure (random weights, `build_tiny_checkpoint.py --real-shapes`).

The builder: real widths, heads, rope and projections, loadable through qwen_tts like the tiny builds.
"""

from __future__ import annotations

import json

import pytest
import torch

from audio.catalog import MODELS
from audio.model_loader import ModelCache
from audio.settings import Settings
from tests.conftest import DEVICE_ENV

SHAPES = [
    # model, talker hidden, talker-to-predictor projection
    pytest.param("1.7B-CustomVoice", 2048, "Linear", id="1.7B-CustomVoice"),
    pytest.param("0.6B-CustomVoice", 1024, "Identity", id="0.6B-CustomVoice"),
    pytest.param("0.6B-Base", 1024, "Identity", id="0.6B-Base"),
    pytest.param("1.7B-VoiceDesign", 2048, "Linear", id="1.7B-VoiceDesign"),
]


def real_settings(model_dir, **env: str) -> Settings:
    base = {
        "QWEN_TTS_MODEL_DIR": str(model_dir),
        "QWEN_TTS_PRELOAD": "none",
        "QWEN_TTS_MAX_LOADED_MODELS": "1",
        "HF_HOME": str(model_dir / "no-hf"),
    }
    return Settings.from_env({**base, **DEVICE_ENV, **env})


@pytest.mark.parametrize(("name", "hidden", "projection"), SHAPES)
def test_real_shape_build_has_the_released_structure(real_shape_model_dir, name, hidden, projection):
    config = json.loads((real_shape_model_dir / MODELS[name].dir_name / "config.json").read_text())
    talker = config["talker_config"]
    assert (talker["hidden_size"], talker["num_attention_heads"], talker["num_key_value_heads"]) == (hidden, 16, 8)
    assert (talker["head_dim"], talker["rope_theta"], talker["num_hidden_layers"]) == (128, 1e6, 1)
    assert talker["rope_scaling"] == {"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True}
    predictor = talker["code_predictor_config"]
    assert (predictor["hidden_size"], predictor["num_attention_heads"], predictor["head_dim"]) == (1024, 16, 128)
    tokenizer = json.loads((real_shape_model_dir / MODELS[name].dir_name / "speech_tokenizer/config.json").read_text())
    decoder = tokenizer["decoder_config"]
    assert (decoder["num_hidden_layers"], decoder["sliding_window"], decoder["hidden_size"]) == (8, 72, 512)

    model = ModelCache(real_settings(real_shape_model_dir)).get(name)
    talker_module = model.tts.model.talker
    attention = talker_module.model.layers[0].self_attn
    assert attention.q_proj.weight.shape == (16 * 128, hidden)  # q is wider than hidden on the 0.6B
    assert type(talker_module.code_predictor.small_to_mtp_projection).__name__ == projection
    assert model.frame_samples == 1920
    assert torch.equal(talker_module.codec_head.weight[2150], torch.zeros(hidden))  # EOS dead, no x50 spread
    assert float(talker_module.codec_head.weight.detach().std()) < 0.05
