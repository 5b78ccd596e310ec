"""Text splitting for TTS: turns one request's text into sentence-aware chunks the model speaks one by one.

Owns the size measure (`text_weight`), sentence segmentation (`split_sentences`) and chunk packing
(`split_text`) for Latin, Chinese, Japanese, Korean and mixed text. Pure: stdlib only, no model import.

Invariant: every chunk is `text[a:b].strip()` for consecutive, non-overlapping spans that cover the whole
input, so no character is ever altered, reordered or dropped (only whitespace at the cuts disappears).
"""

from __future__ import annotations

import re
import string
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate, pairwise

# A CJK character is roughly one spoken syllable, and a syllable of English speech takes about 3 letters of
# text (~5.7 characters per word incl. the space, ~1.5 syllables per word, and Mandarin/Japanese syllables
# are spoken a little faster). 3.0 also keeps every weight an exact integer-valued float.
CJK_WEIGHT: float = 3.0

# Chinese, Japanese and Korean letters plus their full-width forms and punctuation. U+3000 (ideographic
# space) is left out on purpose: it is whitespace (str.isspace) and whitespace weighs 1.
_CJK = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u2e80-\u2fdf"  # CJK / Kangxi radicals
    "\u2ff0-\u2fff"  # ideographic description
    "\u3001-\u4dbf"  # CJK punctuation, kana, bopomofo, compat jamo, enclosed, ext. A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\ua960-\ua97f"  # Hangul Jamo ext. A
    "\uac00-\ud7ff"  # Hangul syllables, Jamo ext. B
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\ufe30-\ufe4f"  # CJK compatibility forms
    "\uff01-\uffef"  # half-width and full-width forms
    "\U0001b000-\U0001b16f"  # kana supplement / extensions
    "\U00020000-\U0002fa1f"  # ext. B-F, compatibility supplement
    "\U00030000-\U000323af"  # ext. G-H
)
_CJK_RUN_RE = re.compile(f"[{_CJK}]+")
_CJK_CHAR_RE = re.compile(f"[{_CJK}]")

_CLOSERS = "\"'”’)]}»」』》）】〉〕｝〗〙〛"
_OPENERS = "\"'“‘([{«「『《（【〈〔｛〖〘〚"
# Terminators that end a sentence whatever follows (CJK writing puts no space after them).
_CJK_TERMINATORS = "。！？；｡"
_LATIN_TERMINATORS = ".!?…"

_CLOSER_SET = frozenset(_CLOSERS)
_C = re.escape(_CLOSERS)
# Candidate sentence ends, one per match (the regex rejects most non-ends so Python sees few):
#  cjk:  a run holding a CJK terminator, with its closers; no space needed after it.
#  lat:  a `.!?…` run, spaced dots included (". . ."; atomic, so a failed match never retries inside it),
#        then closers (also a German "“" and a French-spaced " »" when a space or the end follows), only where
#        whitespace and then anything but an ASCII lowercase letter, the end of text, or a CJK character comes
#        next ("3.5", "e.g. this" don't).
#  para: a blank line; item: a line break opening a list item (so an unpunctuated item doesn't swallow the
#        next one).
_BOUNDARY_RE = re.compile(
    rf"(?=[{_LATIN_TERMINATORS}{_CJK_TERMINATORS}\n])"  # cheap first-character filter: halves the scan time
    rf"(?:(?P<cjk>[{_LATIN_TERMINATORS}]*[{_CJK_TERMINATORS}][{_LATIN_TERMINATORS}{_CJK_TERMINATORS}]*[{_C}]*)"
    rf"|(?P<lat>(?>[{_LATIN_TERMINATORS}]+(?: [{_LATIN_TERMINATORS}]+)*))"
    rf"(?>(?:[{_C}]|“(?=\s|\Z)|[ \u00a0\u202f][»›](?=\s|\Z))*)(?=\s+(?![\sa-z])|\s*\Z|[{_CJK}])"
    r"|(?P<para>\n[^\S\n]*\n)"
    r"|(?P<item>\n)(?=[^\S\n]*(?:[-*•‣·]|\d{1,3}[.)]|[A-Za-z][.)])\s))"
)
_SPACE_RE = re.compile(r"\s*")
_WORD_SPACES = (" ", "\n", "\t", "\r", "\xa0", "\u3000")
# Characters of the word an abbreviation check looks at: ASCII and Latin-1/Extended letters, digits, dots.
_TAIL_CHARS = frozenset(string.ascii_letters + string.digits + "." + "".join(map(chr, range(0xC0, 0x250))))
_URL_PUNCT = frozenset("/:?=&#%+~_-@")
_ROMAN_RE = re.compile(r"[IVXivx]{1,4}")
_DOTTED_RE = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")
_INITIAL_RE = re.compile(r"[A-Z]\.")
_TIMEZONE_RE = re.compile(r"[A-Z]{2,5}\b")

