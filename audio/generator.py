"""The chunking generator: split a job's text, generate chunks in batches, check and retry, then join.

It knows models only through the small `SpeechModel` protocol (what `model_loader.LoadedModel` offers), so a
test can wrap the real model to inject failures. Invalid input never reaches here; no sleeps, no silent drops:
a chunk that still fails after its retries fails the job.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from audio import joiner
from audio.errors import InputError, SynthesisError
from audio.model_loader import Voice
from audio.quality import QualityLimits, check_chunk, frame_budget
from audio.reference import decode_reference
from audio.schema import JobPlan, SegmentPlan
from audio.splitter import CLAUSE, FORCED, SENTENCE, split_chunks
from audio.spoken import is_speakable, spoken_weight

log = logging.getLogger(__name__)


class SpeechModel(Protocol):
    sample_rate: int
    frame_samples: int

    def clone_prompt(self, voice: Voice) -> Any: ...

    def generate(
        self,
        texts: Sequence[str],
        *,
        language: str,
        voice: Voice,
        seed: int,
        max_new_tokens: int,
        params: dict[str, Any],
        clone_prompt: Any = None,
    ) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class GeneratorConfig:
    max_batch: int = 8
    max_retries: int = 2
    chunk_target_chars: int = 150
    chunk_max_chars: int = 250
    crossfade_ms: float = 40.0
    edge_pad_ms: float = 60.0
    sentence_pause_ms: float = 300.0  # silence after a chunk that ends a sentence (between the edge pads)
    clause_pause_ms: float = 120.0  # after a chunk cut at a clause break; a forced cut crossfades instead
    limits: QualityLimits = field(default_factory=QualityLimits)


@dataclass
class Chunk:
    index: int  # position in the job
    segment: int
    text: str
    span: tuple[int, int]  # character range in its segment's text, for error messages and the timeline
    weight: float  # as read aloud (`spoken_weight`): sets the frame budget and the quality checks
    boundary: str = SENTENCE  # why the chunk ends: the pause after it
    speakable: bool = True  # False: nothing to say, never sent to a model; it becomes a pause
    audio: np.ndarray | None = None


@dataclass(frozen=True)
class Synthesis:
    chunks: list[list[np.ndarray]]  # per segment, its chunks' audio, edge silence trimmed, in order
    pauses_ms: list[int]  # silence before each segment (the first's is unused)
    crossfade: int  # samples of crossfade between chunks of a segment
    sample_rate: int
    num_chunks: int
    retries: int
    seed: int
    model_time_s: float
    # Per segment, between its chunks j and j+1: ms of silence, or None for a crossfade (a forced cut).
    gaps_ms: list[list[float | None]] | None = None
    spans: list[list[tuple[int, int]]] | None = None  # per segment, each chunk's character range in its text


def _chunks_for(segment_index: int, segment: SegmentPlan, config: GeneratorConfig, start: int) -> list[Chunk]:
    chunks = []
    for piece in split_chunks(segment.text, config.chunk_target_chars, config.chunk_max_chars):
        text = segment.text[piece.start : piece.end]
        chunks.append(
            Chunk(
                start + len(chunks),
                segment_index,
                text,
                (piece.start, piece.end),
                spoken_weight(text),
                boundary=piece.boundary,
                speakable=is_speakable(text),
            )
        )
    return chunks


def _derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _batches(chunks: list[Chunk], max_batch: int) -> list[list[Chunk]]:
    # Similar lengths share a batch, so short chunks don't wait on a long one's extra frames.
    ordered = sorted(chunks, key=lambda c: (c.weight, c.index))
    return [ordered[i : i + max_batch] for i in range(0, len(ordered), max_batch)]


class Generator:
    def __init__(self, get_model: Callable[[str], SpeechModel], config: GeneratorConfig):
        self.get_model = get_model
        self.config = config

    def run(self, plan: JobPlan, *, on_progress: Callable[[int, int], None] | None = None) -> Synthesis:
        seed = plan.seed if plan.seed is not None else secrets.randbelow(2**32)
        chunks: list[Chunk] = []
        for i, segment in enumerate(plan.segments):
            chunks.extend(_chunks_for(i, segment, self.config, len(chunks)))

        done = sum(not c.speakable for c in chunks)
        retries = 0
        model_time_s = 0.0
        batch_no = 0
        sample_rate = None
        voices = self._voices(plan)
        for model_name, groups in self._batches_of(plan, chunks, voices):
            # One model at a time, fetched when its work starts and dropped when it ends: under a cap of one
            # loaded model the cache can free it before the next model loads.
            model = self.get_model(model_name)
            if sample_rate is None:
                sample_rate = model.sample_rate
            elif model.sample_rate != sample_rate:  # pragma: no cover - every 12Hz model decodes at one rate
                raise SynthesisError(f"model {model_name} speaks at {model.sample_rate} Hz, not {sample_rate}")
            prompts: dict[tuple, Any] = {}  # a clone voice's prompt is built once per job, whatever the language
            for voice, language, batches in groups:
                prompt = None
                if voice.ref_audio is not None:
                    if voice.key() not in prompts:
                        prompts[voice.key()] = model.clone_prompt(voice)
                    prompt = prompts[voice.key()]
                for batch in batches:
                    pending = batch
                    for attempt in range(self.config.max_retries + 1):
                        started = time.perf_counter()
                        failures = self._generate(
                            model, voice, language, prompt, pending, plan, _derive_seed(seed, batch_no, attempt)
                        )
                        model_time_s += time.perf_counter() - started
                        if not failures:
                            break
                        if attempt == self.config.max_retries:
                            chunk, reason = failures[0]
                            raise SynthesisError(self._failure_message(chunk, len(chunks), plan, reason, attempt + 1))
                        retries += len(failures)
                        log.warning("retrying %d chunk(s) of batch %d: %s", len(failures), batch_no, failures[0][1])
                        pending = [c for c, _ in failures]
                    batch_no += 1
                    done += len(batch)
                    if on_progress is not None:
                        on_progress(done, len(chunks))
            del model, prompts, prompt

        if sample_rate is None:  # plan_job refuses such a job; this guards direct callers
            raise InputError("the text has nothing to speak")
        for chunk in chunks:
            if not chunk.speakable:  # "…", "—", an emoji: a pause as long as after a sentence
                chunk.audio = np.zeros(round(sample_rate * self.config.sentence_pause_ms / 1000.0), np.float32)
        return Synthesis(
            chunks=self._trimmed(plan, chunks, sample_rate),
            gaps_ms=self._gaps(plan, chunks),
            spans=[[c.span for c in chunks if c.segment == i] for i in range(len(plan.segments))],
            pauses_ms=[seg.pause_ms for seg in plan.segments],
            crossfade=int(sample_rate * self.config.crossfade_ms / 1000.0),
            sample_rate=sample_rate,
            num_chunks=len(chunks),
            retries=retries,
            seed=seed,
            model_time_s=model_time_s,
        )

    def _batches_of(
        self, plan: JobPlan, chunks: list[Chunk], voices: list[Voice]
    ) -> list[tuple[str, list[tuple[Voice, str, list[list[Chunk]]]]]]:
        """The job's work by model, in order of first use: per model, its (voice, language, batches) groups.

        Chunks that share model, voice and language are batched together, across segments too; a model's
        groups all run before the next model's, so each model is needed for one stretch of the job only.
        A chunk with nothing to say goes to no model."""
        groups: dict[str, dict[tuple, list[Chunk]]] = {}
        for chunk in chunks:
            if not chunk.speakable:
                continue
            seg = plan.segments[chunk.segment]
            key = (voices[chunk.segment].key(), seg.language)
            groups.setdefault(seg.model.name, {}).setdefault(key, []).append(chunk)
        return [
            (
                model_name,
                [
                    (voices[members[0].segment], language, _batches(members, self.config.max_batch))
                    for (_, language), members in by_voice.items()
                ],
            )
            for model_name, by_voice in groups.items()
        ]

    def warm_up(self, plan: JobPlan) -> int:
        """One short generation of each segment's first words, with no quality gate: a few frames of warm-up
        prove the model loads and runs, not that they sound like speech. Returns the model's sample rate."""
        sample_rate = 0
        for segment, voice in zip(plan.segments, self._voices(plan), strict=True):
            model = self.get_model(segment.model.name)
            prompt = model.clone_prompt(voice) if voice.ref_audio is not None else None
            wavs = model.generate(
                [segment.text],
                language=segment.language,
                voice=voice,
                seed=plan.seed or 0,
                max_new_tokens=plan.max_new_tokens or 4,
                params=plan.sampling,
                clone_prompt=prompt,
            )
            if len(wavs) != 1:  # pragma: no cover - a qwen_tts contract break
                raise SynthesisError(f"warm-up of {segment.model.name} returned {len(wavs)} outputs for 1 text")
            sample_rate = model.sample_rate
        return sample_rate

    def _voices(self, plan: JobPlan) -> list[Voice]:
        references = {}
        voices = []
        for seg in plan.segments:
            ref = None
            if seg.ref_audio is not None:
                if seg.ref_audio not in references:
                    references[seg.ref_audio] = decode_reference(seg.ref_audio)
                ref = references[seg.ref_audio]
            voices.append(
                Voice(
                    speaker=seg.speaker,
                    instruct=seg.instruct,
                    ref_audio=(ref.samples, ref.sample_rate) if ref else None,
                    ref_text=seg.ref_text,
                    x_vector_only=seg.x_vector_only,
                    ref_key=ref.key if ref else None,
                )
            )
        return voices

    def _generate(
        self,
        model: SpeechModel,
        voice: Voice,
        language: str,
        prompt: Any,
        batch: list[Chunk],
        plan: JobPlan,
        seed: int,
    ) -> list[tuple[Chunk, str]]:
        frame_rate = model.sample_rate / model.frame_samples
        limits = self.config.limits
        budgets = [frame_budget(c.weight, frame_rate, limits) for c in batch]
        user_cap = plan.max_new_tokens
        if user_cap is not None:
            budgets = [max(1, min(b, user_cap - 1)) for b in budgets]
        wavs = model.generate(
            [c.text for c in batch],
            language=language,
            voice=voice,
            seed=seed,
            # qwen_tts keeps one frame fewer than it samples tokens: a step's residual codebooks are
            # predicted on the next step, so the last token never becomes audio.
            max_new_tokens=max(budgets) + 1,
            params=plan.sampling,
            clone_prompt=prompt,
        )
        failures = []
        for chunk, wav, budget in zip(batch, wavs, budgets, strict=True):
            frames = -(-len(wav) // model.frame_samples)
            reason = check_chunk(
                wav,
                model.sample_rate,
                text_weight=chunk.weight,
                frames=frames,
                budget_frames=budget,
                user_capped=user_cap is not None and budget == max(1, user_cap - 1),
                limits=limits,
            )
            if reason is None:
                chunk.audio = wav
            else:
                failures.append((chunk, reason))
        return failures

    def _gaps(self, plan: JobPlan, chunks: list[Chunk]) -> list[list[float | None]]:
        pause = {SENTENCE: self.config.sentence_pause_ms, CLAUSE: self.config.clause_pause_ms, FORCED: None}
        gaps: list[list[float | None]] = [[] for _ in plan.segments]
        for chunk, after in itertools.pairwise(chunks):
            if after.segment == chunk.segment:
                gaps[chunk.segment].append(pause[chunk.boundary])
        return gaps

    def _trimmed(self, plan: JobPlan, chunks: list[Chunk], sample_rate: int) -> list[list[np.ndarray]]:
        per_segment: list[list[np.ndarray]] = [[] for _ in plan.segments]
        for chunk in chunks:
            per_segment[chunk.segment].append(
                joiner.trim_edges(
                    chunk.audio,
                    sample_rate,
                    threshold_db=self.config.limits.silence_threshold_db,
                    pad_ms=self.config.edge_pad_ms,
                )
            )
        return per_segment

    @staticmethod
    def _failure_message(chunk: Chunk, total: int, plan: JobPlan, reason: str, attempts: int) -> str:
        segment = f"segment {chunk.segment + 1}, " if len(plan.segments) > 1 else ""
        return (
            f"chunk {chunk.index + 1} of {total} ({segment}characters {chunk.span[0]}-{chunk.span[1]}) "
            f"failed its quality check after {attempts} attempts: {reason}"
        )
