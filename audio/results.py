"""A result's metadata: the job-level `metadata` object (also the streamed job's last item's), each chunk's place
in the timeline, and a `join: false` item's own metadata.
"""

from __future__ import annotations

from typing import Any

from audio.generator import Synthesis
from audio.output import encoders
from audio.schema import JobPlan
from audio.text import captions

Timeline = list[tuple[captions.TimedText, tuple[int, int]]]


def timeline_entries(timeline: Timeline, segment: int | None = None) -> list:
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


def timeline_of(synthesis: Synthesis, plan: JobPlan, timed: list[list[tuple[float, float]]]) -> Timeline:
    """One entry per chunk, in order: its text and time, and its character range in its segment's text."""
    out = []
    spans = synthesis.spans or [[] for _ in timed]
    for i, (seg_times, seg_spans) in enumerate(zip(timed, spans, strict=True)):
        text = plan.segments[i].text
        for (start_s, end_s), (a, b) in zip(seg_times, seg_spans, strict=True):
            out.append((captions.TimedText(i, start_s, end_s, text[a:b]), (a, b)))
    return out


def metadata(
    plan: JobPlan,
    synthesis: Synthesis,
    duration_s: float,
    sample_rate: int,
    size_bytes: int,
    elapsed_s: float,
    *,
    timeline: Timeline | None = None,
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
    if synthesis.quality:
        metadata["quality"] = {
            "chunks": synthesis.quality,
            "retried_chunks": sum(1 for c in synthesis.quality if c["failures"]),
            "failed_chunks": 0,  # a chunk that still fails after its retries fails the job (synthesis_failed)
        }
    if timeline is not None:
        metadata["timeline"] = timeline_entries(timeline)
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


def item_metadata(
    segment: int, plan: JobPlan, synthesis: Synthesis, duration_s: float, size_bytes: int, timeline: Timeline
) -> dict[str, Any]:
    """The metadata of a `join: false` item: one segment, timed on its own."""
    return {
        "segment": segment,
        "text_chars": len(plan.segments[segment].text),
        "num_chunks": len(synthesis.chunks[segment]),
        "duration_seconds": round(duration_s, 3),
        "size_bytes": size_bytes,
        "timeline": timeline_entries(timeline, segment=segment),
    }
