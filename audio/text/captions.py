"""Captions (SRT, WebVTT) of a job's spoken text, from its timeline. Pure functions on plain values.

Cue rules: a cue per sentence; a sentence that would run past `MAX_CUE_S` or two lines of `LINE_CHARS`
characters is cut at a clause break (`,;:` and their full-width forms), else between words, else between
characters (CJK); a podcast segment always starts a new cue and no cue spans two chunks. Times inside a chunk
are shared out by spoken weight (`spoken.spoken_weight`), so they are approximate within a chunk and exact at
its edges: a chunk's cues start where its audio starts and end where it ends (edge pads included).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from audio.text.splitter import split_sentences
from audio.text.spoken import spoken_weight

FORMATS = ("srt", "vtt")
MAX_CUE_S = 7.0
LINE_CHARS = 42  # columns; a CJK (wide) character takes two
MAX_LINES = 2

_CLAUSE_RE = re.compile(r"(?<=[,;:])\s+|(?<=[，、；：])")
_WORD_RE = re.compile(r"(?<=\s)(?=\S)")


@dataclass(frozen=True)
class TimedText:
    """One chunk of the timeline: its text and where its audio lies in the delivered track."""

    segment: int
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def wrap(text: str, width: int = LINE_CHARS) -> list[str]:
    """Greedy lines of at most `width` columns, broken at spaces; a word wider than a line (or CJK text
    without spaces) is broken between characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if _width(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for c in word:
            if _width(line + c) > width:
                lines.append(line)
                line = ""
            line += c
    if line:
        lines.append(line)
    return lines


def _pieces(text: str, seconds_per_weight: float) -> list[str]:
    """`text` cut into cue texts that fit: two lines and MAX_CUE_S each; their concatenation is `text`."""

    def fits(piece: str) -> bool:
        return len(wrap(piece)) <= MAX_LINES and spoken_weight(piece.strip()) * seconds_per_weight <= MAX_CUE_S

    if fits(text):
        return [text]
    for pattern in (_CLAUSE_RE, _WORD_RE, None):
        if pattern is None:
            cuts = list(range(1, len(text)))
        else:
            cuts = [m.start() for m in pattern.finditer(text) if 0 < m.start() < len(text)]
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        if len(parts) > 1:
            break
    else:  # a single character that does not fit: nothing to cut
        return [text]
    groups: list[str] = []
    for part in parts:
        if groups and fits(groups[-1] + part):
            groups[-1] += part
        else:
            groups.append(part)
    return [p for group in groups for p in (_pieces(group, seconds_per_weight) if len(groups) > 1 else [group])]


def cues(timeline: Sequence[TimedText]) -> list[Cue]:
    """The cues of a timeline (see the module doc for the rules)."""
    out: list[Cue] = []
    for entry in timeline:
        sentences = split_sentences(entry.text)
        total = sum(spoken_weight(s) for s in sentences)
        if total <= 0:
            continue  # a pause: nothing to caption
        duration_s = entry.end_s - entry.start_s
        pieces = [p.strip() for s in sentences for p in _pieces(s, duration_s / total)]
        pieces = [p for p in pieces if p]
        weights = [spoken_weight(p) for p in pieces]
        t, done = entry.start_s, 0.0
        for piece, weight in zip(pieces, weights, strict=True):
            done += weight
            end = entry.start_s + duration_s * done / sum(weights)
            out.append(Cue(t, end, tuple(wrap(piece))))
            t = end
    return out


def _stamp(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def render(cue_list: Sequence[Cue], fmt: str) -> str:
    """SRT (numbered cues, `00:00:01,500`) or WebVTT (a `WEBVTT` header, `00:00:01.500`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown captions format {fmt!r}: use one of {', '.join(FORMATS)}")
    blocks = [] if fmt == "srt" else ["WEBVTT"]
    separator = "," if fmt == "srt" else "."
    for i, cue in enumerate(cue_list, start=1):
        timing = f"{_stamp(cue.start_s, separator)} --> {_stamp(cue.end_s, separator)}"
        head = [str(i), timing] if fmt == "srt" else [timing]
        blocks.append("\n".join([*head, *cue.lines]))
    return "\n\n".join(blocks) + "\n"