# Never end a sentence: a name or number always follows them. Matched case-insensitively but only when
# written with a capital (so "15 ms." still ends a sentence).
_TITLES = frozenset(
    {
        *("dr", "mr", "mrs", "ms", "mx", "prof", "st", "mt", "ft", "sr", "rev", "fr", "gen", "col", "capt"),
        *("cpt", "lt", "sgt", "cmdr", "hon", "gov", "sen", "rep", "pres", "supt", "messrs", "mme", "mlle"),
        *("fig", "figs", "vol", "vols"),
        *("sra", "srta", "sres", "dra", "lic", "ing", "arq", "avv", "dott", "hr", "hrn", "mons"),
    }
)
# After a dotted-capital abbreviation ("U.S.", "E.U."), a sentence ends only when one of these words follows
# ("I live in the U.S. How about you?" ends; "the U.S. Government" does not).
_SENTENCE_STARTERS = frozenset(
    {
        *("i", "we", "you", "he", "she", "it", "they", "the", "a", "an", "this", "that", "these", "those"),
        *("there", "then", "how", "what", "why", "when", "where", "who", "which", "please", "but", "and", "so"),
        *("now", "yes", "no", "my", "our", "your", "his", "her", "their", "its", "if", "in", "on", "at"),
    }
)
_WORD_RE = re.compile(r"[^\W\d_]+")
# "vom 12. Juni": a day's ordinal before a month name (German writes dates so) is not a sentence end.
_MONTHS = frozenset(
    {
        *("januar", "jänner", "februar", "märz", "april", "mai", "juni", "juli", "august", "september"),
        *("oktober", "november", "dezember"),
    }
)
# Never end a sentence, in any case.
_NEVER_FINAL = frozenset({"e.g", "i.e", "vs", "cf", "viz", "approx", "incl", "esp"})
# Never end a sentence when a number follows: "No. 5", "Jan. 5", "pp. 10".
_NUMBER_ABBREVIATIONS = frozenset(
    {
        *("no", "nos", "nr", "pp", "ch", "sec"),
        *("jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"),
    }
)

# Weaker breaks for an over-long sentence, strongest first. ASCII punctuation needs whitespace (or CJK)
# after it so `10:30`, `https://` and `1,000` stay whole; full-width punctuation breaks on its own.
# Each entry: (pattern, cut at match start?) — whitespace cuts at its start, punctuation after itself.
_BREAK_LEVELS = (
    (re.compile(rf"[;:][{_C}]*(?=\s|[{_CJK}])|[；：][{_C}]*"), False),
    (re.compile(rf",[{_C}]*(?=\s|[{_CJK}])|[，、][{_C}]*"), False),
    (re.compile(r"\s+"), True),
)
_BREAK_KINDS = ("clause", "clause", "forced")
# A hard cut never lands right before punctuation or a closer, nor right after an opener.
_NO_CUT_BEFORE = frozenset(_CLOSERS + _CJK_TERMINATORS + _LATIN_TERMINATORS + ",;:，、；：")
_NO_CUT_AFTER = frozenset(_OPENERS)
_URL_SEPARATORS = "/?&=#_-.@|+~"
_HARD_HINT_RE = re.compile(f"[{_CJK}{re.escape(_URL_SEPARATORS)}]")
_ZWJ = "\u200d"
_TITLE_MARKS = (("《", "》"), ("〈", "〉"))
_BULLETS = "•⁃‣◦∙"
# The marker opening a list item: "1.", "1.)", "1)", "a.", optionally after a bullet.
_LIST_MARKER_RE = re.compile(rf"[{_BULLETS}]?\s*(?:(?P<num>\d{{1,3}})|(?P<letter>[a-z]))(?:\.\)?|\))(?=\s)")


