"""The `reference` engine: qwen_tts's own `generate_*`, unchanged, for comparison, debugging and as a fallback.

It seeds the process-global torch RNG per call (qwen_tts samples from it), so a chunk's sample depends on its
batch, and calls must not run concurrently on one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from audio.engine.base import QwenSpeech
from audio.engine.prompts import call_generate
from audio.errors import ModelError
from audio.speech import ChunkRequest, FrameGuard, Voice, derive_seed, tokens_for_frames


class ReferenceEngine(QwenSpeech):
    engine = "reference"

    def generate(
        self,
        requests: Sequence[ChunkRequest],
        *,
        language: str,
        voice: Voice,
        params: dict[str, Any],
        clone_prompt: Any = None,
        guard: FrameGuard | None = None,
    ) -> list[np.ndarray]:
        import torch

        # One seed for the whole call, from its chunks' seeds (a retry's chunks have new seeds: a new sample).
        seed = derive_seed(*(r.seed for r in requests))
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        codes: list[Any] = []
        with _recording_codes(self.tts.model, codes):
            wavs, rate = call_generate(
                self.tts,
                self.variant,
                [r.text for r in requests],
                language=language,
                voice=voice,
                clone_prompt=clone_prompt,
                # One budget per call: the longest chunk's. Shorter chunks may run past theirs (their check sees it).
                max_new_tokens=tokens_for_frames(max(r.budget_frames for r in requests)),
                **params,
            )
        if guard is not None:  # after the fact: qwen_tts's generate can't be stopped per row
            for row, row_codes in enumerate(codes):
                guard.observe(row, row_codes[:, 0].cpu().numpy())
        if rate != self.sample_rate:  # pragma: no cover - a tokenizer contract break
            raise ModelError(f"{self.variant.name} returned {rate} Hz audio, expected {self.sample_rate}")
        return [np.asarray(w, dtype=np.float32).reshape(-1) for w in wavs]


@contextlib.contextmanager
def _recording_codes(model: Any, into: list[Any]) -> Iterator[None]:
    """Keep the codes qwen_tts's `model.generate` returns (one [frames, groups] tensor per text), by shadowing
    it on the instance for the call."""
    shadowed = model.__dict__.get("generate")
    real = model.generate

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        into.extend(out[0])
        return out

    model.generate = recording
    try:
        yield
    finally:
        if shadowed is None:
            del model.generate
        else:
            model.generate = shadowed
