"""scripts/long_form.py against real workers: two `handler.py --rp_serve_api` processes on loopback (through
tests/flaky_handler.py: the first's first synthesis job fails, and a job may ask to be slow), the runpod client's
real requests, the tiny checkpoint. A part failing once, a run killed mid-way and resumed, an edited chapter, the
joined duration, captions across part boundaries, chapters in an m4b, a cloned voice saved once.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import soundfile as sf

from scripts import long_form
from scripts.longform.errors import RunFailed
from scripts.longform.fanout import LocalApiQueue
from scripts.longform.manifest import Manifest, parts_dir
from scripts.longform.plan import Pauses
from scripts.longform.runner import Options, Progress, VoicePlan, parts_of, run
from tests.conftest import SPEECH_TEXT
from tests.test_runpod_local import free_port, worker_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BOOK = """# The First Chapter

It was a bright cold day in April. The clocks were striking thirteen.

A second paragraph follows here, and it is short.

# The Second Chapter

Another chapter begins. It has two sentences. And a third one, which is a little longer than the others.

Last words.
"""
SEED = 7
PART_CHARS = 80
JOB = {"params": {"max_new_tokens": 4}}
PAUSES = Pauses(chapter_ms=1500, paragraph_ms=500)
OPTIONS = Options(fmt="wav", part_chars=PART_CHARS, parallel=2, pauses=PAUSES, job_fields=JOB)


@contextlib.contextmanager
def workers(model_dir: Path, logs: Path, envs: list[dict[str, str]]):
    """One `tests/flaky_handler.py --rp_serve_api` per env, started together; yields their URLs."""
    procs, urls = [], []
    for i, extra in enumerate(envs):
        port = free_port()
        log = open(logs / f"worker{i}.log", "w")  # noqa: SIM115 - the process writes it until the end
        argv = [sys.executable, "tests/flaky_handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1"]
        env = worker_env(model_dir, **extra)
        proc = subprocess.Popen([*argv, "--rp_api_port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log)
        procs.append((proc, log))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 240
        for url, (proc, _) in zip(urls, procs, strict=True):
            while True:
                assert proc.poll() is None, f"worker {url} exited: {(logs / 'worker0.log').read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"worker {url} did not come up"
                try:
                    requests.get(f"{url}/docs", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.3)
        yield urls
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()


@pytest.fixture(scope="module")
def urls(tiny_model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("long-form-workers")
    voices = logs / "voices"  # one network volume for both
    common = {"QWEN_TTS_PRELOAD": "0.6B-CustomVoice", "QWEN_TTS_VOICE_DIR": str(voices)}
    with workers(tiny_model_dir, logs, [{**common, "FLAKY_FAIL_FIRST": "1"}, common]) as started:
        yield started


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("book") / "book.md"
    path.write_text(BOOK)
    return path


@pytest.fixture(scope="module")
def first_run(urls, book, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1") / "book.wav"
    lines = io.StringIO()
    report = run(book, out, [LocalApiQueue(u) for u in urls], options=OPTIONS, voice=VoicePlan(voice="Ryan"),
                 seed=SEED, progress=Progress(lines, bar=False))  # fmt: skip
    return report, lines.getvalue()


def srt_cues(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    cues = []
    for block in text.strip().split("\n\n"):
        _, timing, *lines = block.split("\n")
        start, end = timing.split(" --> ")
        cues.append((seconds(start), seconds(end), " ".join(lines)))
    return cues


def test_a_book_across_two_workers_with_a_part_failing_once(first_run, urls, book):
    report, lines = first_run
    parts = parts_of(book, options=OPTIONS, seed=SEED)
    assert [p.key for p in parts] == ["c0000-p000", "c0000-p001", "c0000-p002", "c0001-p000", "c0001-p001"]
    assert (report.parts_total, report.parts_fetched, report.parts_reused, report.retries) == (5, 5, 0, 1)
    assert sorted(r.attempts for r in report.records) == [1, 1, 1, 1, 2]
    assert {r.worker for r in report.records} == set(urls)
    assert re.search(r"part c\d{4}-p\d{3}: job \S+ FAILED: internal: injected failure; try 2 of 4", lines)

    # the joined track is the parts' audio plus the pauses between them, to the sample
    rate = report.records[0].sample_rate
    assert {r.sample_rate for r in report.records} == {rate}
    part_frames = [sf.info(parts_dir(report.out) / r.file).frames for r in report.records]
    pauses = [round(rate * p.pause_before_ms / 1000) for p in parts]
    assert pauses == [0, rate // 2, rate // 2, rate * 3 // 2, rate * 3 // 10]  # the last continues a paragraph
    info = sf.info(report.out)
    assert (info.samplerate, info.frames) == (rate, sum(part_frames) + sum(pauses))
    assert report.duration_s == info.frames / rate

    # chapters where their first parts start; captions in book order, across part boundaries
    starts = [(sum(part_frames[:i]) + sum(pauses[: i + 1])) / rate for i in range(len(parts))]
    assert report.chapters.read_text() == (
        f"00:00:00.000 The First Chapter\n00:00:{starts[3]:06.3f} The Second Chapter\n"
    )
    cues = srt_cues(report.captions.read_text())
    spoken = " ".join(s["text"] for p in parts for s in p.segments)
    assert " ".join(text for _, _, text in cues) == spoken
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(cues))
    first_cue_of_part = [next(c for c in cues if abs(c[0] - s) < 0.0015) for s in starts]
    assert [c[2] for c in first_cue_of_part] == [
        "The First Chapter.",
        "It was a bright cold day in April.",
        "A second paragraph follows here, and it is short.",
        "The Second Chapter.",
        "And a third one, which is a little longer than the others.",
    ]


def test_another_format_is_a_rejoin_with_chapter_markers(first_run, urls, book):
    report, _ = first_run
    again = run(book, report.out.with_suffix(".m4b"), [LocalApiQueue(u) for u in urls],
                options=Options(**{**OPTIONS.__dict__, "fmt": "m4b"}), voice=VoicePlan(voice="Ryan"), seed=SEED,
                progress=Progress(io.StringIO(), bar=False))  # fmt: skip
    assert (again.parts_fetched, again.parts_reused) == (0, 5)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_chapters", "-of", "json", str(again.out)],
                           capture_output=True, text=True, check=True)  # fmt: skip
    titles = [c["tags"]["title"] for c in json.loads(probe.stdout)["chapters"]]
    assert titles == ["The First Chapter", "The Second Chapter"]


def cli_argv(book: Path, out: Path, url: str, job: dict) -> list[str]:
    return [str(book), "--out", str(out), "--url", url, "--parallel", "1", "--seed", str(SEED), "--part-chars",
            str(PART_CHARS), "--job", json.dumps(job), "--voice", "Ryan", "--chapter-pause-ms", "1500",
            "--paragraph-pause-ms", "500", "--retry-backoff", "0.1", "--progress", "lines"]  # fmt: skip


def test_a_run_killed_mid_way_resumes_with_the_missing_parts_only_and_the_same_audio(first_run, urls, book, tmp_path):
    report, _ = first_run
    local = tmp_path / "book.md"
    local.write_text(BOOK)
    out = tmp_path / "book.wav"
    # A worker that takes 0.6 s a part (the field is removed before the real handler sees it).
    argv = cli_argv(local, out, urls[1], {**JOB, "_delay_s": 0.6})
    proc = subprocess.Popen([sys.executable, "scripts/long_form.py", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    manifest_file = tmp_path / "book.manifest.json"
    deadline = time.monotonic() + 60
    while not (manifest_file.exists() and len(json.loads(manifest_file.read_text())["parts"]) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    before = Manifest.load(manifest_file).parts
    assert 2 <= len(before) < 5 and not out.exists()

    assert long_form.main(argv, env={}) == 0
    after = Manifest.load(manifest_file).parts
    assert {k: r.job_id for k, r in after.items() if k in before} == {k: r.job_id for k, r in before.items()}
    assert len(after) == 5
    # same book, same seed, same voice and settings: the same audio as the uninterrupted run on two workers
    assert out.read_bytes() == report.out.read_bytes()

    # an edited chapter: only its parts are fetched again
    local.write_text(BOOK.replace("Last words.", "The very last words."))
    assert long_form.main(argv, env={}) == 0
    edited = Manifest.load(manifest_file).parts
    changed = {k for k in edited if edited[k].job_id != after[k].job_id}
    assert changed == {"c0001-p001"}


def test_a_cloned_voice_is_saved_once_and_every_part_speaks_it(urls, book, tmp_path, speech_wav):
    ref = tmp_path / "ref.wav"
    ref.write_bytes(speech_wav)
    voice = VoicePlan(ref_audio=ref, ref_text=SPEECH_TEXT)
    targets = [LocalApiQueue(u) for u in urls]
    report = run(book, tmp_path / "cloned.flac", targets, options=Options(**{**OPTIONS.__dict__, "fmt": "flac"}),
                 voice=voice, seed=SEED, progress=Progress(io.StringIO(), bar=False))  # fmt: skip
    manifest = Manifest.load(report.manifest)
    voice_id = manifest.voice["voice_id"]
    assert re.fullmatch(r"v_[0-9a-f]{16}", voice_id)
    listed = requests.post(f"{urls[0]}/runsync", json={"input": {"action": "list_voices"}}, timeout=60).json()
    assert [v["voice_id"] for v in listed["output"]["voices"] if v["name"].startswith("long-form ")] == [voice_id]
    # a second book with the same reference finds the voice by name instead of saving another
    again = run(book, tmp_path / "again" / "cloned.flac", targets,
                options=Options(**{**OPTIONS.__dict__, "fmt": "flac"}), voice=voice, seed=SEED,
                progress=Progress(io.StringIO(), bar=False))  # fmt: skip
    assert Manifest.load(again.manifest).voice["voice_id"] == voice_id
    assert again.out.read_bytes() == report.out.read_bytes()


def test_a_part_the_worker_refuses_is_not_retried(urls, book, tmp_path):
    with pytest.raises(RunFailed) as failed:
        run(book, tmp_path / "book.wav", [LocalApiQueue(u) for u in urls], options=OPTIONS,
            voice=VoicePlan(voice="nobody"), seed=SEED, progress=Progress(io.StringIO(), bar=False))  # fmt: skip
    messages = str(failed.value).split("; ")
    assert len(messages) == 5
    assert all(
        "FAILED: invalid_input: segments[0]: unknown voice 'nobody'" in m and m.endswith("(after 1 tries)")
        for m in messages
    )
    assert Manifest.load(tmp_path / "book.manifest.json").parts == {}
