"""Tests for audio/text/splitter.py: exact chunk lists for known inputs, plus no-loss and size properties."""

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.text.splitter import CJK_WEIGHT, split_sentences, split_text, text_weight

# target_chars=1 never lets two pieces share a chunk, so the chunks are exactly the sentence units.
ONE_PER_SENTENCE = {"target_chars": 1, "max_chars": 1000}

GOLDEN = [
    # --- empty input and defaults
    pytest.param("", {}, [], id="empty"),
    pytest.param(" \n\t\u3000 ", {}, [], id="whitespace-only"),
    pytest.param("Hello world.", {}, ["Hello world."], id="single-sentence"),
    pytest.param(
        "First sentence here. Second one. Third one!",
        {},
        ["First sentence here. Second one. Third one!"],
        id="default-sizes-pack-into-one-chunk",
    ),
    pytest.param(
        "Line one\nstill one.  Two   spaces.",
        {},
        ["Line one\nstill one.  Two   spaces."],
        id="inner-whitespace-untouched",
    ),
    # --- numbers
    pytest.param(
        "Pi is about 3.14159. It never ends.",
        ONE_PER_SENTENCE,
        ["Pi is about 3.14159.", "It never ends."],
        id="decimal-kept",
    ),
    pytest.param(
        "The total was $1,000.50 today. Tax was 7.5 percent.",
        ONE_PER_SENTENCE,
        ["The total was $1,000.50 today.", "Tax was 7.5 percent."],
        id="thousands-and-decimal-kept",
    ),
    pytest.param(
        "Install version 2.10.3 now. Then restart.",
        ONE_PER_SENTENCE,
        ["Install version 2.10.3 now.", "Then restart."],
        id="version-number-kept",
    ),
    pytest.param(
        "See No. 5 on the list. Done.",
        ONE_PER_SENTENCE,
        ["See No. 5 on the list.", "Done."],
        id="number-abbreviation-kept",
    ),
    pytest.param(
        "It opened on Jan. 5, 2024. Crowds came.",
        ONE_PER_SENTENCE,
        ["It opened on Jan. 5, 2024.", "Crowds came."],
        id="month-abbreviation-before-day-kept",
    ),
    # --- abbreviations
    pytest.param(
        "Dr. Smith met Mr. Jones. They talked.",
        ONE_PER_SENTENCE,
        ["Dr. Smith met Mr. Jones.", "They talked."],
        id="abbrev-dr-mr",
    ),
    pytest.param(
        "Mrs. Lee and Ms. Park saw Prof. Kim. It was late.",
        ONE_PER_SENTENCE,
        ["Mrs. Lee and Ms. Park saw Prof. Kim.", "It was late."],
        id="abbrev-mrs-ms-prof",
    ),
    pytest.param(
        "We flew to St. Louis. It rained.",
        ONE_PER_SENTENCE,
        ["We flew to St. Louis.", "It rained."],
        id="abbrev-st",
    ),
    pytest.param(
        "It was Ali vs. Frazier. Ali won.",
        ONE_PER_SENTENCE,
        ["It was Ali vs. Frazier.", "Ali won."],
        id="abbrev-vs",
    ),
    pytest.param(
        "Bring pens, paper, etc. and a bag. Thanks.",
        ONE_PER_SENTENCE,
        ["Bring pens, paper, etc. and a bag.", "Thanks."],
        id="abbrev-etc-mid-sentence",
    ),
    pytest.param(
        "Bring pens, paper, etc. Then leave.",
        ONE_PER_SENTENCE,
        ["Bring pens, paper, etc.", "Then leave."],
        id="abbrev-etc-ends-sentence",
    ),
    pytest.param(
        "Use a tool, e.g. Python, i.e. Something simple. Good.",
        ONE_PER_SENTENCE,
        ["Use a tool, e.g. Python, i.e. Something simple.", "Good."],
        id="abbrev-eg-ie",
    ),
    pytest.param(
        "The U.S. Army is large. The U.K. Navy too.",
        ONE_PER_SENTENCE,
        ["The U.S. Army is large.", "The U.K. Navy too."],
        id="abbrev-us-uk",
    ),
    pytest.param(
        "We met at 9 a.m. and left at 5 p.m. EST today. Then we slept.",
        ONE_PER_SENTENCE,
        ["We met at 9 a.m. and left at 5 p.m. EST today.", "Then we slept."],
        id="abbrev-am-pm-mid-sentence",
    ),
    pytest.param(
        "The shop closes at 5 p.m. Please be on time.",
        ONE_PER_SENTENCE,
        ["The shop closes at 5 p.m.", "Please be on time."],
        id="abbrev-pm-ends-sentence",
    ),
    # --- initials
    pytest.param(
        "J. R. R. Tolkien wrote it. C. S. Lewis read it.",
        ONE_PER_SENTENCE,
        ["J. R. R. Tolkien wrote it.", "C. S. Lewis read it."],
        id="initials-spaced",
    ),
    pytest.param(
        "J.R.R. Tolkien wrote it. Fine.",
        ONE_PER_SENTENCE,
        ["J.R.R. Tolkien wrote it.", "Fine."],
        id="initials-dotted",
    ),
    pytest.param(
        "So did I. Then we left.",
        ONE_PER_SENTENCE,
        ["So did I.", "Then we left."],
        id="pronoun-i-ends-sentence",
    ),
    # --- URLs and e-mail
    pytest.param(
        "See https://example.com/a.b?c=d. It works.",
        ONE_PER_SENTENCE,
        ["See https://example.com/a.b?c=d.", "It works."],
        id="url-kept",
    ),
    pytest.param(
        "Visit www.example.org/x.html today. It is free.",
        ONE_PER_SENTENCE,
        ["Visit www.example.org/x.html today.", "It is free."],
        id="www-url-kept",
    ),
    pytest.param(
        "Mail a.b@c.com. Or call us.",
        ONE_PER_SENTENCE,
        ["Mail a.b@c.com.", "Or call us."],
        id="email-kept",
    ),
    # --- ellipses
    pytest.param(
        "Well... maybe not. Hmm… okay then.",
        ONE_PER_SENTENCE,
        ["Well... maybe not.", "Hmm… okay then."],
        id="ellipsis-before-lowercase-continues",
    ),
    pytest.param(
        "Wait... What happened? Fine… Next one.",
        ONE_PER_SENTENCE,
        ["Wait...", "What happened?", "Fine…", "Next one."],
        id="ellipsis-before-uppercase-splits",
    ),
    # --- lists and line structure
    pytest.param(
        "1. First item\n2. Second item\n3. Third item",
        ONE_PER_SENTENCE,
        ["1. First item", "2. Second item", "3. Third item"],
        id="numbered-list-lines",
    ),
    pytest.param(
        "Steps: 1. Open the box. 2. Take it out.",
        ONE_PER_SENTENCE,
        ["Steps: 1. Open the box.", "2. Take it out."],
        id="numbered-list-inline",
    ),
    pytest.param(
        "I. Introduction. II. Methods here.",
        ONE_PER_SENTENCE,
        ["I. Introduction.", "II. Methods here."],
        id="roman-numeral-markers",
    ),
    pytest.param(
        "Shopping list\n- Milk\n- Eggs",
        ONE_PER_SENTENCE,
        ["Shopping list", "- Milk", "- Eggs"],
        id="bullet-lines",
    ),
    pytest.param(
        "Chapter One\n\nIt was a dark night. The end.",
        ONE_PER_SENTENCE,
        ["Chapter One", "It was a dark night.", "The end."],
        id="paragraph-break",
    ),
    # --- closing quotes and brackets
    pytest.param(
        'He said "Stop." Then he left.',
        ONE_PER_SENTENCE,
        ['He said "Stop."', "Then he left."],
        id="closing-double-quote",
    ),
    pytest.param(
        "She asked, “Why?” he said. ‘Go.’ Okay.",
        ONE_PER_SENTENCE,
        ["She asked, “Why?” he said.", "‘Go.’", "Okay."],
        id="closing-curly-quotes",
    ),
    pytest.param(
        "It works (mostly.) See [note 1.] Done.",
        ONE_PER_SENTENCE,
        ["It works (mostly.)", "See [note 1.]", "Done."],
        id="closing-paren-bracket",
    ),
    pytest.param(
        '"Stop!" he said. "Why?" she asked.',
        ONE_PER_SENTENCE,
        ['"Stop!" he said.', '"Why?" she asked.'],
        id="quoted-exclamation-then-lowercase-continues",
    ),
    pytest.param(
        "他说：“你好！”然后走了。《书名》很好。（注释。）结束",
        ONE_PER_SENTENCE,
        ["他说：“你好！”", "然后走了。", "《书名》很好。", "（注释。）", "结束"],
        id="chinese-closing-quote-and-fullwidth-paren",
    ),
    pytest.param(
        "「こんにちは。」と言った。『はい。』東京へ行く。",
        ONE_PER_SENTENCE,
        ["「こんにちは。」と言った。", "『はい。』", "東京へ行く。"],
        id="japanese-corner-brackets",
    ),
    pytest.param(
        "他推荐了《活着。》我也读了。",
        ONE_PER_SENTENCE,
        ["他推荐了《活着。》", "我也读了。"],
        id="chinese-closing-angle-bracket",
    ),
    # --- CJK sentence punctuation
    pytest.param(
        "今天天气很好。我们去公园吧！你觉得呢？",
        ONE_PER_SENTENCE,
        ["今天天气很好。", "我们去公园吧！", "你觉得呢？"],
        id="chinese-no-spaces",
    ),
    pytest.param(
        "他很高；她很矮。",
        ONE_PER_SENTENCE,
        ["他很高；", "她很矮。"],
        id="chinese-fullwidth-semicolon",
    ),
    pytest.param(
        "我想……也许吧。好。",
        ONE_PER_SENTENCE,
        ["我想……也许吧。", "好。"],
        id="chinese-ellipsis-continues",
    ),
    pytest.param(
        "東京は大きいです。大阪も好きです。",
        ONE_PER_SENTENCE,
        ["東京は大きいです。", "大阪も好きです。"],
        id="japanese-maru",
    ),
    pytest.param(
        "本当！？はい。",
        ONE_PER_SENTENCE,
        ["本当！？", "はい。"],
        id="japanese-fullwidth-exclamation-question",
    ),
    pytest.param(
        "안녕하세요. 저는 학생입니다. 이름이 뭐예요? 좋아요!",
        ONE_PER_SENTENCE,
        ["안녕하세요.", "저는 학생입니다.", "이름이 뭐예요?", "좋아요!"],
        id="korean-period-question",
    ),
    pytest.param(
        "가격은 3.5달러입니다. 싸요.",
        ONE_PER_SENTENCE,
        ["가격은 3.5달러입니다.", "싸요."],
        id="korean-decimal-kept",
    ),
    # --- mixed scripts
    pytest.param(
        "我喜欢Python。It is great. 你呢？",
        ONE_PER_SENTENCE,
        ["我喜欢Python。", "It is great.", "你呢？"],
        id="mixed-chinese-english",
    ),
    pytest.param(
        "Wow!你好 OK?好的",
        ONE_PER_SENTENCE,
        ["Wow!", "你好 OK?", "好的"],
        id="latin-bang-question-before-cjk",
    ),
    pytest.param(
        "我喜欢Python。It is great. 你呢？",
        {},
        ["我喜欢Python。It is great. 你呢？"],
        id="mixed-packed-with-default-sizes",
    ),
    # --- packing
    pytest.param(
        "One. Two. Three. Four. Five.",
        {"target_chars": 10, "max_chars": 20},
        ["One. Two.", "Three.", "Four.", "Five."],
        id="packing-up-to-target",
    ),
    pytest.param(
        "你好。你好。你好。",
        {"target_chars": 18, "max_chars": 30},
        ["你好。你好。", "你好。"],
        id="packing-counts-cjk-weight",
    ),
    # --- over-long sentences: weakest break still available
    pytest.param(
        "alpha beta, gamma delta; epsilon zeta, eta theta.",
        {"target_chars": 10, "max_chars": 30},
        ["alpha beta, gamma delta;", "epsilon zeta, eta theta."],
        id="long-sentence-cut-at-semicolon-before-comma",
    ),
    pytest.param(
        "Note this well: the meeting moved to Monday.",
        {"target_chars": 10, "max_chars": 30},
        ["Note this well:", "the meeting moved to Monday."],
        id="long-sentence-cut-at-colon",
    ),
    pytest.param(
        "alpha beta gamma, delta epsilon zeta, eta theta iota.",
        {"target_chars": 10, "max_chars": 25},
        ["alpha beta gamma,", "delta epsilon zeta,", "eta theta iota."],
        id="long-sentence-cut-at-comma-before-space",
    ),
    pytest.param(
        "alpha beta gamma delta epsilon zeta eta theta.",
        {"target_chars": 15, "max_chars": 20},
        ["alpha beta", "gamma delta", "epsilon zeta", "eta theta."],
        id="long-sentence-cut-at-spaces",
    ),
    pytest.param(
        "supercalifragilistic expialidocious.",
        {"target_chars": 5, "max_chars": 25},
        ["supercalifragilistic", "expialidocious."],
        id="never-cut-mid-word",
    ),
    pytest.param(
        "At 10:30 we paid 1,000 dollars to them.",
        {"target_chars": 20, "max_chars": 25},
        ["At 10:30 we paid", "1,000 dollars to", "them."],
        id="time-and-thousands-are-not-breaks",
    ),
    pytest.param(
        "我们今天去公园，然后去超市，最后回家。",
        {"target_chars": 20, "max_chars": 30},
        ["我们今天去公园，", "然后去超市，", "最后回家。"],
        id="chinese-cut-at-fullwidth-comma",
    ),
    pytest.param(
        "他说：我们今天一起去公园玩吧。",
        {"target_chars": 10, "max_chars": 40},
        ["他说：", "我们今天一起去公园玩吧。"],
        id="chinese-cut-at-fullwidth-colon",
    ),
    pytest.param(
        "저는 오늘 아침에 학교에 가서 친구를 만났습니다.",
        {"target_chars": 20, "max_chars": 40},
        ["저는 오늘", "아침에 학교에", "가서 친구를", "만났습니다."],
        id="korean-cut-at-spaces",
    ),
    pytest.param(
        "一二三四五六七八九十一二三四五六七八九十",
        {"target_chars": 15, "max_chars": 24},
        ["一二三四五", "六七八九十", "一二三四五", "六七八九十"],
        id="chinese-hard-cut-without-punctuation",
    ),
    pytest.param(
        "我喜欢用Python写代码因为它很简单",
        {"target_chars": 15, "max_chars": 30},
        ["我喜欢用", "Python写代码", "因为它很简单"],
        id="hard-cut-never-inside-latin-word",
    ),
    pytest.param(
        "https://example.com/" + "abcdefghij/" * 4,
        {"target_chars": 30, "max_chars": 40},
        ["https://example.com/", "abcdefghij/abcdefghij/", "abcdefghij/abcdefghij/"],
        id="giant-url-cut-after-slashes",
    ),
]


