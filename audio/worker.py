"""One job's flow: validate → plan → generate → render (audio/render.py) → deliver, with its metadata
(audio/results.py); other actions are routed to the voice actions (audio/voices/actions.py) or the info
actions (audio/info.py).

A `Worker` holds what lives as long as the process (settings, the model cache, the voice store and prompt cache,
the S3 client). It raises the typed errors of `audio.errors`; the entry points' service
(audio/serving/service.py) alone turns them into the contract's error objects.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import soundfile as sf

from audio import catalog, info, render, results
from audio.errors import InputError, ModelError, WorkerUnusable
from audio.generator import Generator, GeneratorConfig, Synthesis
from audio.guard import prior_speech_s
from audio.lifecycle import unusable_reason
from audio.model_gate import gated
from audio.model_loader import ModelCache, download_hint, find_model_path
from audio.openai_compat import is_openai_job, to_job_input
from audio.output import encoders, joiner, postprocess
from audio.output.delivery import Deliverer
from audio.quality import QualityLimits
from audio.schema import INFO_ACTIONS, MIN_SAMPLE_RATE, VOICE_ACTIONS, JobPlan, SegmentPlan, parse_job, plan_job
from audio.settings import Settings
from audio.speech import SpeechModel
from audio.text import captions
from audio.voices.actions import BASE_MODELS, VoiceActions, VoiceModels
from audio.voices.cache import ClonePromptCache
from audio.voices.reference import FetchPolicy, Reference, decode_reference
from audio.voices.store import VoiceStore

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
STREAM_UNSUPPORTED = (
    "stream needs a streaming deployment (QWEN_TTS_STREAMING=true, or the HTTP mode): the whole result is returned"
)


def generator_config(settings: Settings) -> GeneratorConfig:
    return GeneratorConfig(
        max_batch=settings.max_batch,
        max_retries=settings.max_retries,
        chunk_target_chars=settings.chunk_target_chars,
        chunk_max_chars=settings.chunk_max_chars,
        crossfade_ms=settings.crossfade_ms,
        edge_pad_ms=settings.edge_pad_ms,
        sentence_pause_ms=settings.sentence_pause_ms,
        clause_pause_ms=settings.clause_pause_ms,
        guard=settings.guard,
        limits=QualityLimits(
            silence_threshold_db=settings.silence_threshold_db,
            min_s_per_char=settings.min_s_per_char,
            max_s_per_char=settings.max_s_per_char,
            slack_s=settings.duration_slack_s,
        ),
    )


def _warmup_reference() -> str:
    """Two seconds of a 220 Hz tone as base64 WAV: enough for a Base model's warm-up clone."""
    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(2 * rate) / rate)
    buf = io.BytesIO()
    sf.write(buf, tone, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def pause_total_s(plan: JobPlan) -> float:
    """The silences between a joined job's segments (the first segment's pause_ms is never played)."""
    return sum(s.pause_ms for s in plan.segments[1:]) / 1000.0 if plan.join else 0.0


def planned_output_s(plan: JobPlan) -> float:
    """The track a plan asks for, before any generation: its text at the languages' prior speaking rates
    (audio/guard.py) plus its pauses, stretched by its speed. `join: false` items count together: they are all
    held at once."""
    return (planned_speech_s(plan) + pause_total_s(plan)) / plan.speed


def planned_speech_s(plan: JobPlan) -> float:
    return sum(prior_speech_s(s.text, s.language) for s in plan.segments)


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        models: ModelCache | None = None,
        get_model: Callable[[str], SpeechModel] | None = None,
        fetch_policy: FetchPolicy | None = None,
    ):
        self.settings = settings
        self.models = models or ModelCache(settings)
        # Tests inject a resolver/connector here to reach a loopback server under a "public" name.
        self.fetch_policy = fetch_policy or FetchPolicy(allow_private=settings.allow_private_urls)
        self.voices = VoiceStore(
            settings.voice_dir, max_voices=settings.max_saved_voices, readonly=settings.voices_readonly
        )
        self.prompts = ClonePromptCache(settings.voice_cache, saved=self.voices)
        # Tests may wrap the real models (failure injection, call counting); production uses the cache.
        self.generator = Generator(
            gated(get_model or self.models.get, max_rows=settings.max_batch),
            generator_config(settings),
            reference_for=self._reference_for,
            prompts=self.prompts,
        )
        voice_models = VoiceModels(
            get=self.generator.get_model,
            base_models=self._base_models,
            speak=self._speak,
            model_dir=str(settings.model_dir),
        )
        self.voice_actions = VoiceActions(self.voices, self.prompts, voice_models, fetch_policy=self.fetch_policy)
        self.deliverer = Deliverer(settings.s3, settings.max_inline_bytes)
        self.started_at = time.time()
        self.startup_error: str | None = None  # why preload failed; then no job is synthesized
        self.unusable: str | None = None  # why a job left this worker unfit for more (then it asks to be replaced)

    def _reference_for(self, segment: SegmentPlan, sample_rate: int) -> Reference:
        if segment.saved_voice is not None:
            return self.voices.reference(segment.saved_voice, sample_rate)
        return decode_reference(segment.ref_audio, sample_rate, self.fetch_policy)

    def _base_models(self) -> list[str]:
        loaded = [n for n in self.models.loaded() if n in BASE_MODELS]
        present = [n for n in BASE_MODELS if find_model_path(catalog.MODELS[n], self.settings) is not None]
        return list(dict.fromkeys(loaded + present))

    def _speak(self, job_input: dict[str, Any]) -> tuple[np.ndarray, int]:
        """A synthesis job's chunks as one track at the model's rate (a designed voice's sample)."""
        plan = plan_job(parse_job(job_input), default_model=job_input["model"], max_chars=self.settings.max_chars)
        synthesis = self.generator.run(plan)
        return joiner.join(synthesis.chunks, [0] * len(synthesis.chunks), synthesis.crossfade), synthesis.sample_rate

    def _with_saved_voices(self, plan: JobPlan) -> JobPlan:
        """Each saved voice's transcript, mode and language filled in from the volume (checked before any GPU
        work: a missing or corrupt voice fails the job naming it)."""
        segments = []
        for seg in plan.segments:
            if seg.saved_voice is not None:
                saved = self.voices.get(seg.saved_voice)
                x_vector_only = seg.x_vector_only or saved.x_vector_only
                seg = dataclasses.replace(
                    seg,
                    ref_text=None if x_vector_only else saved.ref_text,
                    x_vector_only=x_vector_only,
                    language=saved.language if seg.language == "Auto" else seg.language,
                )
            segments.append(seg)
        return dataclasses.replace(plan, segments=segments)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def preload(self) -> None:
        """Load and warm the configured models before taking jobs; raises ModelError if one can't load."""
        for name in self.settings.preload:
            started = time.perf_counter()
            job: dict[str, Any] = {"model": name, "text": "Hello.", "seed": 0, "params": {"max_new_tokens": 4}}
            kind = catalog.MODELS[name].kind
            if kind == catalog.VOICE_DESIGN:
                job["instruct"] = "A clear, neutral voice."
            elif kind == catalog.BASE:
                job.update(ref_audio=_warmup_reference(), x_vector_only=True)
            plan = plan_job(parse_job(job), default_model=name, max_chars=self.settings.max_chars)
            sample_rate = self.generator.warm_up(plan)
            log.info("preloaded %s (sample rate %d) in %.1fs", name, sample_rate, time.perf_counter() - started)

    def note_failure(self, exc: BaseException) -> WorkerUnusable | None:
        """A job failed with `exc`: if it left the GPU or model unusable, this worker refuses further synthesis
        and the error to report is returned (else None: the failure was the job's own)."""
        reason = unusable_reason(exc)
        if reason is None:
            return None
        self.unusable = reason
        return WorkerUnusable(f"{reason}; this worker is being replaced: retry the job")

    def fail_startup(self, reason: str) -> None:
        """Preload failed: keep answering, every synthesis job with `model_unavailable` and this reason."""
        self.startup_error = reason

    # -- jobs -----------------------------------------------------------------------------------------------
    def handle(self, job_input: Any, job_id: str, on_progress: ProgressFn | None = None) -> dict[str, Any]:
        action = job_input.get("action", "synthesize") if isinstance(job_input, dict) else "synthesize"
        if action in VOICE_ACTIONS:
            return self.voice_actions.handle(job_input)
        if action != "synthesize":
            extra = set(job_input) - {"action"}
            if extra and action in INFO_ACTIONS:
                raise InputError(f"unknown field(s) for action {action}: {', '.join(sorted(extra))}")
            return self.info(action)
        plan = self.plan_synthesis(job_input)
        if plan.stream:
            plan = dataclasses.replace(plan, warnings=[*plan.warnings, STREAM_UNSUPPORTED])
        return self.synthesize(plan, job_id, on_progress)

    def plan_synthesis(self, job_input: Any, *, stream_default_format: str | None = None) -> JobPlan:
        """A synthesis job (plain or OpenAI-shaped) checked and planned, saved voices filled in. For a stream
        job whose output_format is not given, `stream_default_format` replaces the contract's wav. A worker
        whose preload failed refuses here (model_unavailable), whatever the entry point."""
        if self.startup_error is not None:
            raise ModelError(f"this worker could not start: {self.startup_error}")
        if self.unusable is not None:
            raise WorkerUnusable(f"{self.unusable} in an earlier job; this worker is being replaced: retry the job")
        speed = 1.0
        if is_openai_job(job_input):
            job_input, speed = to_job_input(job_input, self.settings.default_model)
        plan = plan_job(
            parse_job(job_input), default_model=self.settings.default_model, max_chars=self.settings.max_chars
        )
        if stream_default_format and plan.stream and job_input.get("output_format") is None:
            plan = dataclasses.replace(plan, output_format=stream_default_format)
        if plan.sample_rate is None and plan.output_format in encoders.G711_FORMATS:
            plan = dataclasses.replace(plan, sample_rate=encoders.G711_SAMPLE_RATE)
        return self._with_saved_voices(dataclasses.replace(plan, speed=speed))

    def check_synthesis(self, plan: JobPlan) -> None:
        """Fail before generating what can't be encoded, stretched or delivered: that would waste the GPU work."""
        self._check_planned_length(plan)
        encoders.check_encodable(plan.output_format, plan.sample_rate)
        postprocess.check_time_stretch(plan.speed)
        self.deliverer.check_mode(plan.delivery)
        self._check_clone_models(plan)

    def synthesize(self, plan: JobPlan, job_id: str, on_progress: ProgressFn | None = None) -> dict[str, Any]:
        self.check_synthesis(plan)
        self._check_inline_floor(plan)
        started = time.perf_counter()
        synthesis = self.generator.run(plan, on_progress=on_progress)
        timeline = None
        if plan.join:
            samples, sample_rate, audio, timed = render.track(synthesis, plan)
            result = self.deliverer.deliver(
                audio,
                fmt=plan.output_format,
                content_type=render.content_type(plan),
                job_id=job_id,
                mode=plan.delivery,
            )
            duration_s, size_bytes = len(samples) / sample_rate, len(audio)
            timeline = results.timeline_of(synthesis, plan, timed)
        else:
            result, sample_rate = self._deliver_items(synthesis, plan, job_id)
            duration_s = sum(item["metadata"]["duration_seconds"] for item in result["items"])
            size_bytes = sum(item["metadata"]["size_bytes"] for item in result["items"])
        elapsed = time.perf_counter() - started
        metadata = results.metadata(
            plan,
            synthesis,
            duration_s,
            sample_rate,
            size_bytes,
            elapsed,
            timeline=timeline,
            num_items=None if timeline is not None else len(result["items"]),
        )
        log.info(
            "job %s: %d segment(s), %d chunk(s), %.1fs audio in %.1fs (%d retries)",
            job_id,
            len(plan.segments),
            synthesis.num_chunks,
            duration_s,
            elapsed,
            synthesis.retries,
        )
        if plan.captions is not None and timeline is not None:
            result["captions"] = captions.render(captions.cues([t for t, _ in timeline]), plan.captions)
        return {**result, "metadata": metadata}

    def _deliver_items(self, synthesis: Synthesis, plan: JobPlan, job_id: str) -> tuple[dict[str, Any], int]:
        """`join: false`: each segment finished (resampled, levelled, encoded, timed, captioned) as a job of
        its own, then all delivered together. Returns `{"items": [...]}` and the output rate."""
        rendered = []
        for i in range(len(plan.segments)):
            alone, one = synthesis.only_segment(i), dataclasses.replace(plan, segments=[plan.segments[i]])
            samples, rate, audio, timed = render.track(alone, one)
            rendered.append((samples, rate, audio, results.timeline_of(alone, one, timed)))
        delivered = self.deliverer.deliver_items(
            [audio for _, _, audio, _ in rendered],
            fmt=plan.output_format,
            content_type=render.content_type(plan),
            job_id=job_id,
            mode=plan.delivery,
        )
        items = []
        for i, ((samples, rate, audio, timeline), out) in enumerate(zip(rendered, delivered, strict=True)):
            item: dict[str, Any] = dict(out)
            if plan.captions is not None:
                item["captions"] = captions.render(captions.cues([t for t, _ in timeline]), plan.captions)
            item["metadata"] = results.item_metadata(i, plan, synthesis, len(samples) / rate, len(audio), timeline)
            items.append(item)
        return {"items": items}, rendered[0][1]

    def _check_planned_length(self, plan: JobPlan) -> None:
        """Refuse a job whose track would be longer than QWEN_TTS_MAX_OUTPUT_SECONDS: the track and its copies
        (joining, resampling, encoding) are held in memory whole, so this cap is what bounds a job's memory.
        A few characters can ask for hours (many segments with long pauses, or speed 0.25)."""
        planned_s = planned_output_s(plan)
        limit_s = self.settings.max_output_s
        if planned_s > limit_s:
            raise InputError(
                f"this job would make about {planned_s:.0f} s of audio ({planned_speech_s(plan):.0f} s of speech, "
                f"{pause_total_s(plan):.0f} s of pauses, at speed {plan.speed:g}); this worker makes at most "
                f"{limit_s:.0f} s per job (QWEN_TTS_MAX_OUTPUT_SECONDS). Shorten the pauses or split the job."
            )

    def _check_inline_floor(self, plan: JobPlan) -> None:
        """A joined track's pauses are a floor on its length, so on an uncompressed format's size at the lowest
        rate it can have: an inline result they alone make too large fails now, not after it is generated and
        held in memory (a few segments with long pauses can ask for minutes of silence)."""
        per_sample = encoders.PCM_BYTES_PER_SAMPLE.get(plan.output_format)
        if per_sample is None or not plan.join:
            return
        rate = plan.sample_rate or MIN_SAMPLE_RATE
        floor_bytes = int(pause_total_s(plan) / plan.speed * rate) * per_sample
        self.deliverer.check_inline_floor(floor_bytes, plan.delivery)

    def _check_clone_models(self, plan: JobPlan) -> None:
        """voice_consistency "clone" needs the Base model a designed voice is cloned on: checked before any
        generation, whatever the job's length turns out to be in chunks, so the same job never fails late."""
        for variant in dict.fromkeys(s.clone_model for s in plan.segments if s.clone_model is not None):
            if find_model_path(variant, self.settings) is None and not self.settings.auto_download:
                raise ModelError(
                    f'voice_consistency "clone" keeps a designed voice by cloning it on {variant.name}, which is '
                    f"not in {self.settings.model_dir} or the Hugging Face caches. Download it to the network "
                    f'volume: {download_hint(variant, self.settings)}; or send "voice_consistency": "none"'
                )

    def info(self, action: str) -> dict[str, Any]:
        state = info.WorkerState(self.started_at, self.startup_error, self.unusable, self.deliverer.s3_configured)
        return info.answer(action, self.settings, self.models, state)
