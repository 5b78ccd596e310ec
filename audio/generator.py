"""The chunking generator: split a job's text, generate chunks in batches, check and retry, then join.

It knows models only through the engine seam (`audio.speech.SpeechModel`), so a test can wrap the real model to
inject failures. Each chunk samples from its own seed (job seed, chunk, attempt), so a retry draws a new sample
and, with the fast engine, a chunk's audio does not depend on what shares its batch. Invalid input never
reaches here; no sleeps, no silent drops: a chunk that still fails after its retries fails the job.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from audio import joiner, postprocess
from audio.catalog import VOICE_DESIGN
from audio.errors import SynthesisError
from audio.quality import QualityLimits, check_chunk, frame_budget
from audio.reference import Reference, decode_reference, from_generated
from audio.schema import JobPlan, SegmentPlan
from audio.speech import ChunkRequest, SpeechModel, Voice
from audio.splitter import split_text, text_weight
from audio.voice_cache import ClonePromptCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratorConfig:
    max_batch: int = 8
    max_retries: int = 2
    chunk_target_chars: int = 150
    chunk_max_chars: int = 250
    crossfade_ms: float = 40.0
    edge_pad_ms: float = 60.0
    limits: QualityLimits = field(default_factory=QualityLimits)


@dataclass
class Chunk:
    index: int  # position in the job
    segment: int
    text: str
    span: tuple[int, int]  # character range in its segment's text, for error messages
    weight: float
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
    warnings: list[str] = field(default_factory=list)  # e.g. a long reference cut
    voice_cache: str | None = None  # "hit" when no clone prompt was built, "miss" when one was; None: no clone
    models: list[str] = field(default_factory=list)  # the models that generated, a designed voice's clone too

    def only_segment(self, index: int) -> Synthesis:
        """Segment `index` alone, as if it were the whole job (one item of a `join: false` job)."""
        return replace(self, chunks=[self.chunks[index]], pauses_ms=[0])


def _chunks_for(segment_index: int, segment: SegmentPlan, config: GeneratorConfig, start: int) -> list[Chunk]:
    chunks = []
    pos = 0
    for text in split_text(segment.text, config.chunk_target_chars, config.chunk_max_chars):
        begin = segment.text.index(text, pos)
        pos = begin + len(text)
        chunks.append(Chunk(start + len(chunks), segment_index, text, (begin, pos), text_weight(text)))
    return chunks


def _derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _batches(chunks: list[Chunk], max_batch: int) -> list[list[Chunk]]:
    # Similar lengths share a batch, so short chunks don't wait on a long one's extra frames.
    ordered = sorted(chunks, key=lambda c: (c.weight, c.index))
    return [ordered[i : i + max_batch] for i in range(0, len(ordered), max_batch)]


def _decode_inline(segment: SegmentPlan, sample_rate: int) -> Reference:
    return decode_reference(segment.ref_audio, sample_rate)


class Generator:
    def __init__(
        self,
        get_model: Callable[[str], SpeechModel],
        config: GeneratorConfig,
        *,
        reference_for: Callable[[SegmentPlan, int], Reference] = _decode_inline,
        prompts: ClonePromptCache | None = None,
    ):
        self.get_model = get_model
        self.config = config
        # A segment's reference at a model's rate: the worker's applies its URL policy and saved voices.
        self.reference_for = reference_for
        self.prompts = prompts or ClonePromptCache(capacity=0)

    def run(self, plan: JobPlan, *, on_progress: Callable[[int, int], None] | None = None) -> Synthesis:
        seed = plan.seed if plan.seed is not None else secrets.randbelow(2**32)
        chunks: list[Chunk] = []
        for i, segment in enumerate(plan.segments):
            chunks.extend(_chunks_for(i, segment, self.config, len(chunks)))

        voices, warnings = self._voices(plan)
        cache_hits: list[bool] = []
        clones: dict[int, tuple[str, Voice]] = {}
        work = self._work(plan, chunks, voices, cache_hits, clones, warnings)
        done = 0
        retries = 0
        model_time_s = 0.0
        for batch_no, (model, voice, language, prompt, batch) in enumerate(work):
            pending = batch
            for attempt in range(self.config.max_retries + 1):
                started = time.perf_counter()
                failures = self._generate(model, voice, language, prompt, pending, plan, seed, attempt)
                model_time_s += time.perf_counter() - started
                if not failures:
                    break
                if attempt == self.config.max_retries:
                    chunk, reason = failures[0]
                    raise SynthesisError(self._failure_message(chunk, len(chunks), plan, reason, attempt + 1))
                retries += len(failures)
                log.warning("retrying %d chunk(s) of batch %d: %s", len(failures), batch_no, failures[0][1])
                pending = [c for c, _ in failures]
            done += len(batch)
            if on_progress is not None:
                on_progress(done, len(chunks))

        sample_rate = model.sample_rate  # every model of a job speaks at one rate (the 12 Hz family's)
        return Synthesis(
            chunks=self._trimmed(plan, chunks, sample_rate),
            pauses_ms=[seg.pause_ms for seg in plan.segments],
            crossfade=int(sample_rate * self.config.crossfade_ms / 1000.0),
            sample_rate=sample_rate,
            num_chunks=len(chunks),
            retries=retries,
            seed=seed,
            model_time_s=model_time_s,
            warnings=warnings,
            voice_cache=None if not cache_hits else ("hit" if all(cache_hits) else "miss"),
            models=list(dict.fromkeys([seg.model.name for seg in plan.segments] + [m for m, _ in clones.values()])),
        )

    def _work(
        self,
        plan: JobPlan,
        chunks: list[Chunk],
        voices: list[Voice],
        hits: list[bool],
        clones: dict[int, tuple[str, Voice]],
        warnings: list[str],
    ) -> Iterator[tuple]:
        """The job's generate calls (see `_batches_of`), in order; `hits` and `clones` are filled in as it goes.

        Lazy: with voice_consistency "clone" the chunks after a designed voice's first are batched only once
        everything else, that first chunk included, has been generated (the caller's loop finishes each call
        before taking the next): they are cloned from its audio (ICL, its text as ref_text) on the Base model
        of its size."""
        designed = self._designed_voices(plan, chunks)
        if plan.voice_consistency != "clone":
            warnings.extend(self._drift_warning(plan, group) for group in designed)
            designed = []
        later = {c.index for group in designed for c in group[1:]}
        work, pass_hits = self._batches_of(plan, [c for c in chunks if c.index not in later], voices)
        hits.extend(pass_hits)
        yield from work
        if designed:
            made_at = {c.index: model.sample_rate for model, _, _, _, batch in work for c in batch}
            clones.update(self._clone_voices(plan, designed, made_at, warnings))
            work, pass_hits = self._batches_of(plan, [c for c in chunks if c.index in later], voices, clones)
            hits.extend(pass_hits)
            yield from work

    def _batches_of(
        self,
        plan: JobPlan,
        chunks: list[Chunk],
        voices: list[Voice],
        clones: dict[int, tuple[str, Voice]] | None = None,
    ) -> tuple[list[tuple], list[bool]]:
        """(model, voice, language, clone prompt, chunks) per generate call: chunks that share model, voice
        and language are batched together, across segments too. Also whether each clone prompt was cached.
        `clones` puts a chunk, by index, on another model and voice (a designed voice's clone)."""
        clones = clones or {}
        groups: dict[tuple, list[Chunk]] = {}
        chosen: dict[tuple, Voice] = {}
        for chunk in chunks:
            seg = plan.segments[chunk.segment]
            name, voice = clones.get(chunk.index, (seg.model.name, voices[chunk.segment]))
            chosen[name, voice.key(), seg.language] = voice
            groups.setdefault((name, voice.key(), seg.language), []).append(chunk)
        work = []
        prompts: dict[tuple, Any] = {}  # a clone voice's prompt is fetched once per job, whatever the language
        hits = []
        for (model_name, voice_key, language), members in groups.items():
            model = self.get_model(model_name)
            voice = chosen[model_name, voice_key, language]
            prompt = None
            if voice.ref_audio is not None:
                if (model_name, voice_key) not in prompts:
                    prompts[model_name, voice_key], hit = self.prompts.get(model_name, model, voice)
                    hits.append(hit)
                prompt = prompts[model_name, voice_key]
            work.extend((model, voice, language, prompt, batch) for batch in _batches(members, self.config.max_batch))
        return work, hits

    @staticmethod
    def _designed_voices(plan: JobPlan, chunks: list[Chunk]) -> list[list[Chunk]]:
        """The chunks of each VoiceDesign voice spoken in more than one chunk, in text order. A voice is a model
        and a description: segments that share them share the voice."""
        groups: dict[tuple, list[Chunk]] = {}
        for chunk in chunks:
            seg = plan.segments[chunk.segment]
            if seg.model.kind == VOICE_DESIGN:
                groups.setdefault((seg.model.name, seg.instruct), []).append(chunk)
        return [group for group in groups.values() if len(group) > 1]

    @staticmethod
    def _drift_warning(plan: JobPlan, group: list[Chunk]) -> str:
        model = plan.segments[group[0].segment].model
        segments = sorted({c.segment + 1 for c in group})
        if len(plan.segments) == 1:
            where = "the text"
        else:
            where = ("segments " if len(segments) > 1 else "segment ") + ", ".join(map(str, segments))
        return (
            f"{model.name} designs the voice anew for each chunk, so the {len(group)} chunks of {where} may drift "
            f'between voices; "voice_consistency": "clone" designs the first chunk and clones it for the rest '
            f"(on {model.size}-Base)"
        )

    def _clone_voices(
        self, plan: JobPlan, designed: list[list[Chunk]], made_at: dict[int, int], warnings: list[str]
    ) -> dict[int, tuple[str, Voice]]:
        """Each designed voice's later chunks → (its Base model, the first chunk's audio and text as an ICL voice)."""
        clones = {}
        for first, *rest in designed:
            seg = plan.segments[first.segment]
            rate = self.get_model(seg.clone_model.name).sample_rate
            ref = from_generated(postprocess.resample(first.audio, made_at[first.index], rate), rate)
            warnings.extend(ref.warnings)
            voice = Voice(ref_audio=(ref.samples, ref.sample_rate), ref_text=first.text, ref_key=ref.key)
            clones.update((chunk.index, (seg.clone_model.name, voice)) for chunk in rest)
        return clones

    def _voices(self, plan: JobPlan) -> tuple[list[Voice], list[str]]:
        references: dict[tuple, Reference] = {}
        voices = []
        warnings: list[str] = []
        for seg in plan.segments:
            ref = None
            if seg.ref_audio is not None or seg.saved_voice is not None:
                rate = self.get_model(seg.model.name).sample_rate
                source = (seg.ref_audio, seg.saved_voice, rate)
                if source not in references:
                    references[source] = self.reference_for(seg, rate)
                    warnings.extend(references[source].warnings)
                ref = references[source]
            voices.append(
                Voice(
                    speaker=seg.speaker,
                    instruct=seg.instruct,
                    ref_audio=(ref.samples, ref.sample_rate) if ref else None,
                    ref_text=seg.ref_text,
                    x_vector_only=seg.x_vector_only,
                    ref_key=ref.key if ref else None,
                    saved_voice=seg.saved_voice,
                )
            )
        return voices, warnings

    def _generate(
        self,
        model: SpeechModel,
        voice: Voice,
        language: str,
        prompt: Any,
        batch: list[Chunk],
        plan: JobPlan,
        seed: int,
        attempt: int,
    ) -> list[tuple[Chunk, str]]:
        frame_rate = model.sample_rate / model.frame_samples
        limits = self.config.limits
        budgets = [frame_budget(c.weight, frame_rate, limits) for c in batch]
        user_cap = plan.max_new_tokens
        if user_cap is not None:
            budgets = [max(1, min(b, user_cap - 1)) for b in budgets]
        requests = [
            ChunkRequest(c.text, budget, _derive_seed(seed, c.index, attempt))
            for c, budget in zip(batch, budgets, strict=True)
        ]
        wavs = model.generate(requests, language=language, voice=voice, params=plan.sampling, clone_prompt=prompt)
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
