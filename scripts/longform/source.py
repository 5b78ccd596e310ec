"""Inputs as chapters of segments: plain text or Markdown (chapters from headings or a regex), EPUB (the spine in
order, titles from the table of contents), or a podcast's `segments` JSON (chapters where a segment names one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.longform.errors import UsageError

MARKDOWN_SUFFIXES = (".md", ".markdown")
EPUB_BLOCKS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "blockquote", "pre", "dd", "dt", "figcaption")
# Client-side fields of a podcast segment, never sent to the worker.
CLIENT_SEGMENT_FIELDS = ("chapter",)

_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_RULE_RE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_IMAGE_RE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK_RE = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_EMPHASIS_RE = re.compile(r"(\*{1,3}|_{1,3}|`+)(?=\S)(.+?)(?<=\S)\1")
_LIST_RE = re.compile(r"^\s*(?:[-*+]|>+)\s+")


@dataclass(frozen=True)
class Segment:
    """A paragraph of a book, or a podcast line with its own job fields (voice, language, pause_ms...)."""

    text: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chapter:
    title: str
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Source:
    """What to speak: chapters in order, and a podcast file's top-level job fields (applied to every part)."""

    chapters: tuple[Chapter, ...]
    kind: str  # "book" | "podcast"
    job_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def chars(self) -> int:
        return sum(len(s.text) for c in self.chapters for s in c.segments)