def text_weight(text: str) -> float:
    """Size of `text` for chunking: 1 per Latin character or whitespace, CJK_WEIGHT per CJK character."""
    cjk = sum(m.end() - m.start() for m in _CJK_RUN_RE.finditer(text))
    return len(text) + cjk * (CJK_WEIGHT - 1)


def split_sentences(text: str) -> list[str]:
    """Sentence units of `text`, stripped, in order, without packing or length limits."""
    return [text[a:b] for a, b in _sentence_spans(text)]


# Why a chunk ends, which decides the pause after it: a sentence end, a clause break (`;:,` and their
# full-width forms), or a forced cut inside a clause (at whitespace or between characters).
SENTENCE = "sentence"
CLAUSE = "clause"
FORCED = "forced"


@dataclass(frozen=True)
class ChunkSpan:
    start: int  # text[start:end] is the chunk
    end: int
    boundary: str  # SENTENCE | CLAUSE | FORCED: why the chunk ends (the last one ends with its text: SENTENCE)


def split_text(text: str, target_chars: int = 150, max_chars: int = 250) -> list[str]:
    """Chunks ready for TTS: whole sentences packed up to `target_chars` of weight, none over `max_chars`.

    A sentence heavier than `max_chars` is cut at its weakest remaining break (`;:`, then `,`, then
    whitespace); only a run without whitespace (CJK without punctuation, a giant URL) is cut between
    characters. Weights are measured with `text_weight`.
    """
    return [text[c.start : c.end] for c in split_chunks(text, target_chars, max_chars)]


def split_chunks(text: str, target_chars: int = 150, max_chars: int = 250) -> list[ChunkSpan]:
    """`split_text`'s chunks as spans of `text`, each with the kind of break it ends at."""
    if target_chars < 1 or max_chars < target_chars:
        raise ValueError(f"need 1 <= target_chars <= max_chars, got {target_chars} and {max_chars}")
    pre = _prefix_weights(text)
    pieces: list[tuple[int, int, str]] = []
    for a, b in _sentence_spans(text):
        if pre[b] - pre[a] <= max_chars:
            pieces.append((a, b, SENTENCE))
        else:
            _cut(text, pre, a, b, 0, target_chars, max_chars, pieces, SENTENCE)
    return [ChunkSpan(a, b, kind) for a, b, kind in _pack(pieces, pre, target_chars)]


def _prefix_weights(text: str) -> list[float]:
    weights = [1.0] * len(text)
    for m in _CJK_RUN_RE.finditer(text):
        weights[m.start() : m.end()] = [CJK_WEIGHT] * (m.end() - m.start())
    return list(accumulate(weights, initial=0.0))


