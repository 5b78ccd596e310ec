"""The worker's clone-prompt cache: a Base model's voice-clone prompt built once per reference and reused.

Keyed by (model, hash of the decoded reference audio, ref_text, x_vector_only), least recently used evicted
past `capacity` (QWEN_TTS_VOICE_CACHE). A saved voice's prompt has a second tier on the volume (the voice
store), so another worker, or this one after a restart, loads it instead of building it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np

from audio.speech import Voice

log = logging.getLogger(__name__)


class PromptModel(Protocol):
    def clone_prompt(self, voice: Voice) -> Any: ...

    def prompt_arrays(self, prompt: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def prompt_from_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Any: ...


class SavedPrompts(Protocol):
    """Where saved voices keep their prompts per Base model (`voice_store.VoiceStore`)."""

    def load_prompt(self, voice_id: str, model_name: str, mode: str, ref_key: str) -> tuple[dict, dict] | None: ...

    def save_prompt(
        self, voice_id: str, model_name: str, mode: str, ref_key: str, arrays: dict, meta: dict
    ) -> None: ...


class ClonePromptCache:
    def __init__(self, capacity: int, saved: SavedPrompts | None = None):
        self.capacity = capacity
        self.saved = saved
        self._lock = threading.Lock()
        self._prompts: OrderedDict[tuple, Any] = OrderedDict()
        self.builds = 0  # prompts built by this worker (not loaded, not reused): for logs and tests

    @staticmethod
    def key(model_name: str, voice: Voice) -> tuple:
        return (model_name, voice.ref_key, voice.ref_text, voice.x_vector_only)

    def get(self, model_name: str, model: PromptModel, voice: Voice) -> tuple[Any, bool]:
        """(prompt, hit): hit is True when no prompt had to be built (in memory or on the volume)."""
        key = self.key(model_name, voice)
        with self._lock:
            if key in self._prompts:
                self._prompts.move_to_end(key)
                return self._prompts[key], True
        prompt, hit = self._load_or_build(model_name, model, voice)
        with self._lock:
            if self.capacity > 0:
                self._prompts[key] = prompt
                self._prompts.move_to_end(key)
                while len(self._prompts) > self.capacity:
                    self._prompts.popitem(last=False)
        return prompt, hit

    def _load_or_build(self, model_name: str, model: PromptModel, voice: Voice) -> tuple[Any, bool]:
        saved_voice = voice.saved_voice
        persist = self.saved is not None and saved_voice is not None and voice.ref_key is not None
        # An ICL voice used x-vector-only builds a different prompt: each mode is stored on its own.
        mode = "xvec" if voice.x_vector_only else "icl"
        if persist:
            stored = self.saved.load_prompt(saved_voice, model_name, mode, voice.ref_key)
            if stored is not None:
                try:
                    return model.prompt_from_arrays(*stored), True
                except (KeyError, TypeError, ValueError) as exc:
                    # Readable but not a prompt for this model (a damaged file): rebuilt from the reference.
                    log.warning("stored prompt %s of voice %s unusable (%s): rebuilt", model_name, saved_voice, exc)
        prompt = model.clone_prompt(voice)
        with self._lock:
            self.builds += 1
        if persist:
            arrays, meta = model.prompt_arrays(prompt)
            self.saved.save_prompt(saved_voice, model_name, mode, voice.ref_key, arrays, meta)
        return prompt, False