@pytest.mark.parametrize(("text", "sizes", "expected"), GOLDEN)
def test_golden(text, sizes, expected):
    assert split_text(text, **sizes) == expected


def test_golden_case_count():
    assert len(GOLDEN) >= 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("Dr. Who? Yes. 我很好。Bye!", ["Dr. Who?", "Yes.", "我很好。", "Bye!"], id="mixed-no-packing"),
        pytest.param("word " * 100, ["word " * 99 + "word"], id="no-length-limit"),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", 0, id="empty"),
        pytest.param("abc", 3, id="latin"),
        pytest.param("a b\n", 4, id="whitespace-counts-one"),
        pytest.param("中文", 2 * CJK_WEIGHT, id="chinese"),
        pytest.param("かナ한", 3 * CJK_WEIGHT, id="kana-hangul"),
        pytest.param("Ａ！", 2 * CJK_WEIGHT, id="fullwidth"),
        pytest.param("。、「」", 4 * CJK_WEIGHT, id="cjk-punctuation"),
        pytest.param("a\u3000中", 2 + CJK_WEIGHT, id="ideographic-space-is-whitespace"),
        pytest.param("𠀀", CJK_WEIGHT, id="astral-ideograph"),
    ],
)
def test_text_weight(text, expected):
    assert text_weight(text) == expected