def _strip_span(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    n = len(text)
    cuts = [0]
    for m in _BOUNDARY_RE.finditer(text):
        kind, end = m.lastgroup, m.end()
        if kind == "cjk":
            # 「はい。」と言った: a hiragana particle right after a closing quote continues the sentence.
            if text[end - 1] in _CLOSER_SET and end < n and "\u3041" <= text[end] <= "\u309f":
                continue
            # 《摔跤吧！爸爸》: a title's own punctuation does not end the sentence around it.
            if any(text.count(o, cuts[-1], end) > text.count(c, cuts[-1], end) for o, c in _TITLE_MARKS):
                continue
        elif kind == "lat":
            term = m.group("lat")
            if end < n:
                if not _latin_ends_sentence(text, term, m.start(), end, cuts[-1]):
                    continue
                if " " in term and term.count(".") >= 4 and not text[m.start() - 1].isspace():
                    # "compounds. . . . The": the word's own period ends it, the spaced ellipsis opens the next.
                    end = m.start() + 1
        else:
            end = m.start()
        cuts.append(end)
    cuts.append(n)
    spans = []
    for a, b in pairwise(cuts):
        a, b = _strip_span(text, a, b)
        if a < b:
            for s, e in pairwise([a, *_inline_items(text, a, b), b]):
                spans.append(_strip_span(text, s, e))
    return spans


def _inline_items(text: str, a: int, b: int) -> list[int]:
    """Where the items of a list written on one line start, inside a sentence that opens with its first
    marker: "1.) The first item 2.) The second item", "a. one b. two", "• one • two"."""
    if text[a] in _BULLETS:
        return [m.start() for m in re.compile(rf"\s(?={re.escape(text[a])})").finditer(text, a + 1, b)]
    opener = _LIST_MARKER_RE.match(text, a, b)
    if opener is None:
        return []
    cuts = []
    style = re.escape(text[opener.end("num") if opener.group("num") else opener.end("letter") : opener.end()])
    first = opener.group("num") or opener.group("letter")
    pos = opener.end()
    while True:
        first = str(int(first) + 1) if first.isdigit() else chr(ord(first) + 1)
        m = re.compile(rf"\s{re.escape(first)}{style}(?=\s)").search(text, pos, b)
        if m is None:
            return cuts
        cuts.append(m.start())
        pos = m.end()


def _latin_ends_sentence(text: str, term: str, start: int, end: int, last_cut: int) -> bool:
    """Whether the `.!?…` run `term` at `start`, closers included up to `end`, ends a sentence."""
    nxt = _SPACE_RE.match(text, end).end()
    if nxt == len(text):
        return True
    if " " in term:
        # Spaced dots: three mark an omission inside a sentence (". . . I didn't"), four an omission and its end.
        return term.count(".") >= 4 and not text[nxt].islower()
    if start > 0 and text[start - 1] == "[" and text.startswith("]", start + len(term)):
        return False  # "[...]": an omission mark
    is_ellipsis = term != "." and all(c in ".…" for c in term)
    if nxt > end:
        if text[nxt].islower():  # the regex only rules out ASCII lowercase
            return False
    elif is_ellipsis:  # "他想……也许" goes on; "Wow!你好" and "Hi.你好" split
        return False
    if term == ".":
        return _period_ends_sentence(text, start, nxt, last_cut)
    return True


def _period_ends_sentence(text: str, dot: int, nxt: int, last_cut: int) -> bool:
    """A single '.' before a non-lowercase start: an abbreviation, initial or list marker, or a real end?"""
    # Scan back over the word by hand: a `[...]+\Z` regex search retries at every start position.
    i = dot
    lo = max(0, dot - 64)
    while i > lo and text[i - 1] in _TAIL_CHARS:
        i -= 1
    tail = text[i:dot].lstrip(".")
    if not tail:
        # "N°. 1026": the number sign's abbreviation.
        return not (dot >= 2 and text[dot - 1] in "°º" and text[dot - 2] in "Nn" and text[nxt].isdigit())
    if i > 0 and text[i - 1] in _URL_PUNCT and _in_url_or_email(text, dot):
        return True  # "https://x.org/a.b?c=d. Next": the dot after a URL or e-mail is the sentence's own
    low = tail.lower()
    if low in _NEVER_FINAL:
        return False
    if tail[0].isupper() and low in _TITLES:
        return False
    if low in _NUMBER_ABBREVIATIONS and text[nxt].isdigit():
        return False
    word = _WORD_RE.match(text, nxt)
    next_word = word.group().lower() if word else ""
    if tail.isdigit() and len(tail) <= 2 and next_word in _MONTHS:
        return False
    word_start = i == 0 or text[i - 1].isspace() or text[i - 1] in _BULLETS
    if word_start and ((tail.isdigit() and len(tail) <= 3) or _ROMAN_RE.fullmatch(tail)):
        # "1. First item", "Steps: 2. Mix", "IV. Results": a list marker when it opens a line or sentence.
        while i > last_cut and text[i - 1] in " \t":
            i -= 1
        if i <= last_cut or text[i - 1] in "\n:：" or text[i - 1] in _BULLETS:
            return False
    if _next_list_marker(text, last_cut, tail, dot):
        return False  # "1. The first item 2. The second item": the next item's marker
    if _DOTTED_RE.fullmatch(tail):
        if any(c.isupper() for c in tail):
            # "U.S. Army", "J.R.R. Tolkien": dotted capitals end a sentence only before a usual first word.
            return next_word in _SENTENCE_STARTERS and text[nxt + 1 : nxt + 2] != "."
        # "5 p.m. Then" ends; "5 p.m. EST" and "5 a.m. Mr. Smith" do not.
        return _TIMEZONE_RE.match(text, nxt) is None and not _is_title(text, nxt)
    if len(tail) == 1 and tail.isalpha():
        # An initial ("J. R. R. Tolkien"); the pronoun "I" only when another initial follows ("I. M. Pei") or
        # a name comes before it ("Albert I. Jones").
        return tail == "I" and _INITIAL_RE.match(text, nxt) is None and not _after_name(text, i)
    return True


def _is_title(text: str, i: int) -> bool:
    word = _WORD_RE.match(text, i)
    return word is not None and text.startswith(".", word.end()) and word.group().lower() in _TITLES


def _after_name(text: str, i: int) -> bool:
    """Whether the word before text[i] is capitalised and not the first of its sentence."""
    j = i
    while j > 0 and text[j - 1] == " ":
        j -= 1
    k = j
    while k > 0 and text[k - 1].isalpha():
        k -= 1
    if k == j or not text[k].isupper():
        return False
    before = text[max(0, k - 64) : k].rstrip()
    return bool(before) and before[-1] not in _LATIN_TERMINATORS + _CJK_TERMINATORS


def _next_list_marker(text: str, last_cut: int, tail: str, dot: int) -> bool:
    """Whether `tail` + "." at `dot` is the marker after the one that opens the current sentence ("2." after
    "1. ...", "b." after "a. ..."): an inline list's next item, not a sentence end."""
    if not (tail.isdigit() and len(tail) <= 3) and not (len(tail) == 1 and tail.islower()):
        return False
    opener = _LIST_MARKER_RE.match(text, _SPACE_RE.match(text, last_cut).end())
    if opener is None:
        return False
    first = opener.group("num") or opener.group("letter")
    if tail.isdigit():
        return first.isdigit() and int(tail) == int(first) + 1
    return first.isalpha() and ord(tail) == ord(first) + 1


def _in_url_or_email(text: str, dot: int) -> bool:
    lo = max(0, dot - 256)
    run = text[max(lo, *(text.rfind(c, lo, dot) + 1 for c in _WORD_SPACES)) : dot]
    return "://" in run or "@" in run or run.lower().startswith("www.")


def _cut(
    text: str,
    pre: list[float],
    a: int,
    b: int,
    level: int,
    target: int,
    max_chars: int,
    out: list[tuple[int, int, str]],
    end_kind: str,
) -> None:
    """Append to `out` stripped spans covering text[a:b], each within `max_chars` where any break allows,
    each with the kind of break it ends at (the last one: `end_kind`, the break that ends text[a:b])."""
    if pre[b] - pre[a] <= max_chars:
        out.append((a, b, end_kind))
        return
    if level == len(_BREAK_LEVELS):
        spans = _hard_cut(text, pre, a, b, target, max_chars)
        out.extend((s, e, FORCED) for s, e in spans[:-1])
        out.append((*spans[-1], end_kind))
        return
    # Cut at every break of this level; packing re-joins the small pieces up to `target` afterwards.
    pattern, at_start = _BREAK_LEVELS[level]
    kind = _BREAK_KINDS[level]
    first = len(out)
    prev = a
    for m in pattern.finditer(text, a, b):
        s, e = _strip_span(text, prev, m.start() if at_start else m.end())
        prev = m.end()
        if s < e:
            if pre[e] - pre[s] <= max_chars:
                out.append((s, e, kind))
            else:
                _cut(text, pre, s, e, level + 1, target, max_chars, out, kind)
    s, e = _strip_span(text, prev, b)
    if s < e:
        _cut(text, pre, s, e, level + 1, target, max_chars, out, end_kind)
    elif len(out) > first:  # text[a:b] ended with a break of this level: the last piece ends where it does
        out[-1] = (out[-1][0], out[-1][1], end_kind)


def _splits_cluster(text: str, i: int) -> bool:
    """Whether a cut before text[i] would tear a combining mark, ZWJ sequence or Hangul jamo syllable."""
    c = text[i]
    return (
        c == _ZWJ
        or text[i - 1] == _ZWJ
        or unicodedata.category(c)[0] == "M"
        or "\u1160" <= c <= "\u11ff"
        or "\ud7b0" <= c <= "\ud7ff"
    )


def _keeps_cluster(text: str, i: int) -> bool:
    return not _splits_cluster(text, i)


def _good_hard_cut(text: str, i: int) -> bool:
    before, after = text[i - 1], text[i]
    if after in _NO_CUT_BEFORE or before in _NO_CUT_AFTER or _splits_cluster(text, i):
        return False
    # Between CJK characters (or at a CJK/Latin seam), or after a URL separator: never inside a Latin word.
    return before in _URL_SEPARATORS or _CJK_CHAR_RE.match(before) is not None or _CJK_CHAR_RE.match(after) is not None


def _hard_cut(text: str, pre: list[float], a: int, b: int, target: int, max_chars: int) -> list[tuple[int, int]]:
    """Last resort for a whitespace-free run heavier than `max_chars`: cut between characters.

    Prefers the last good cut (see `_good_hard_cut`) within `target`, then the first one within `max_chars`,
    then any cut that keeps a character cluster whole; a Latin token is cut mid-token only when it alone
    outweighs `max_chars`.
    """
    spans = []
    s = a
    while pre[b] - pre[s] > max_chars:
        t_lim = max(bisect_right(pre, pre[s] + target, s, b + 1) - 1, s)
        m_lim = max(bisect_right(pre, pre[s] + max_chars, s, b + 1) - 1, s)
        cut = None
        tiers = [_good_hard_cut, _keeps_cluster]
        if _HARD_HINT_RE.search(text, s, m_lim + 1) is None:
            del tiers[0]  # no CJK or separator in reach: skip a scan that cannot succeed
        for ok in tiers:
            cut = next((i for i in range(t_lim, s, -1) if ok(text, i)), None)
            if cut is None:
                cut = next((i for i in range(t_lim + 1, m_lim + 1) if ok(text, i)), None)
            if cut is not None:
                break
        if cut is None:
            cut = max(m_lim, s + 1)
        spans.append((s, cut))
        s = cut
    if s < b:
        spans.append((s, b))
    return spans


def _pack(pieces: list[tuple[int, int, str]], pre: list[float], target: int) -> list[tuple[int, int, str]]:
    """Greedily merge consecutive pieces while the merged span weighs at most `target`; a merged chunk ends
    with its last piece's break."""
    chunks: list[tuple[int, int, str]] = []
    for a, b, kind in pieces:
        if chunks and pre[b] - pre[chunks[-1][0]] <= target:
            chunks[-1] = (chunks[-1][0], b, kind)
        else:
            chunks.append((a, b, kind))
    return chunks
