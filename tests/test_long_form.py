"""The long-form client's pure parts: reading books and podcasts, cutting parts, the manifest, joining, captions,
chapters and encoding. (Real workers on loopback: tests/test_long_form_e2e.py.)"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio.output import postprocess
from scripts import long_form
from scripts.longform import assemble
from scripts.longform.errors import AssemblyError, UsageError
from scripts.longform.manifest import Manifest, PartRecord, file_sha256, manifest_path, parts_dir
from scripts.longform.plan import Pauses, derive_seed, input_hash, part_input, plan_parts
from scripts.longform.runner import Progress
from scripts.longform.source import Chapter, Segment, Source, parse_podcast, parse_text, read_source

MARKDOWN = """Front matter before any heading.

# Chapter *One*

It was a bright cold day in April,
and the clocks were striking thirteen.

See [the map](http://example.com/map) and ![a picture](p.png) `code`.

```
print("never read aloud")
```

---

## Chapter Two!

- A list item.
> A quote.
"""


def texts(chapter: Chapter) -> list[str]:
    return [s.text for s in chapter.segments]


def test_markdown_chapters_come_from_headings_and_markup_is_not_read():
    source = parse_text(MARKDOWN, markdown=True)
    assert [c.title for c in source.chapters] == ["", "Chapter One", "Chapter Two!"]
    assert [texts(c) for c in source.chapters] == [
        ["Front matter before any heading."],
        [
            "Chapter One.",
            "It was a bright cold day in April, and the clocks were striking thirteen.",
            "See the map and  code.",
        ],
        ["Chapter Two!", "A list item. A quote."],
    ]


def test_plain_text_chapters_from_a_regex_and_headings_stay_text():
    text = "# not a heading\n\nCHAPTER I\nFirst words.\n\nMore.\nCHAPTER II\n\nSecond words."
    source = parse_text(text, markdown=False, chapter_regex=r"^CHAPTER [IVX]+$")
    assert [(c.title, texts(c)) for c in source.chapters] == [
        ("", ["# not a heading"]),
        ("CHAPTER I", ["CHAPTER I.", "First words.", "More."]),
        ("CHAPTER II", ["CHAPTER II.", "Second words."]),
    ]


@pytest.mark.parametrize(
    ("text", "regex", "message"),
    [("\n\n  \n", None, "no text to speak"), ("Hi.", "([", "--chapter-regex is not a valid")],
    ids=["empty", "bad-regex"],
)
def test_text_usage_errors(text, regex, message):
    with pytest.raises(UsageError, match=message):
        parse_text(text, markdown=False, chapter_regex=regex)


def test_epub_chapters_follow_the_spine_with_toc_titles(tmp_path):
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("id-1")
    book.set_title("A Book")
    book.set_language("en")
    docs = []
    for i, body in enumerate(
        [
            "<h1>Opening</h1><p>First paragraph.</p><blockquote><p>Quoted once.</p></blockquote>",
            "<p>  </p>",  # an empty document: no chapter
            "<h2>Ignored heading</h2><p>Second   chapter\ntext.</p><ul><li>Item.</li></ul>",
        ]
    ):
        doc = epub.EpubHtml(title=f"doc {i}", file_name=f"c{i}.xhtml", lang="en")
        doc.content = f"<html><body>{body}</body></html>"
        book.add_item(doc)
        docs.append(doc)
    book.toc = [epub.Link("c0.xhtml", "Opening", "c0"), epub.Link("c2.xhtml#top", "The Middle", "c2")]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *docs]
    path = tmp_path / "book.epub"
    epub.write_epub(str(path), book)

    source = read_source(path)
    assert [(c.title, texts(c)) for c in source.chapters] == [
        ("Opening", ["Opening.", "First paragraph.", "Quoted once."]),
        ("The Middle", ["The Middle.", "Ignored heading", "Second chapter text.", "Item."]),
    ]


PODCAST = {
    "language": "en",
    "segments": [
        {"text": "Welcome to the show.", "voice": "Ryan", "chapter": "Intro"},
        {"text": "Hi!", "voice": "Vivian", "pause_ms": 500},
        {"text": "Part two starts.", "voice": "Ryan", "chapter": "Main"},
    ],
}


def test_podcast_chapters_and_fields():
    source = parse_podcast(json.dumps(PODCAST))
    assert source.kind == "podcast" and source.job_fields == {"language": "en"}
    assert source.chapters == (
        Chapter(
            "Intro",
            (Segment("Welcome to the show.", {"voice": "Ryan"}), Segment("Hi!", {"voice": "Vivian", "pause_ms": 500})),
        ),
        Chapter("Main", (Segment("Part two starts.", {"voice": "Ryan"}),)),
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [("{", "not valid JSON"), ('{"segments": []}', "expected"), ('[{"text": " "}]', "segment 0 needs")],
    ids=["not-json", "no-segments", "empty-text"],
)
def test_podcast_usage_errors(raw, message):
    with pytest.raises(UsageError, match=message):
        parse_podcast(raw)


def book(*chapters: list[str]) -> Source:
    return Source(tuple(Chapter(f"C{i}", tuple(Segment(t) for t in paras)) for i, paras in enumerate(chapters)), "book")


SENTENCES = "One sentence here. Two sentence here. Three sentence here. Four sentence here."
PAUSES = Pauses(chapter_ms=2000, paragraph_ms=600, sentence_ms=300)


def test_parts_stay_in_budget_and_in_their_chapter_with_the_right_pauses():
    source = book(["Short one.", "Short two.", SENTENCES], ["Next chapter."])
    parts = plan_parts(source, part_chars=40, job_seed=1, pauses=PAUSES)
    assert [(p.key, [s["text"] for s in p.segments], p.pause_before_ms) for p in parts] == [
        ("c0000-p000", ["Short one.", "Short two."], 0),
        ("c0000-p001", ["One sentence here. Two sentence here."], 600),
        ("c0000-p002", ["Three sentence here. Four sentence here."], 300),
        ("c0001-p000", ["Next chapter."], 2000),
    ]
    assert all(p.chars <= 40 for p in parts)
    assert [p.first_in_chapter for p in parts] == [True, False, False, True]
    # the second half of a cut paragraph continues after a sentence pause inside a part too
    assert parts[2].segments[0]["pause_ms"] == 300


def test_seeds_come_from_the_key_so_an_edited_chapter_changes_only_its_parts():
    before = plan_parts(book(["A first chapter."], ["A second chapter."]), part_chars=40, job_seed=9, pauses=PAUSES)
    after = plan_parts(
        book(["A first chapter, edited."], ["A second chapter."]), part_chars=40, job_seed=9, pauses=PAUSES
    )
    assert (
        [p.seed for p in before]
        == [p.seed for p in after]
        == [derive_seed(9, "c0000-p000"), derive_seed(9, "c0001-p000")]
    )
    hashes = [
        [input_hash(part_input(p, {}, paragraph_pause_ms=600, transfer_format="flac")) for p in ps]
        for ps in (before, after)
    ]
    assert hashes[0][0] != hashes[1][0] and hashes[0][1] == hashes[1][1]
    assert derive_seed(9, "c0000-p000") != derive_seed(10, "c0000-p000")


def test_podcast_parts_keep_segment_fields_and_own_pauses():
    source = parse_podcast(json.dumps(PODCAST))
    parts = plan_parts(source, part_chars=20, job_seed=3, pauses=PAUSES)
    assert [(p.segments, p.pause_before_ms) for p in parts] == [
        (({"text": "Welcome to the show.", "voice": "Ryan"},), 0),
        (({"text": "Hi!", "voice": "Vivian", "pause_ms": 500},), 500),
        (({"text": "Part two starts.", "voice": "Ryan"},), 2000),
    ]
    fields = {"language": "en", "voice": "Aiden", "join": False, "stream": True, "seed": 1, "output_format": "mp3"}
    job = part_input(parts[1], fields, paragraph_pause_ms=600, transfer_format="flac")
    assert job == {
        "pause_ms": 600,
        "language": "en",
        "voice": "Aiden",
        "segments": [{"text": "Hi!", "voice": "Vivian", "pause_ms": 500}],
        "seed": parts[1].seed,
        "output_format": "flac",
    }


def flac(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def record(key: str, folder, samples: np.ndarray, rate: int, timeline=()) -> PartRecord:
    (folder / f"{key}.flac").write_bytes(flac(samples, rate))
    return PartRecord(
        key=key, input_hash="h-" + key, file=f"{key}.flac", audio_sha256=file_sha256(folder / f"{key}.flac"),
        sample_rate=rate, duration_s=len(samples) / rate, timeline=list(timeline), job_id="j-" + key, worker="w",
        attempts=1, wall_s=0.1, worker_s=0.05, chars=10,
    )  # fmt: skip


@pytest.mark.parametrize("rate", [16000, 24000], ids=["16k", "24k"])
def test_join_places_parts_after_their_pauses_at_the_results_rate(tmp_path, rate):
    parts = plan_parts(book(["Aaa.", "Bbb."], ["Ccc."]), part_chars=20, job_seed=1, pauses=PAUSES)
    assert [p.pause_before_ms for p in parts] == [0, 2000]  # "Aaa. Bbb." is one part
    lengths = [rate // 2, rate // 4]
    records = [record(p.key, tmp_path, np.full(n, 0.25, np.float32), rate) for p, n in zip(parts, lengths, strict=True)]
    track = assemble.join_parts(parts, records, tmp_path)
    assert track.sample_rate == rate
    assert len(track.samples) == sum(lengths) + 2 * rate
    assert track.part_starts_s == (0.0, 0.5 + 2.0)
    assert np.all(track.samples[lengths[0] : lengths[0] + 2 * rate] == 0)


def test_parts_at_different_rates_are_refused(tmp_path):
    parts = plan_parts(book(["Aaa."], ["Ccc."]), part_chars=20, job_seed=1, pauses=PAUSES)
    records = [
        record(p.key, tmp_path, np.zeros(800, np.float32), r) for p, r in zip(parts, (16000, 24000), strict=True)
    ]
    with pytest.raises(AssemblyError, match=r"different sample rates \[16000, 24000\]"):
        assemble.join_parts(parts, records, tmp_path)


def test_timeline_is_shifted_by_part_offsets_and_cues_stay_in_order(tmp_path):
    parts = plan_parts(
        book(["First part. Still first.", "Tail."], ["Second."]), part_chars=30, job_seed=1, pauses=PAUSES
    )
    timelines = [
        [
            {"segment": 0, "start_s": 0.0, "end_s": 1.0, "chars": [0, 11]},
            {"segment": 0, "start_s": 1.3, "end_s": 2.0, "chars": [12, 24]},
            {"segment": 1, "start_s": 2.6, "end_s": 3.0, "chars": [0, 5]},
        ],
        [{"segment": 0, "start_s": 0.0, "end_s": 0.5, "chars": [0, 7]}],
    ]
    entries = assemble.timeline(
        parts,
        [record(p.key, tmp_path, np.zeros(10), 8000, t) for p, t in zip(parts, timelines, strict=True)],
        (0.0, 5.0),
    )
    assert [(e.segment, e.start_s, e.end_s, e.text) for e in entries] == [
        (0, 0.0, 1.0, "First part."),
        (0, 1.3, 2.0, "Still first."),
        (1, 2.6, 3.0, "Tail."),
        (2, 5.0, 5.5, "Second."),
    ]
    marks = assemble.chapter_marks(parts, (0.0, 5.0), 5.5)
    assert marks == [assemble.ChapterMark("C0", 0.0, 5.0), assemble.ChapterMark("C1", 5.0, 5.5)]
    assert assemble.chapters_text(marks) == "00:00:00.000 C0\n00:00:05.000 C1\n"


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffmpeg is not installed")
@pytest.mark.parametrize("fmt", ["m4b", "mp3"])
def test_m4b_and_mp3_carry_the_chapter_markers(tmp_path, fmt):
    rate = 24000
    samples = (0.1 * np.sin(np.arange(3 * rate) * 2 * np.pi * 220 / rate)).astype(np.float32)
    marks = [assemble.ChapterMark("One = first", 0.0, 1.25), assemble.ChapterMark("Two", 1.25, 3.0)]
    path = tmp_path / f"book.{fmt}"
    path.write_bytes(assemble.encode(samples, rate, fmt, marks, "A Book"))
    probe = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_chapters", "-show_format", "-of", "json", str(path)],
            capture_output=True, check=True, text=True,
        ).stdout
    )  # fmt: skip
    chapters = [(c["tags"]["title"], float(c["start_time"]), float(c["end_time"])) for c in probe["chapters"]]
    assert chapters == [("One = first", 0.0, 1.25), ("Two", 1.25, 3.0)]
    assert probe["format"]["tags"]["title"] == "A Book"
    assert abs(float(probe["format"]["duration"]) - 3.0) < 0.05


def test_manifest_keeps_only_intact_results_for_the_same_input(tmp_path):
    out = tmp_path / "book.mp3"
    folder = parts_dir(out)
    folder.mkdir()
    manifest = Manifest(manifest_path(out), seed=5)
    kept, altered, dropped = (record(k, folder, np.zeros(100, np.float32), 8000) for k in ("a", "b", "c"))
    for r in (kept, altered, dropped):
        manifest.record(r)
    (folder / "b.flac").write_bytes(flac(np.ones(100, np.float32) * 0.5, 8000))
    loaded = Manifest.load(tmp_path / "book.manifest.json")
    assert loaded.seed == 5 and set(loaded.parts) == {"a", "b", "c"}
    assert loaded.done("a", "h-a", folder) == kept
    assert loaded.done("a", "another input", folder) is None
    assert loaded.done("b", "h-b", folder) is None  # its audio changed on disk
    loaded.keep_only({"a", "b"}, folder)
    assert not (folder / "c.flac").exists()
    assert set(Manifest.load(manifest_path(out)).parts) == {"a", "b"}


def test_a_broken_manifest_is_a_usage_error(tmp_path):
    (tmp_path / "book.manifest.json").write_text("{nope")
    with pytest.raises(UsageError, match="unreadable"):
        Manifest.load(tmp_path / "book.manifest.json")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "http://127.0.0.1:9", "--job", "[]"], "--job must be a JSON object"),
        (["--url", "http://127.0.0.1:9", "--parallel", "0"], "--parallel must be at least 1"),
        (["--endpoint-id", "abc"], "needs an API key"),
        (["--url", "http://127.0.0.1:9", "--voice", "Ryan", "--ref-audio", "x.wav"], "not both"),
    ],
    ids=["job-not-object", "parallel-0", "endpoint-without-key", "voice-and-ref"],
)
def test_usage_errors_exit_2_before_any_request(tmp_path, capsys, argv, message):
    (tmp_path / "b.txt").write_text("Hello.")
    assert long_form.main([str(tmp_path / "b.txt"), "--out", str(tmp_path / "b.mp3"), *argv], env={}) == 2
    assert message in capsys.readouterr().err


def test_the_client_never_imports_torch():
    code = "import sys; import scripts.long_form; print('torch' in sys.modules, 'qwen_tts' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def speechlike(rate: int, seconds: float) -> np.ndarray:
    """Noise bursts with pauses and a quiet opening: something for the gates to do."""
    n = int(rate * seconds)
    rng = np.random.default_rng(0)
    on = (np.sin(np.arange(n) / rate * 2 * np.pi * 0.3) > -0.2).astype(np.float32)
    x = rng.standard_normal(n).astype(np.float32) * 0.05 * on
    x[: rate * 5] *= 0.001
    return x


@pytest.mark.parametrize("rate", [16000, 22050, 24000], ids=["16k", "22k", "24k"])
def test_windowed_loudness_matches_the_workers_meter(rate):
    x = speechlike(rate, 47.33)
    assert assemble.integrated_loudness_lufs(x, rate) == pytest.approx(postprocess.measure_loudness(x, rate), abs=0.01)


@pytest.mark.parametrize(
    ("target", "peak_limited"), [(-18.0, False), (-6.0, True)], ids=["reaches-target", "peak-bound"]
)
def test_a_long_book_is_levelled_in_windows_under_the_ceiling(target, peak_limited):
    rate = 16000
    x = speechlike(rate, 47.33)
    y = assemble.level(x.copy(), rate, target, whole_max_s=10.0)  # "long": the windowed path
    assert postprocess.true_peak_dbtp(y, rate) <= -1.0
    loudness = postprocess.measure_loudness(y, rate)
    if peak_limited:
        assert loudness < target - 1.0  # quieter than asked, never clipped
    else:
        assert loudness == pytest.approx(target, abs=0.02)


def readme_long_form_commands() -> list[list[str]]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Books and long podcasts across many workers\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if "scripts/long_form.py" in line]
    return [c[c.index("scripts/long_form.py") + 1 :] for c in commands]


@pytest.mark.parametrize("argv", readme_long_form_commands(), ids=lambda argv: argv[0])
def test_readme_commands_parse(argv):
    args = long_form.parse_args(argv)
    options, _ = long_form.options_of(args)
    assert options.fmt == args.out.suffix.lstrip(".")


@pytest.mark.parametrize("bar", [True, False], ids=["bar", "lines"])
def test_progress_shows_parts_characters_and_audio(bar):
    stream = io.StringIO()
    progress = Progress(stream, bar=bar)
    progress.start(parts_total=4, chars_total=400, parts_done=1, chars_done=100, audio_s=6.0)
    progress.part_done("c0000-p001", 100, 7.5)
    progress.close()
    text = stream.getvalue()
    if bar:
        assert "parts 2/4" in text and "200/400" in text and "14 s audio" in text
    else:
        assert text.splitlines()[0] == "1/4 parts done (100/400 characters) before this run"
        assert re.fullmatch(
            r"part c0000-p001 done: 2/4 parts, 200/400 characters, 13\.5 s of audio, about \d+ s left",
            text.splitlines()[1],
        )