def test_cjk_weight_is_about_a_syllable():
    assert 2.5 <= CJK_WEIGHT <= 3


def test_hard_cut_keeps_combining_marks_with_their_letter():
    text = "e\u0301" * 30  # decomposed é, no whitespace: a giant token
    chunks = split_text(text, target_chars=7, max_chars=10)
    assert "".join(chunks) == text
    assert all(c[0] == "e" and c[-1] == "\u0301" for c in chunks)
    assert max(text_weight(c) for c in chunks) <= 10


def test_single_character_heavier_than_max_is_its_own_chunk():
    assert split_text("中文，", target_chars=1, max_chars=2) == ["中", "文", "，"]


@pytest.mark.parametrize(("target", "max_chars"), [(0, 10), (20, 10), (-5, -1)])
def test_bad_sizes_rejected(target, max_chars):
    with pytest.raises(ValueError, match="target_chars"):
        split_text("Hello.", target_chars=target, max_chars=max_chars)


# --- properties

BREAK_CHARS = set(";:,；：，、。！？.!?…")
ALPHABET = list(
    "abcXYZ019 .,;:!?…'\"()[]-/@\n\t\u3000"
    "中文字你好。，、；：！？「」『』《》（）【】“”‘’"
    "ひらがなカタカナ한국어\u0301\u200d"
)
WORDS = [
    "Dr.",
    "Mr.",
    "e.g.",
    "U.S.",
    "a.m.",
    "3.5",
    "1,000.50",
    "J.",
    "1.",
    "etc.",
    "...",
    "…",
    "https://example.com/a.b?c=d.",
    "a.b@c.com",
    "Hello",
    "world.",
    "Why?",
    '"Yes."',
    "我喜欢",
    "Python。",
    "今日は",
    "晴れです。",
    "안녕하세요.",
    "뭐예요?",
    "「はい。」",
    "一二三四五六七八九十" * 3,
    "x" * 40,
]
texts = st.one_of(
    st.text(alphabet=st.sampled_from(ALPHABET), max_size=300),
    st.text(max_size=200),
    st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(["", " ", "  ", "\n", "\n\n"])), max_size=60).map(
        lambda parts: "".join(w + s for w, s in parts)
    ),
)
# max_chars >= CJK_WEIGHT: below that a single character outweighs max_chars (tested on its own).
sizes = st.integers(min_value=1, max_value=60).flatmap(
    lambda t: st.tuples(st.just(t), st.integers(min_value=max(t, int(CJK_WEIGHT)), max_value=t + 80))
)


