"""The chunking generator: split a job's text, generate chunks in batches, check and retry, then join.

It knows models only through the engine seam (`audio.speech.SpeechModel`), so a test can wrap the real model to
inject failures. Each chunk samples from its own seed (job seed, chunk, attempt), so a retry draws a new sample
and, with the fast engine, a chunk's audio does not depend on what shares its batch. Invalid input never
reaches here; no sleeps, no silent drops: a chunk that still fails after its retries fails the job.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from audio.catalog import VOICE_DESIGN
from audio.errors import InputError, SynthesisError
from audio.guard import BatchGuard, GuardLimits, RateModel, band_failure, guarded_budget, longest_internal_silence_s
from audio.output import joiner
from audio.quality import QualityLimits, check_chunk, frame_budget
from audio.schema import JobPlan, SegmentPlan
from audio.speech import ChunkRequest, SpeechModel, Voice, derive_seed
from audio.text.splitter import CLAUSE, FORCED, SENTENCE, split_chunks
from audio.text.spoken import is_speakable, spoken_weight
from audio.voices.cache import ClonePromptCache
from audio.voices.reference import Reference, decode_reference, from_generated

log = logging.getLogger(__name__)


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
    guard: GuardLimits = field(default_factory=GuardLimits)


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
    # Its quality report: why each failed attempt failed, and the kept attempt's seed, length and expected length.
    failures: list[str] = field(default_factory=list)
    seed: int | None = None
    duration_s: float | None = None
    expected_s: float | None = None

    def report(self) -> dict[str, Any]:
        return {
            "chunk": self.index,
            "segment": self.segment,
            "attempts": len(self.failures) + 1,
            "failures": list(self.failures),
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "expected_s": None if self.expected_s is None else round(self.expected_s, 3),
            "seed": self.seed,
        }


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
    # Per segment, between its chunks j and j+1: ms of silence, or None for a crossfade (a forced cut).
    gaps_ms: list[list[float | None]] | None = None
    spans: list[list[tuple[int, int]]] | None = None  # per segment, each chunk's character range in its text
    models: list[str] = field(default_factory=list)  # the models that generated, a designed voice's clone too
    quality: list[dict[str, Any]] = field(default_factory=list)  # each spoken chunk's report (Chunk.report)

    def only_segment(self, index: int) -> Synthesis:
        """Segment `index` alone, as if it were the whole job (one item of a `join: false` job)."""
        return replace(
            self,
            chunks=[self.chunks[index]],
            pauses_ms=[0],
            gaps_ms=None if self.gaps_ms is None else [self.gaps_ms[index]],
            spans=None if self.spans is None else [self.spans[index]],
        )


class ChunkListener(Protocol):
    """Who takes a job's chunks as they are done (streaming): `chunk` once per chunk with its audio set, a batch's
    chunks in text order as it passes its checks (the first speakable chunk alone, in the first batch); a chunk
    with nothing to say as soon as the job's sample rate is known, before any generation. Across batches the
    order follows the work (model by model), not the text: the listener restores text order. With
    `live_piece_frames` set and an engine that streams, the first batch's chunk also arrives in `piece`s while it
    is generated (its check then runs at its end, and a failure fails the job: no retry of audio already out)."""

    live_piece_frames: int | Sequence[int] | None

    def piece(self, chunk: Chunk, samples: np.ndarray) -> None: ...

    def chunk(self, chunk: Chunk) -> None: ...


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


def _batches(chunks: list[Chunk], max_batch: int) -> list[list[Chunk]]:
    # Similar lengths share a batch, so short chunks don't wait on a long one's extra frames.
    ordered = sorted(chunks, key=lambda c: (c.weight, c.index))
    return [ordered[i : i + max_batch] for i in range(0, len(ordered), max_batch)]


def _text_order_batches(chunks: list[Chunk], max_batch: int, *, first_alone: bool) -> list[list[Chunk]]:
    """Streaming's batches of one group: in text order (the listener gets audio as early as it can play), the
    first chunk alone when `first_alone` (a fast first audio)."""
    ordered = sorted(chunks, key=lambda c: c.index)
    head = ordered[:1] if first_alone else []
    rest = ordered[len(head) :]
    return ([head] if head else []) + [rest[i : i + max_batch] for i in range(0, len(rest), max_batch)]


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

    def run(
        self,
        plan: JobPlan,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        listener: ChunkListener | None = None,
    ) -> Synthesis:
        """`on_progress(done, total)` after each batch (it may raise to stop the job there: cancellation);
        `listener` gets the chunks as they are done (see ChunkListener)."""
        seed = plan.seed if plan.seed is not None else secrets.randbelow(2**32)
        chunks: list[Chunk] = []
        for i, segment in enumerate(plan.segments):
            chunks.extend(_chunks_for(i, segment, self.config, len(chunks)))

        done = sum(not c.speakable for c in chunks)
        retries = 0
        model_time_s = 0.0
        batch_no = 0
        sample_rate = None
        warnings: list[str] = []
        hits: list[bool] = []
        references: dict[tuple, Reference] = {}
        rates = RateModel()  # speaking rates measured on this job's accepted chunks, per model, voice and language
        # A designed voice kept across chunks (voice_consistency "clone"): its later chunks run after all else,
        # cloned from its first chunk's audio (ICL, that chunk's text as ref_text) on the Base model of its size.
        designed = self._designed_voices(plan, chunks)
        if plan.voice_consistency != "clone":
            warnings.extend(self._drift_warning(plan, group) for group in designed)
            designed = []
        clone_of = {c.index: group[0] for group in designed for c in group[1:]}
        work = self._batches_of(plan, [c for c in chunks if c.index not in clone_of])
        work += self._batches_of(plan, [c for c in chunks if c.index in clone_of], clone_of)
        for model_name, groups in work:
            # One model at a time, fetched when its work starts and dropped when it ends: under a cap of one
            # loaded model the cache can free it before the next model loads.
            model = self.get_model(model_name)
            if sample_rate is None:
                sample_rate = model.sample_rate
                for chunk in chunks:
                    if not chunk.speakable:  # "…", "—", an emoji: a pause as long as after a sentence
                        chunk.audio = np.zeros(round(sample_rate * self.config.sentence_pause_ms / 1000.0), np.float32)
                        if listener is not None:
                            listener.chunk(chunk)
            elif model.sample_rate != sample_rate:  # pragma: no cover - every 12Hz model decodes at one rate
                raise SynthesisError(f"model {model_name} speaks at {model.sample_rate} Hz, not {sample_rate}")
            voices = self._voices(plan, sorted({c.segment for g in groups for c in g}), model, references, warnings)
            prompts: dict[tuple, Any] = {}  # a clone voice's prompt is fetched once per job, whatever the language
            for members in groups:
                first = clone_of.get(members[0].index)
                voice = voices[members[0].segment] if first is None else self._clone_voice(first, model, warnings)
                language = plan.segments[members[0].segment].language
                rate_key = (model_name, voice.key(), language)  # whose speaking rate the guard measures
                prompt = None
                if voice.ref_audio is not None:
                    if voice.key() not in prompts:
                        prompts[voice.key()], hit = self.prompts.get(model_name, model, voice)
                        hits.append(hit)
                    prompt = prompts[voice.key()]
                if listener is None:
                    batches = _batches(members, self.config.max_batch)
                else:
                    batches = _text_order_batches(members, self.config.max_batch, first_alone=batch_no == 0)
                for batch in batches:
                    pending = batch
                    for attempt in range(self.config.max_retries + 1):
                        started = time.perf_counter()
                        live = listener if batch_no == 0 and attempt == 0 else None
                        streamed = live is not None and bool(live.live_piece_frames) and model.capabilities.streams
                        failures = self._generate(
                            model, voice, language, prompt, pending, plan, seed, attempt, rates, rate_key, live
                        )
                        model_time_s += time.perf_counter() - started
                        if not failures:
                            break
                        if attempt == self.config.max_retries or streamed:
                            chunk, reason = failures[0]
                            message = self._failure_message(chunk, len(chunks), plan, reason, attempt + 1)
                            if streamed:  # its audio is already out: a retry would play a second take after it
                                message += (
                                    " (it was streamed as it was made, so it could not be retried; run the job again)"
                                )
                            raise SynthesisError(message)
                        retries += len(failures)
                        log.warning("retrying %d chunk(s) of batch %d: %s", len(failures), batch_no, failures[0][1])
                        pending = [c for c, _ in failures]
                    for chunk in batch:
                        rates.accept(rate_key, chunk.weight, chunk.duration_s)
                    batch_no += 1
                    done += len(batch)
                    if listener is not None:
                        for chunk in sorted(batch, key=lambda c: c.index):
                            listener.chunk(chunk)
                    if on_progress is not None:
                        on_progress(done, len(chunks))
            del model, prompts, prompt

        if sample_rate is None:  # plan_job refuses such a job; this guards direct callers
            raise InputError("the text has nothing to speak")
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
            warnings=list(dict.fromkeys(warnings)),
            voice_cache=None if not hits else ("hit" if all(hits) else "miss"),
            models=list(dict.fromkeys(plan.models + [name for name, _ in work])),
            quality=[c.report() for c in chunks if c.speakable],
        )

    def _batches_of(
        self, plan: JobPlan, chunks: list[Chunk], clone_of: dict[int, Chunk] | None = None
    ) -> list[tuple[str, list[list[Chunk]]]]:
        """The job's work by model, in order of first use: per model, its chunks grouped by voice and language.

        Chunks that share model, voice and language are batched together, across segments too; a model's
        groups all run before the next model's, so each model is needed for one stretch of the job only.
        A chunk with nothing to say goes to no model. A chunk in `clone_of` runs on its segment's
        `clone_model`, in the voice of the designed chunk it maps to."""
        clone_of = clone_of or {}
        groups: dict[str, dict[tuple, list[Chunk]]] = {}
        for chunk in chunks:
            if not chunk.speakable:
                continue
            seg = plan.segments[chunk.segment]
            if chunk.index in clone_of:
                key: tuple = ("clone of chunk", clone_of[chunk.index].index)
                groups.setdefault(seg.clone_model.name, {}).setdefault((key, seg.language), []).append(chunk)
                continue
            # Segments with the same voice fields share a group (a reference is known by its source here).
            key = (seg.speaker, seg.instruct, seg.ref_audio, seg.saved_voice, seg.ref_text, seg.x_vector_only)
            groups.setdefault(seg.model.name, {}).setdefault((key, seg.language), []).append(chunk)
        return [(name, list(by_voice.values())) for name, by_voice in groups.items()]

    @staticmethod
    def _designed_voices(plan: JobPlan, chunks: list[Chunk]) -> list[list[Chunk]]:
        """The chunks of each VoiceDesign voice spoken in more than one chunk, in text order. A voice is a model
        and a description: segments that share them share the voice."""
        groups: dict[tuple, list[Chunk]] = {}
        for chunk in chunks:
            seg = plan.segments[chunk.segment]
            if seg.model.kind == VOICE_DESIGN and chunk.speakable:
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

    @staticmethod
    def _clone_voice(first: Chunk, model: SpeechModel, warnings: list[str]) -> Voice:
        """The voice of a designed voice's later chunks: its first chunk's audio (made at this job's one rate)
        and text, an ICL reference for `model`."""
        ref = from_generated(first.audio, model.sample_rate)
        warnings.extend(ref.warnings)
        return Voice(ref_audio=(ref.samples, ref.sample_rate), ref_text=first.text, ref_key=ref.key)

    def warm_up(self, plan: JobPlan) -> int:
        """One short generation of each segment's text, with no quality gate: a few frames of warm-up prove the
        model loads and runs, not that they sound like speech. Returns the model's sample rate."""
        sample_rate = 0
        for i, segment in enumerate(plan.segments):
            model = self.get_model(segment.model.name)
            voice = self._voices(plan, [i], model, {}, [])[i]
            prompt = model.clone_prompt(voice) if voice.ref_audio is not None else None
            request = ChunkRequest(segment.text, plan.max_new_tokens or 3, plan.seed or 0)
            wavs = model.generate(
                [request], language=segment.language, voice=voice, params=plan.sampling, clone_prompt=prompt
            )
            if len(wavs) != 1:  # pragma: no cover - an engine contract break
                raise SynthesisError(f"warm-up of {segment.model.name} returned {len(wavs)} outputs for 1 text")
            sample_rate = model.sample_rate
        return sample_rate

    def _voices(
        self,
        plan: JobPlan,
        segments: list[int],
        model: SpeechModel,
        references: dict[tuple, Reference],
        warnings: list[str],
    ) -> dict[int, Voice]:
        """The voice of each of these segments, for `model`: references decoded at its rate, once per job."""
        voices = {}
        for i in segments:
            seg = plan.segments[i]
            ref = None
            if seg.ref_audio is not None or seg.saved_voice is not None:
                rate = model.sample_rate
                source = (seg.ref_audio, seg.saved_voice, rate)
                if source not in references:
                    references[source] = self.reference_for(seg, rate)
                    warnings.extend(references[source].warnings)
                ref = references[source]
            voices[i] = Voice(
                speaker=seg.speaker,
                instruct=seg.instruct,
                ref_audio=(ref.samples, ref.sample_rate) if ref else None,
                ref_text=seg.ref_text,
                x_vector_only=seg.x_vector_only,
                ref_key=ref.key if ref else None,
                saved_voice=seg.saved_voice,
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
        attempt: int,
        rates: RateModel,
        rate_key: tuple,
        live: ChunkListener | None = None,
    ) -> list[tuple[Chunk, str]]:
        frame_rate = model.sample_rate / model.frame_samples
        limits, guard_limits = self.config.limits, self.config.guard
        expected = [rates.expected_s(rate_key, language, c.weight) for c in batch]
        budgets = [frame_budget(c.weight, frame_rate, limits) for c in batch]
        user_cap = plan.max_new_tokens
        if user_cap is not None:
            budgets = [max(1, min(b, user_cap - 1)) for b in budgets]
        elif guard_limits.enabled and rates.known(rate_key):  # a caller's own cap is theirs to set, not tightened
            budgets = [guarded_budget(b, e, frame_rate, guard_limits) for b, e in zip(budgets, expected, strict=True)]
        requests = [
            ChunkRequest(c.text, budget, derive_seed(seed, c.index, attempt))
            for c, budget in zip(batch, budgets, strict=True)
        ]
        kwargs = {"language": language, "voice": voice, "params": plan.sampling, "clone_prompt": prompt}
        guard = BatchGuard(len(batch), frame_rate, guard_limits) if guard_limits.enabled else None
        if guard is not None:
            kwargs["guard"] = guard
        if live is not None and live.live_piece_frames and model.capabilities.streams:
            wavs = self._live(model, requests, batch, live, kwargs)
        else:
            wavs = model.generate(requests, **kwargs)
        failures = []
        for row, (chunk, wav, request) in enumerate(zip(batch, wavs, requests, strict=True)):
            frames = -(-len(wav) // model.frame_samples)
            user_capped = user_cap is not None and request.budget_frames == max(1, user_cap - 1)
            reason = (guard.reasons.get(row) if guard is not None else None) or check_chunk(
                wav,
                model.sample_rate,
                text_weight=chunk.weight,
                frames=frames,
                budget_frames=request.budget_frames,
                user_capped=user_capped,
                limits=limits,
            )
            duration_s = len(wav) / model.sample_rate
            if reason is None and guard is not None:
                measured = rates.known(rate_key)
                reason = self._guard_failure(wav, model.sample_rate, duration_s, expected[row], user_capped, measured)
            chunk.seed, chunk.duration_s, chunk.expected_s = request.seed, duration_s, expected[row]
            if reason is None:
                chunk.audio = wav
            else:
                chunk.failures.append(reason)
                failures.append((chunk, reason))
        return failures

    def _guard_failure(
        self, wav: np.ndarray, sample_rate: int, duration_s: float, expected_s: float, user_capped: bool, measured: bool
    ) -> str | None:
        """The guard's checks on a generated chunk: its length against the expected one (not when the caller's
        own frame cap cut it), and no long silence inside it."""
        guard = self.config.guard
        reason = None if user_capped else band_failure(duration_s, expected_s, guard, measured=measured)
        if reason is None:
            silence_s = longest_internal_silence_s(wav, sample_rate, self.config.limits.silence_threshold_db)
            if silence_s > guard.max_silence_s:
                reason = f"a silence of {silence_s:.1f} s inside the chunk"
        return reason

    @staticmethod
    def _live(model: Any, requests: list[ChunkRequest], batch: list[Chunk], live: ChunkListener, kwargs: dict) -> list:
        pieces: list[list[np.ndarray]] = [[] for _ in batch]
        for piece in model.stream(requests, piece_frames=live.live_piece_frames, **kwargs):
            pieces[piece.row].append(piece.samples)
            if piece.samples.size:
                live.piece(batch[piece.row], piece.samples)
        return [np.concatenate(p) if p else np.zeros(0, dtype=np.float32) for p in pieces]

    def pause_after(self, chunk: Chunk) -> float | None:
        """Ms of silence between this chunk and the next of its segment, by why it ends; None: a crossfade."""
        pause = {SENTENCE: self.config.sentence_pause_ms, CLAUSE: self.config.clause_pause_ms, FORCED: None}
        return pause[chunk.boundary]

    def _gaps(self, plan: JobPlan, chunks: list[Chunk]) -> list[list[float | None]]:
        gaps: list[list[float | None]] = [[] for _ in plan.segments]
        for chunk, after in itertools.pairwise(chunks):
            if after.segment == chunk.segment:
                gaps[chunk.segment].append(self.pause_after(chunk))
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
