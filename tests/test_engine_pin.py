"""The fast engine is written against qwen-tts 0.1.1's internals: this fails loudly when they change.

`audio/engine/prompts.py` intercepts `talker.generate` inside `Qwen3TTSForConditionalGeneration.generate`, and
`audio/engine/decode_loop.py` reimplements the talker / code predictor step, their attention, norms and rope,
and `audio/engine/codec.py` / `codec_stream.py` decode as `generate_*` and the 12 Hz decoder do. Each hash below
is of the source of one function that code mirrors. After an upgrade: read each changed function against our code, rerun
tests/test_engine.py (greedy fast == reference), then update the hash and `PINNED_QWEN_TTS`.
"""

from __future__ import annotations

import hashlib
import inspect
from importlib.metadata import version

import pytest

from audio.engine.prompts import PINNED_QWEN_TTS

MIRRORED = {
    "core.models.modeling_qwen3_tts": {
        "Qwen3TTSForConditionalGeneration.generate": "af9dd8f14f312ecc",
        "Qwen3TTSTalkerForConditionalGeneration.forward": "b9f98959190263a7",
        "Qwen3TTSTalkerForConditionalGeneration.get_rope_index": "6840eadc8f396af8",
        "Qwen3TTSTalkerModel.forward": "f997524d1e88421e",
        "Qwen3TTSTalkerDecoderLayer.forward": "613b56fc0d89de85",
        "Qwen3TTSTalkerAttention.forward": "1705139cf8fd3dff",
        "Qwen3TTSTalkerCodePredictorModelForConditionalGeneration.forward": "4383f4b0ab53c1b8",
        "Qwen3TTSTalkerCodePredictorModel.forward": "b55daf8fc3327e4d",
        "Qwen3TTSDecoderLayer.forward": "2a4876c196be2ded",
        "Qwen3TTSAttention.forward": "becc8c0aebae5193",
        "Qwen3TTSRMSNorm.forward": "7d352cd525210579",
        "Qwen3TTSTalkerTextMLP.forward": "03df2d7685cf8446",
        "Qwen3TTSTalkerRotaryEmbedding.forward": "02a39a250fbd923f",
        "Qwen3TTSRotaryEmbedding.forward": "f624a9f38bce5eb8",
        "apply_multimodal_rotary_pos_emb": "782bc4558d450a51",
        "apply_rotary_pos_emb": "d1e7d21b55bc5ca9",
        "rotate_half": "f714a4b1160c694e",
    },
    "inference.qwen3_tts_model": {
        "Qwen3TTSModel.generate_voice_clone": "df00396e7af21072",
        "Qwen3TTSModel.generate_custom_voice": "1bc2cadda8069cf2",
        "Qwen3TTSModel.generate_voice_design": "e192307aa69fff03",
    },
    "core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2": {
        "Qwen3TTSTokenizerV2Decoder.forward": "ee3b26e25f0d604d",
        "Qwen3TTSTokenizerV2Decoder.chunked_decode": "2fe800347edb617c",
        # audio/engine/codec_stream.py runs these piece by piece
        "Qwen3TTSTokenizerV2DecoderTransformerModel.forward": "e731de64ff0b7f5e",
        "Qwen3TTSTokenizerV2DecoderTransformerLayer.forward": "2043032599e4bfd0",
        "Qwen3TTSTokenizerV2DecoderAttention.forward": "b7f578b05d078191",
        "Qwen3TTSTokenizerV2CausalConvNet.forward": "4e5c0b646094b73b",
        "Qwen3TTSTokenizerV2CausalTransConvNet.forward": "3aede102501980fc",
        "Qwen3TTSTokenizerV2ConvNeXtBlock.forward": "a37491d214e82e2b",
        "Qwen3TTSTokenizerV2DecoderDecoderResidualUnit.forward": "ce1f1a816f758673",
        "Qwen3TTSTokenizerV2DecoderDecoderBlock.forward": "28059dab2f5a547b",
    },
}


def test_installed_qwen_tts_is_the_pinned_version():
    assert version("qwen-tts") == PINNED_QWEN_TTS, (
        f"qwen-tts {version('qwen-tts')} is installed; the fast engine is pinned to {PINNED_QWEN_TTS} "
        "(it falls back to the reference engine at load). See this file's docstring before upgrading."
    )


@pytest.mark.parametrize("module", MIRRORED)
def test_mirrored_qwen_tts_code_is_unchanged(module):
    import importlib

    mod = importlib.import_module(f"qwen_tts.{module}")
    changed = []
    for dotted, want in MIRRORED[module].items():
        obj = mod
        for part in dotted.split("."):
            obj = getattr(obj, part)
        got = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
        if got != want:
            changed.append(f"{module}.{dotted} ({want} -> {got})")
    assert not changed, "qwen_tts code the fast engine mirrors has changed: " + "; ".join(changed)


def test_capture_fails_loudly_if_qwen_tts_stops_calling_the_talker(model_cache):
    from audio.catalog import MODELS
    from audio.engine.prompts import capture_talker_inputs
    from audio.errors import ModelError
    from audio.speech import Voice

    model = model_cache.get("0.6B-CustomVoice")
    tts = model.tts

    class NoTalkerCall:
        """The real model, except that generate_custom_voice returns without reaching talker.generate."""

        model = tts.model

        def generate_custom_voice(self, **kwargs):
            return [], 24000

    with pytest.raises(ModelError, match=r"layout changed: its generate never reached talker\.generate"):
        capture_talker_inputs(
            NoTalkerCall(),
            MODELS["0.6B-CustomVoice"],
            ["Hi."],
            language="Auto",
            voice=Voice(speaker="Ryan"),
            clone_prompt=None,
        )
    assert "generate" not in vars(tts.model.talker)  # the shadowing attribute is always removed
