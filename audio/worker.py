"""One worker's job flow: validate → generate → level/resample → join → encode → deliver, plus info actions.

A `Worker` holds what lives as long as the process (settings, the model cache, the S3 client). It raises the
typed errors of `audio.errors`; `handler.py` alone turns them into the contract's error objects.
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

from audio import captions, catalog, encoders, joiner, postprocess
from audio.delivery import Deliverer
from audio.errors import InputError, ModelError, WorkerUnusable
from audio.generator import Generator, GeneratorConfig, Synthesis
from audio.lifecycle import unusable_reason
from audio.model_gate import gated
from audio.model_loader import ModelCache, download_hint, find_model_path, versions
from audio.openai_compat import is_openai_job, to_job_input
from audio.quality import QualityLimits
from audio.reference import FetchPolicy, Reference, decode_reference
from audio.schema import (
    INFO_ACTIONS,
    VOICE_ACTIONS,
    JobPlan,
    SegmentPlan,
    parse_job,
    plan_job,
)
from audio.settings import Settings
from audio.speech import SpeechModel
from audio.voice_actions import VoiceActions
from audio.voice_cache import ClonePromptCache
from audio.voice_store import VoiceStore

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
TRUE_PEAK_DBTP = -1.0  # the ceiling under a loudness target (EBU R128 / streaming practice)
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


def _timeline_entries(timeline: list[tuple[captions.TimedText, tuple[int, int]]], segment: int | None = None) -> list:
    """`metadata.timeline`; `segment` names the segment of a `join: false` item (timed on its own)."""
    return [
        {
            "segment": t.segment if segment is None else segment,
            "start_s": round(t.start_s, 3),
            "end_s": round(t.end_s, 3),
            "chars": list(span),
        }
        for t, span in timeline
    ]


def gap_samples(synthesis: Synthesis) -> list[list[int]] | None:
    """`joiner` gaps between chunks of each segment: zeros at the model's rate, or joiner.CROSSFADE."""
    if synthesis.gaps_ms is None:
        return None
    rate = synthesis.sample_rate
    return [[joiner.CROSSFADE if ms is None else round(rate * ms / 1000.0) for ms in seg] for seg in synthesis.gaps_ms]


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
        self.voice_actions = VoiceActions(self)
        self.generator = Generator(
            gated(get_model or self.models.get, max_rows=settings.max_batch),
            generator_config(settings),
            reference_for=self._reference_for,
            prompts=self.prompts,
        )
        self.deliverer = Deliverer(settings.s3, settings.max_inline_bytes)
        self.started_at = time.time()
        self.startup_error: str | None = None  # why preload failed; then no job is synthesized
        self.unusable: str | None = None  # why a job left this worker unfit for more (then it asks to be replaced)

    def _reference_for(self, segment: SegmentPlan, sample_rate: int) -> Reference:
        if segment.saved_voice is not None:
            return self.voices.reference(segment.saved_voice, sample_rate)
        return decode_reference(segment.ref_audio, sample_rate, self.fetch_policy)

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
        encoders.check_encodable(plan.output_format, plan.sample_rate)
        postprocess.check_time_stretch(plan.speed)
        self.deliverer.check_mode(plan.delivery)
        self._check_clone_models(plan)

    def synthesize(self, plan: JobPlan, job_id: str, on_progress: ProgressFn | None = None) -> dict[str, Any]:
        self.check_synthesis(plan)
        started = time.perf_counter()
        synthesis = self.generator.run(plan, on_progress=on_progress)
        timeline = None
        if plan.join:
            samples, sample_rate, audio, timed = self._render(synthesis, plan)
            result = self.deliverer.deliver(
                audio,
                fmt=plan.output_format,
                content_type=self.content_type(plan),
                job_id=job_id,
                mode=plan.delivery,
            )
            duration_s, size_bytes = len(samples) / sample_rate, len(audio)
            timeline = self.timeline_of(synthesis, plan, timed)
        else:
            result, sample_rate = self._deliver_items(synthesis, plan, job_id)
            duration_s = sum(item["metadata"]["duration_seconds"] for item in result["items"])
            size_bytes = sum(item["metadata"]["size_bytes"] for item in result["items"])
        elapsed = time.perf_counter() - started
        metadata = self.metadata(
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
            samples, rate, audio, timed = self._render(alone, one)
            rendered.append((samples, rate, audio, self.timeline_of(alone, one, timed)))
        delivered = self.deliverer.deliver_items(
            [audio for _, _, audio, _ in rendered],
            fmt=plan.output_format,
            content_type=self.content_type(plan),
            job_id=job_id,
            mode=plan.delivery,
        )
        items = []
        for i, ((samples, rate, audio, timeline), out) in enumerate(zip(rendered, delivered, strict=True)):
            item: dict[str, Any] = dict(out)
            if plan.captions is not None:
                item["captions"] = captions.render(captions.cues([t for t, _ in timeline]), plan.captions)
            item["metadata"] = {
                "segment": i,
                "text_chars": len(plan.segments[i].text),
                "num_chunks": len(synthesis.chunks[i]),
                "duration_seconds": round(len(samples) / rate, 3),
                "size_bytes": len(audio),
                "timeline": _timeline_entries(timeline, segment=i),
            }
            items.append(item)
        return {"items": items}, rendered[0][1]

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

    @staticmethod
    def timeline_of(
        synthesis: Synthesis, plan: JobPlan, timed: list[list[tuple[float, float]]]
    ) -> list[tuple[captions.TimedText, tuple[int, int]]]:
        """One entry per chunk, in order: its text and time, and its character range in its segment's text."""
        out = []
        spans = synthesis.spans or [[] for _ in timed]
        for i, (seg_times, seg_spans) in enumerate(zip(timed, spans, strict=True)):
            text = plan.segments[i].text
            for (start_s, end_s), (a, b) in zip(seg_times, seg_spans, strict=True):
                out.append((captions.TimedText(i, start_s, end_s, text[a:b]), (a, b)))
        return out

    @staticmethod
    def content_type(plan: JobPlan) -> str:
        return encoders.WAV_CONTENT_TYPE if plan.wav_header else encoders.CONTENT_TYPES[plan.output_format]

    @staticmethod
    def metadata(
        plan: JobPlan,
        synthesis: Synthesis,
        duration_s: float,
        sample_rate: int,
        size_bytes: int,
        elapsed_s: float,
        *,
        timeline: list[tuple[captions.TimedText, tuple[int, int]]] | None = None,
        num_items: int | None = None,
    ) -> dict[str, Any]:
        """A job's `metadata` (the streamed job's last item carries the same)."""
        models = synthesis.models or plan.models
        metadata: dict[str, Any] = {
            "duration_seconds": round(duration_s, 3),
            "sample_rate": encoders.encoded_rate(plan.output_format, sample_rate),
            "format": plan.output_format,
            "model": models[0] if len(models) == 1 else ", ".join(models),
            "num_segments": len(plan.segments),
            "num_chunks": synthesis.num_chunks,
            "retries": synthesis.retries,
            "size_bytes": size_bytes,
            "generation_time_seconds": round(elapsed_s, 3),
            "realtime_factor": round(duration_s / elapsed_s, 3) if elapsed_s > 0 else None,
            "seed": synthesis.seed,
        }
        if timeline is not None:
            metadata["timeline"] = _timeline_entries(timeline)
        if num_items is not None:
            metadata["num_items"] = num_items
        if plan.speed != 1.0:
            metadata["speed"] = plan.speed
        if synthesis.voice_cache is not None:
            metadata["voice_cache"] = synthesis.voice_cache
        warnings = plan.warnings + synthesis.warnings
        if warnings:
            metadata["warnings"] = warnings
        return metadata

    @staticmethod
    def finish(
        synthesis: Synthesis, plan: JobPlan, *, true_peak_dbtp: float = TRUE_PEAK_DBTP
    ) -> tuple[np.ndarray, int]:
        """One track at the output rate (see `finish_timed`)."""
        samples, rate, _ = Worker.finish_timed(synthesis, plan, true_peak_dbtp=true_peak_dbtp)
        return samples, rate

    @staticmethod
    def finish_timed(
        synthesis: Synthesis, plan: JobPlan, *, true_peak_dbtp: float = TRUE_PEAK_DBTP
    ) -> tuple[np.ndarray, int, list[list[tuple[float, float]]]]:
        """One track at the output rate: chunks of a segment joined with their pauses (a crossfade at a forced
        cut), segments levelled (so speakers match) and joined with their pauses, then the tempo change. Built
        in one pass when nothing per segment is needed. Also where each chunk lies in it: (start_s, end_s) per
        chunk per segment, in the delivered track's time."""
        model_rate = synthesis.sample_rate
        rate = plan.sample_rate or model_rate
        pauses = [int(rate * ms / 1000.0) for ms in synthesis.pauses_ms]
        gaps = gap_samples(synthesis)
        lengths = [[len(c) for c in seg] for seg in synthesis.chunks]
        if rate == model_rate and plan.loudness_lufs is None:
            joined = joiner.join(synthesis.chunks, pauses, synthesis.crossfade, gaps)
            spans_s = [
                [(a / rate, b / rate) for a, b in seg]
                for seg in joiner.layout(lengths, pauses, synthesis.crossfade, gaps)
            ]
        else:
            segments = []
            inner = []
            for i, chunks in enumerate(synthesis.chunks):
                seg_gaps = [gaps[i]] if gaps is not None else None
                audio = joiner.join([chunks], [0], synthesis.crossfade, seg_gaps)
                inner.append(joiner.layout([lengths[i]], [0], synthesis.crossfade, seg_gaps)[0])
                audio = postprocess.resample(audio, model_rate, rate)
                if plan.loudness_lufs is not None:
                    audio = postprocess.normalize_loudness(
                        audio, rate, plan.loudness_lufs, true_peak_dbtp=true_peak_dbtp
                    )
                segments.append([audio])
            joined = joiner.join(segments, pauses, crossfade=0)
            starts = [seg[0][0] / rate for seg in joiner.layout([[len(s[0])] for s in segments], pauses, 0)]
            spans_s = [
                [(start + a / model_rate, start + b / model_rate) for a, b in seg]
                for start, seg in zip(starts, inner, strict=True)
            ]
        stretched = postprocess.time_stretch(joined, rate, plan.speed)
        # Times scale with the tempo change; measured on the lengths, so the last chunk ends with the track.
        scale = len(stretched) / len(joined) if len(joined) else 1.0
        end_s = len(stretched) / rate
        timed = [[(min(a * scale, end_s), min(b * scale, end_s)) for a, b in seg] for seg in spans_s]
        return stretched, rate, timed

    def _render(
        self, synthesis: Synthesis, plan: JobPlan
    ) -> tuple[np.ndarray, int, bytes, list[list[tuple[float, float]]]]:
        """Finished samples, their rate, the encoded bytes and each chunk's place in time.

        Under a loudness target the true-peak ceiling holds for what a listener decodes: a lossy codec
        overshoots the peaks it is given (about 1 dB for aac and opus), so the decoded stream is measured and
        the levelling redone under a ceiling lowered by the overshoot (the limiter keeps the loudness)."""
        ceiling = TRUE_PEAK_DBTP
        for _ in range(3):
            samples, rate, timed = self.finish_timed(synthesis, plan, true_peak_dbtp=ceiling)
            audio = encoders.encode(samples, rate, plan.output_format, wav_header=plan.wav_header)
            if plan.loudness_lufs is None or plan.output_format not in encoders.LOSSY_FORMATS:
                break
            decoded, decoded_rate = encoders.decode(audio, plan.output_format)
            over_db = postprocess.true_peak_dbtp(decoded, decoded_rate) - TRUE_PEAK_DBTP
            if over_db <= 0:
                break
            ceiling -= over_db + 0.1
        return samples, rate, audio, timed

    # -- info actions -----------------------------------------------------------------------------------------
    def info(self, action: str) -> dict[str, Any]:
        if action == "health":
            if self.startup_error is not None:
                return {
                    "status": "unavailable",
                    "startup_error": self.startup_error,
                    "loaded_models": self.models.loaded(),
                    "model_loads": self.models.loads(),
                    "default_model": self.settings.default_model,
                    "uptime_seconds": round(time.time() - self.started_at, 1),
                    "versions": versions(),
                }
            runtime = self.models.runtime
            unusable = {"status": "unusable", "unusable_reason": self.unusable} if self.unusable else {}
            return {
                "status": "ok",
                "device": runtime.device,
                "dtype": runtime.dtype,
                "attention": runtime.attention,
                "engine": self.settings.engine,
                "loaded_models": self.models.loaded(),
                "model_loads": self.models.loads(),
                "default_model": self.settings.default_model,
                "output_formats": encoders.available_formats(),
                "s3_configured": self.deliverer.s3_configured,
                "uptime_seconds": round(time.time() - self.started_at, 1),
                "versions": versions(),
                **unusable,
            }
        if action == "voices":
            return {
                "custom_voice": [
                    {"name": s.name, "native_language": s.native_language, "description": s.description}
                    for s in catalog.SPEAKERS.values()
                ],
                "aliases": catalog.VOICE_ALIASES,
                "default": catalog.DEFAULT_VOICE,
                "voice_design": "describe the voice in `instruct` (model 1.7B-VoiceDesign)",
                "base": "clone from `ref_audio` + `ref_text`, or `x_vector_only: true` (models 1.7B-Base, 0.6B-Base)",
            }
        if action == "languages":
            return {"languages": list(catalog.LANGUAGES), "codes": catalog.LANGUAGE_CODES}
        if action == "models":
            return {
                "models": [
                    {
                        "name": v.name,
                        "id": v.repo_id,
                        "kind": v.kind,
                        "size": v.size,
                        "instruct": v.honours_instruct,
                        "present": find_model_path(v, self.settings) is not None,
                        "loaded": v.name in self.models.loaded(),
                    }
                    for v in catalog.MODELS.values()
                ],
                "default": self.settings.default_model,
            }
        raise InputError(f"unknown action {action!r}: use synthesize, {', '.join(INFO_ACTIONS + VOICE_ACTIONS)}")