def read_source(path: Path, *, chapter_regex: str | None = None) -> Source:
    """The input file as chapters: `.epub`, `.json` (podcast), `.md` / `.markdown`, anything else plain text."""
    suffix = path.suffix.lower()
    if suffix == ".epub":
        return read_epub(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if suffix == ".json":
        return parse_podcast(raw, name=str(path))
    return parse_text(raw, markdown=suffix in MARKDOWN_SUFFIXES, chapter_regex=chapter_regex)


def _spoken_title(title: str) -> str:
    """A heading read aloud as a sentence of its own (so it gets a sentence pause, not a run-on)."""
    return title if not title or title[-1] in ".!?…。！？:;" else f"{title}."


def _chapter(title: str, paragraphs: list[str]) -> Chapter:
    spoken = [_spoken_title(title)] if title else []
    return Chapter(title, tuple(Segment(p) for p in spoken + paragraphs))


def clean_markdown(line: str) -> str:
    """Markdown inline markup removed: images dropped, links to their text, emphasis and code marks, list and
    quote markers."""
    line = _IMAGE_RE.sub("", line)
    line = _LINK_RE.sub(r"\1", line)
    line = _LIST_RE.sub("", line)
    return _EMPHASIS_RE.sub(r"\2", line)


def parse_text(text: str, *, markdown: bool, chapter_regex: str | None = None) -> Source:
    """Paragraphs are separated by blank lines (a paragraph's lines are joined by spaces). A chapter starts at
    each line matching `chapter_regex` or, without one, at each Markdown heading (in a Markdown file); its
    line is the chapter's title, spoken first. Text before the first heading is an untitled chapter."""
    try:
        pattern = re.compile(chapter_regex) if chapter_regex else None
    except re.error as exc:
        raise UsageError(f"--chapter-regex is not a valid regular expression: {exc}") from None
    chapters: list[Chapter] = []
    title: str | None = None
    paragraphs: list[str] = []
    lines: list[str] = []
    fenced = False

    def end_paragraph() -> None:
        if lines:
            paragraphs.append(" ".join(lines))
            lines.clear()

    for raw in text.splitlines():
        if markdown and _FENCE_RE.match(raw):
            fenced = not fenced  # code blocks are not read aloud
            end_paragraph()
            continue
        if fenced:
            continue
        heading = None
        if pattern is not None:
            heading = raw.strip() if pattern.search(raw) else None
        elif markdown and (m := _HEADING_RE.match(raw)):
            heading = clean_markdown(m.group(2)).strip()
        if heading is not None:
            end_paragraph()
            if paragraphs or title:
                chapters.append(_chapter(title or "", paragraphs))
            title, paragraphs = heading, []
            continue
        line = raw.strip()
        if markdown:
            line = "" if _RULE_RE.match(line) else clean_markdown(line).strip()
        if line:
            lines.append(line)
        else:
            end_paragraph()
    end_paragraph()
    if paragraphs or title:
        chapters.append(_chapter(title or "", paragraphs))
    source = Source(tuple(chapters), "book")
    if source.chars == 0:
        raise UsageError("the input has no text to speak")
    return source


def parse_podcast(raw: str, *, name: str = "the input") -> Source:
    """`{"segments": [...], ...fields for every part}` or a bare list of segments. A segment is
    `{text, voice?, language?, instruct?, model?, pause_ms?, ...}` as the worker takes it, plus `chapter`: a
    title that starts a new chapter at that segment (the client's; never sent)."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{name} is not valid JSON: {exc}") from None
    job_fields: dict[str, Any] = {}
    if isinstance(data, dict):
        job_fields = {k: v for k, v in data.items() if k not in ("segments", "text")}
        data = data.get("segments")
    if not isinstance(data, list) or not data:
        raise UsageError(f'{name}: expected {{"segments": [...]}} or a list of segments, each {{"text": ...}}')
    chapters: list[Chapter] = []
    title = ""
    segments: list[Segment] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise UsageError(f"{name}: segment {i} needs a non-empty text")
        if "chapter" in item and (segments or i > 0):
            chapters.append(Chapter(title, tuple(segments)))
            segments = []
        if "chapter" in item:
            title = str(item["chapter"])
        fields = {k: v for k, v in item.items() if k != "text" and k not in CLIENT_SEGMENT_FIELDS}
        segments.append(Segment(item["text"].strip(), fields))
    chapters.append(Chapter(title, tuple(segments)))
    return Source(tuple(chapters), "podcast", job_fields)


def _block_text(element: Any) -> str:
    return " ".join(element.text_content().split())


def read_epub(path: Path) -> Source:
    """An EPUB's documents in spine order, one chapter each (empty ones skipped); the title from the table of
    contents, else the document's first heading. Paragraphs are its block elements' text, outermost first."""
    import ebooklib
    from ebooklib import epub
    from lxml import html

    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": False})
    except Exception as exc:  # ebooklib raises plain Exceptions, zipfile/lxml their own
        raise UsageError(f"cannot read the EPUB {path}: {type(exc).__name__}: {exc}") from None
    titles: dict[str, str] = {}

    def walk(entries: Any) -> None:
        for entry in entries:
            if isinstance(entry, tuple):
                section, children = entry
                walk([section])
                walk(children)
            elif getattr(entry, "href", None):
                titles.setdefault(entry.href.split("#")[0], entry.title or "")

    walk(book.toc)
    chapters: list[Chapter] = []
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT or isinstance(item, epub.EpubNav):
            continue  # the EPUB 3 navigation document is the table of contents, not text
        tree = html.fromstring(item.get_content())
        blocks = [
            el
            for el in tree.iter(*EPUB_BLOCKS)
            if not any(a.tag in EPUB_BLOCKS for a in el.iterancestors())  # a <p> inside <blockquote> once
        ]
        paragraphs = [t for t in map(_block_text, blocks) if t]
        if not paragraphs:
            continue
        title = titles.get(item.get_name(), "")
        if not title and blocks[0].tag in ("h1", "h2", "h3"):
            title = _block_text(blocks[0])
        if title and paragraphs[0].rstrip(".") == title.rstrip("."):
            paragraphs = paragraphs[1:]  # the heading is the title, spoken once
        chapters.append(_chapter(title, paragraphs))
    source = Source(tuple(chapters), "book")
    if source.chars == 0:
        raise UsageError(f"the EPUB {path} has no text to speak")
    return source