def assert_chunks_cover(text, chunks):
    assert re.sub(r"\s+", "", "".join(chunks)) == re.sub(r"\s+", "", text)
    pos = 0
    for chunk in chunks:
        pos = text.index(chunk, pos) + len(chunk)  # in order, as exact substrings, non-overlapping


@settings(max_examples=400, deadline=None)
@given(text=texts, size=sizes)
def test_property_no_loss_and_order(text, size):
    target, max_chars = size
    assert_chunks_cover(text, split_text(text, target_chars=target, max_chars=max_chars))


@settings(max_examples=400, deadline=None)
@given(text=texts, size=sizes)
def test_property_chunks_within_max_unless_unbreakable(text, size):
    target, max_chars = size
    for chunk in split_text(text, target_chars=target, max_chars=max_chars):
        if text_weight(chunk) > max_chars:
            assert not any(c.isspace() or c in BREAK_CHARS for c in chunk), chunk


@settings(max_examples=400, deadline=None)
@given(text=texts, size=sizes)
def test_property_chunks_non_empty_and_stripped(text, size):
    target, max_chars = size
    chunks = split_text(text, target_chars=target, max_chars=max_chars)
    assert all(chunk and chunk == chunk.strip() for chunk in chunks)
    assert (chunks == []) == (text.strip() == "")


