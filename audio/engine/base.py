"""What both engines share: one loaded qwen_tts model, its audio facts, and its voice-clone prompts."""

from __future__ import annotations

from typing import Any

import numpy as np

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

    def prompt_arrays(self, prompt: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """A clone prompt as plain arrays + JSON-able metadata, to store without pickle (safetensors)."""
        (item,) = prompt
        embedding = item.ref_spk_embedding.detach()
        arrays = {"ref_spk_embedding": embedding.float().cpu().numpy()}
        if item.ref_code is not None:
            arrays["ref_code"] = item.ref_code.detach().cpu().numpy()
        meta = {
            "x_vector_only_mode": bool(item.x_vector_only_mode),
            "icl_mode": bool(item.icl_mode),
            "ref_text": item.ref_text,
            "embedding_dtype": str(embedding.dtype).removeprefix("torch."),
        }
        return arrays, meta

    def prompt_from_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        import torch
        from qwen_tts.inference.qwen3_tts_model import VoiceClonePromptItem

        if meta.get("embedding_dtype") not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"unknown embedding dtype {meta.get('embedding_dtype')!r}")
        self._check_prompt_arrays(arrays, meta)
        device = self.tts.model.device
        embedding = torch.from_numpy(np.ascontiguousarray(arrays["ref_spk_embedding"]))
        code = arrays.get("ref_code")
        return [
            VoiceClonePromptItem(
                ref_code=None if code is None else torch.from_numpy(np.ascontiguousarray(code)).to(device),
                ref_spk_embedding=embedding.to(device=device, dtype=getattr(torch, meta["embedding_dtype"])),
                x_vector_only_mode=bool(meta["x_vector_only_mode"]),
                icl_mode=bool(meta["icl_mode"]),
                ref_text=meta.get("ref_text"),
            )
        ]

    def _check_prompt_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """ValueError unless stored arrays fit this model: a damaged prompt file would otherwise fail deep in
        generation (a code outside the codebook indexes past an embedding)."""
        config = self.tts.model.config
        embedding, code = arrays["ref_spk_embedding"], arrays.get("ref_code")
        dim = getattr(getattr(config, "speaker_encoder_config", None), "enc_dim", None)
        if embedding.ndim != 1 or (dim is not None and embedding.shape[0] != dim):
            raise ValueError(f"speaker embedding of shape {embedding.shape}")
        if not np.isfinite(embedding).all():
            raise ValueError("speaker embedding is not finite")
        ref_text = meta.get("ref_text")
        if bool(meta.get("icl_mode")) != (code is not None) or not isinstance(ref_text, (str, type(None))):
            raise ValueError("prompt metadata does not match its arrays")
        if code is not None:
            groups = config.talker_config.num_code_groups
            decoder = getattr(getattr(self.tts.model.speech_tokenizer, "config", None), "decoder_config", None)
            codebook = getattr(decoder, "codebook_size", None)
            if code.ndim != 2 or code.shape[1] != groups or code.shape[0] == 0 or code.dtype.kind not in "iu":
                raise ValueError(f"reference codes of shape {code.shape} and type {code.dtype}")
            if code.min() < 0 or (codebook is not None and code.max() >= codebook):
                raise ValueError("reference codes outside the codebook")
