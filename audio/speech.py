"""The engine seam: what "a model that speaks" is to the rest of the worker, without torch.

The generator, the worker and tests see a model only through `SpeechModel`: who speaks (`Voice`), what to say
(`ChunkRequest`: text, frame budget and the chunk's own seed) and what the model can do (`Capabilities`). The two
engines behind it live in `audio/engine/`: `reference` (qwen_tts's own `generate`) and `fast` (our decode loop
on qwen_tts's modules). `model_loader` finds, loads and caches them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

ENGINES = ("fast", "reference")
DEFAULT_ENGINE = "fast"
# Codec frames per streamed piece, the last size repeating: first audio after one frame, then ~1 s pieces.
STREAM_PIECE_FRAMES = (1, 2, 4, 8, 12)


@dataclass(frozen=True)
class Voice:
    """Who speaks a chunk. CustomVoice: `speaker` (+ `instruct`); VoiceDesign: `instruct`; Base: `ref_*`."""

    speaker: str | None = None
    instruct: str | None = None
    ref_audio: tuple[np.ndarray, int] | None = None  # decoded reference (samples, sample_rate)
    ref_text: str | None = None
    x_vector_only: bool = False
    ref_key: str | None = None  # identifies the reference audio, for caching its clone prompt
    saved_voice: str | None = None  # the voice_id of a saved voice, whose prompts are kept on the volume

    def key(self) -> tuple:
        return (self.speaker, self.instruct, self.ref_key, self.ref_text, self.x_vector_only)


@dataclass(frozen=True)
class ChunkRequest:
    """One chunk to speak: its text, the most codec frames it may use, and the seed its sampling draws from.

    The seed is the chunk's own (derived from the job seed, the chunk and the retry attempt), so with the fast
    engine a chunk's frames do not depend on which chunks share its batch."""

    text: str
    budget_frames: int
    seed: int


class FrameGuard(Protocol):
    """Watches a generate call's rows while the engine makes them (audio/guard.py's `BatchGuard`): every
    `every_frames` frames the fast engine shows it each live row's new first-codebook tokens, and stops the rows
    it flags at once; the reference engine shows it each row's tokens after the fact. Why a row was flagged is
    the guard's to keep."""

    every_frames: int

    def observe(self, row: int, first_codes: np.ndarray) -> bool:
        """Row `row` (its position in the call) made these first-codebook tokens; True: stop it now."""
        ...


@dataclass(frozen=True)
class GenerateCall:
    """One `generate` call's arguments: chunks that share a voice, language and sampling parameters. The fast
    engine can run several calls (from concurrent jobs) as one batch (`FastEngine.generate_many`)."""

    requests: Sequence[ChunkRequest]
    language: str
    voice: Voice
    params: dict[str, Any]
    clone_prompt: Any = None
    guard: FrameGuard | None = None


@dataclass(frozen=True)
class Capabilities:
    engine: str  # "fast" | "reference"
    streams: bool  # yields frames as they are made (`SpeechModel.stream`)
    batch_independent: bool  # a chunk's frames are the same alone or inside any batch (per-row randomness)
    honours_instruct: bool  # CustomVoice style instructions are applied (0.6B CustomVoice drops them)


@dataclass(frozen=True)
class AudioPiece:
    """A stretch of one chunk's audio, as the incremental decoder releases it."""

    row: int  # the request's position in its batch
    samples: np.ndarray  # float32 mono at the model's sample rate
    first_frame: int  # index of the first codec frame this piece covers
    frames: int
    final: bool  # the chunk's last piece


def derive_seed(*parts: object) -> int:
    """A 32-bit seed determined by `parts` (a job seed, a chunk, an attempt, ...), the same on every machine."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def tokens_for_frames(frames: int) -> int:
    """qwen_tts keeps one frame fewer than it samples tokens: a step's residual codebooks are predicted on the
    next step, so the last sampled token never becomes audio. Ask its `generate` for one token more."""
    return frames + 1


class SpeechModel(Protocol):
    sample_rate: int
    frame_samples: int
    capabilities: Capabilities

    def clone_prompt(self, voice: Voice) -> Any: ...

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
        """Audio per request (float32 mono at `sample_rate`), each at most its budget of frames long; a row that
        `guard` stops ends where it was stopped."""
        ...


class StreamingSpeechModel(SpeechModel, Protocol):
    def stream(
        self,
        requests: Sequence[ChunkRequest],
        *,
        language: str,
        voice: Voice,
        params: dict[str, Any],
        clone_prompt: Any = None,
        piece_frames: int | None = None,
        guard: FrameGuard | None = None,
    ) -> Iterator[AudioPiece]:
        """Audio in pieces of about `piece_frames` frames per request, in the order it is made."""
        ...