@settings(max_examples=200, deadline=None)
@given(text=texts)
def test_property_sentences_cover_text(text):
    assert_chunks_cover(text, split_sentences(text))


# --- long text


def long_mixed_text(min_chars: int) -> str:
    paragraphs = [
        "Dr. Smith paid $1,234.56 at 9 a.m. on Jan. 5, e.g. for the U.S. office; see "
        "https://example.com/path/to/page.html?q=1.5&lang=en. Mail j.doe@example.org for details!",
        "The quick brown fox, which was very quick indeed, jumped over the lazy dog, and then it jumped "
        "again, and again, and again, without stopping, until the sun went down behind the hills...",
        "今天天气很好，我们一起去公园散步吧！他说：“价格是3.5元。”然后走了。这是一段很长的中文文本没有任何标点"
        "符号用来测试硬切分是否正确工作并且不会丢失任何字符。",
        "東京は日本の首都です。「こんにちは。」と彼は言った。昨日、友達と映画を見ました！",
        "안녕하세요. 저는 서울에 사는 학생입니다. 오늘 날씨가 정말 좋네요? 내일 만나요!",
        "1. First item\n2. Second item with J. R. R. Tolkien\n3. Third item: see St. Louis etc. and more.",
        "Mixed 我喜欢Python。It is great. 你呢？Prof. Kim said “OK.” Then left.",
    ]
    parts = []
    n = 0
    while sum(len(p) + 2 for p in parts) < min_chars:
        parts.append(f"Section {n}. " + paragraphs[n % len(paragraphs)])
        n += 1
    return "\n\n".join(parts)


def test_long_mixed_text_no_loss_and_within_max():
    text = long_mixed_text(6000)
    assert len(text) >= 5000
    chunks = split_text(text)
    assert_chunks_cover(text, chunks)
    assert max(text_weight(c) for c in chunks) <= 250
    assert all(chunk == chunk.strip() and chunk for chunk in chunks)
    assert len(chunks) > len(text) / 250  # it really was split


def _best_time(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(long_mixed_text(50_000)[:50_000], id="mixed-prose"),
        pytest.param("中" * 50_000, id="cjk-without-punctuation"),
        pytest.param("a.中" * 17_000, id="sentence-every-three-chars"),
        pytest.param("x" * 50_000, id="one-giant-token"),
        pytest.param("Dr. " * 12_500, id="abbreviation-every-four-chars"),
    ],
)
def test_linear_time_on_50k_chars(text):
    # Generous bound for slow CI machines; a quadratic pass over 50,000 characters takes many seconds.
    assert _best_time(lambda: split_text(text)) < 1.0
