"""Chapters cut into parts, each one job under a character budget: at chapter, then paragraph (segment), then
sentence boundaries. A part never spans two chapters, so editing a chapter changes only its own parts, and a
chapter starts where a part starts (its marker is exact). Each part's seed comes from the job seed and the
part's key, never from its position in the whole book.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from audio.text.splitter import split_text
from scripts.longform.source import Segment, Source

# About 7 minutes of English speech: at the worker's real-time speed or better it finishes far inside RunPod's
# default 600 s execution timeout, and it is an eighth of a job's 50,000 characters.
DEFAULT_PART_CHARS = 6000
MIN_PART_CHARS = 20


@dataclass(frozen=True)
class Pauses:
    """Silence placed by the client between parts, and asked of the worker between a part's segments."""

    chapter_ms: int = 2000
    paragraph_ms: int = 600
    sentence_ms: int = 300  # a paragraph cut across parts: the worker's own pause after a sentence


@dataclass(frozen=True)
class Part:
    """One job: consecutive segments of one chapter."""

    key: str  # "c0003-p002": chapter 3, its part 2
    chapter: int
    chapter_title: str
    first_in_chapter: bool
    segments: tuple[dict[str, Any], ...]  # as the worker takes them: {"text", ...fields}
    pause_before_ms: int  # silence before this part in the joined track (0 for the first)
    seed: int

    @property
    def chars(self) -> int:
        return sum(len(s["text"]) for s in self.segments)


def derive_seed(job_seed: int, key: str) -> int:
    """A part's seed: stable for its key, independent of the other parts."""
    digest = hashlib.sha256(f"{job_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _pieces(segment: Segment, part_chars: int) -> list[str]:
    """A segment's text, cut at sentences (else clauses, else words) into pieces of at most part_chars."""
    if len(segment.text) <= part_chars:
        return [segment.text]
    return [p.strip() for p in split_text(segment.text, target_chars=part_chars, max_chars=part_chars) if p.strip()]


def plan_parts(source: Source, *, part_chars: int, job_seed: int, pauses: Pauses) -> list[Part]:
    """The parts of `source` in order (see the module doc)."""
    if part_chars < MIN_PART_CHARS:
        raise ValueError(f"part_chars must be at least {MIN_PART_CHARS}, got {part_chars}")
    parts: list[Part] = []
    for c, chapter in enumerate(source.chapters):
        # (worker segment, pause before it: None = the paragraph's own / the worker's default)
        pieces: list[tuple[dict[str, Any], int | None]] = []
        for segment in chapter.segments:
            own = segment.fields.get("pause_ms")
            for j, text in enumerate(_pieces(segment, part_chars)):
                fields = dict(segment.fields)
                if j > 0:
                    fields["pause_ms"] = pauses.sentence_ms  # the rest of a cut paragraph
                pieces.append(({"text": text, **fields}, own if j == 0 else pauses.sentence_ms))
        groups: list[list[tuple[dict[str, Any], int | None]]] = []
        size = 0
        for piece in pieces:
            n = len(piece[0]["text"])
            if not groups or size + n > part_chars:
                groups.append([])
                size = 0
            groups[-1].append(piece)
            size += n
        for p, group in enumerate(groups):
            key = f"c{c:04d}-p{p:03d}"
            if not parts:
                pause = 0
            elif p == 0:
                pause = pauses.chapter_ms
            else:
                first_pause = group[0][1]
                pause = first_pause if first_pause is not None else pauses.paragraph_ms
            parts.append(
                Part(
                    key=key,
                    chapter=c,
                    chapter_title=chapter.title,
                    first_in_chapter=p == 0,
                    segments=tuple(seg for seg, _ in group),
                    pause_before_ms=int(pause),
                    seed=derive_seed(job_seed, key),
                )
            )
    return parts


# Fields of a job the client decides for every part: its own seed and lossless format, one joined track, no stream;
# captions come from the timeline, which every joined result carries.
CLIENT_FIELDS = ("text", "segments", "seed", "output_format", "join", "stream", "captions")


def part_input(part: Part, fields: dict[str, Any], *, paragraph_pause_ms: int, transfer_format: str) -> dict[str, Any]:
    """The part's job input: the run's fields (voice, model, params...) under its segments, seed and format."""
    return {
        "pause_ms": paragraph_pause_ms,
        **{k: v for k, v in fields.items() if k not in CLIENT_FIELDS},
        "segments": [dict(s) for s in part.segments],
        "seed": part.seed,
        "output_format": transfer_format,
    }


def input_hash(job_input: dict[str, Any]) -> str:
    """What identifies a part's result: the hash of its whole job input (text, voice, seed, settings)."""
    return hashlib.sha256(json.dumps(job_input, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
