"""Prompt building stays qwen_tts's: the `generate_*` call per model kind, and the one place we intercept it.

qwen_tts 0.1.1 builds every row's talker input inside `Qwen3TTSForConditionalGeneration.generate` (roles, codec
think/language/speaker tags, dialects, instruct, ICL or x-vector prompts, `non_streaming_mode`, left padding)
and then calls `self.talker.generate(inputs_embeds=..., attention_mask=..., trailing_text_hidden=...,
tts_pad_embed=..., **talker_kwargs)`. `capture_talker_inputs` runs the same public `generate_*` call with that
one bound method shadowed on the instance by a recorder that raises, so qwen_tts stops right before its own
decode loop: we take exactly the inputs it built. Pinned to qwen-tts 0.1.1; tests/test_engine_pin.py fails
loudly when the code this relies on changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audio.catalog import BASE, CUSTOM_VOICE, VOICE_DESIGN, ModelVariant
from audio.errors import ModelError
from audio.speech import Voice

PINNED_QWEN_TTS = "0.1.1"


def call_generate(
    tts: Any, variant: ModelVariant, texts: list[str], *, language: str, voice: Voice, clone_prompt: Any, **kwargs
) -> tuple[list[Any], int]:
    """qwen_tts's public `generate_*` for the variant's kind: `(wavs, sample_rate)`."""
    kind = variant.kind
    if kind == CUSTOM_VOICE:
        instruct = voice.instruct if variant.honours_instruct else None
        return tts.generate_custom_voice(
            text=texts, speaker=voice.speaker, language=language, instruct=instruct, **kwargs
        )
    if kind == VOICE_DESIGN:
        return tts.generate_voice_design(text=texts, instruct=voice.instruct, language=language, **kwargs)
    if kind == BASE:
        # non_streaming_mode=True: the streaming text feed speeds speech up within a long clone generation.
        return tts.generate_voice_clone(
            text=texts, language=language, voice_clone_prompt=clone_prompt, non_streaming_mode=True, **kwargs
        )
    raise ModelError(f"unknown model kind {kind}")  # pragma: no cover - the catalog has no other kind


@dataclass
class TalkerInputs:
    """What qwen_tts hands its talker for one batch (tensors on the model's device)."""

    inputs_embeds: Any  # [B, T, H] left-padded prompt embeddings
    attention_mask: Any  # [B, T] 1 for prompt positions, 0 for padding
    trailing_text_hidden: Any  # [B, L, H] text fed one per step after the prompt, padded with tts_pad_embed
    tts_pad_embed: Any  # [1, 1, H] fed once the trailing text is used up
    talker_kwargs: dict[str, Any]  # sampling settings merged with generate_config.json, eos, suppress, min tokens


class _Captured(Exception):
    pass


def capture_talker_inputs(
    tts: Any, variant: ModelVariant, texts: list[str], *, language: str, voice: Voice, clone_prompt: Any, **kwargs
) -> TalkerInputs:
    """Run qwen_tts's prompt building for `texts` and return the talker inputs, without generating."""
    talker = tts.model.talker
    seen: dict[str, Any] = {}

    def record(**talker_call: Any) -> Any:
        seen.update(talker_call)
        raise _Captured

    talker.generate = record  # an instance attribute shadows the class's method for this call only
    try:
        call_generate(tts, variant, texts, language=language, voice=voice, clone_prompt=clone_prompt, **kwargs)
    except _Captured:
        pass
    finally:
        del talker.generate
    if not seen:
        raise ModelError(f"qwen_tts {PINNED_QWEN_TTS} layout changed: its generate never reached talker.generate")
    return TalkerInputs(
        inputs_embeds=seen.pop("inputs_embeds"),
        attention_mask=seen.pop("attention_mask"),
        trailing_text_hidden=seen.pop("trailing_text_hidden"),
        tts_pad_embed=seen.pop("tts_pad_embed"),
        talker_kwargs=seen,
    )
