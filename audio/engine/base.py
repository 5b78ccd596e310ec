"""What both engines share: one loaded qwen_tts model, its audio facts, and its voice-clone prompts."""

from __future__ import annotations

from typing import Any

from audio.catalog import ModelVariant
from audio.errors import InputError
from audio.speech import Capabilities, Voice


class QwenSpeech:
    """A loaded variant. Output is float32 mono at `sample_rate`, `frame_samples` samples per codec frame."""

    engine = ""
    streams = False
    batch_independent = False

    def __init__(self, variant: ModelVariant, tts: Any, runtime: Any):
        self.variant = variant
        self.tts = tts
        self.runtime = runtime
        self.sample_rate = int(tts.model.speech_tokenizer.get_output_sample_rate())
        self.frame_samples = int(tts.model.speech_tokenizer.get_decode_upsample_rate())
        self.capabilities = Capabilities(
            engine=self.engine,
            streams=self.streams,
            batch_independent=self.batch_independent,
            honours_instruct=variant.honours_instruct,
        )

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.frame_samples

    def clone_prompt(self, voice: Voice) -> Any:
        """Build a Base model's voice-clone prompt once; every chunk of the voice reuses it."""
        samples, rate = voice.ref_audio
        try:
            return self.tts.create_voice_clone_prompt(
                ref_audio=(samples, rate), ref_text=voice.ref_text, x_vector_only_mode=voice.x_vector_only
            )
        except ValueError as exc:
            raise InputError(f"the reference audio could not be used: {exc}") from None
