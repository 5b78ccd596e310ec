"""`run`: a book or podcast from its file to one audio file, through many jobs, resumable (see the package doc)."""

from __future__ import annotations

import base64
import hashlib
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from audio.text import captions
from scripts.longform import assemble
from scripts.longform.errors import PartFailed, RunFailed, UsageError
from scripts.longform.fanout import JobQueue, Retry, Task, fan_out, job_error
from scripts.longform.manifest import Manifest, PartRecord, file_sha256, manifest_path, parts_dir
from scripts.longform.plan import DEFAULT_PART_CHARS, Part, Pauses, input_hash, part_input, plan_parts
from scripts.longform.source import read_source

TRANSFER_FORMAT = "flac"  # lossless and half of wav's size: the book is encoded once, here
VOICE_TIMEOUT_S = 600


@dataclass(frozen=True)
class VoicePlan:
    """One voice for every part: a preset or saved `voice_id`, or a reference clip saved as a voice first."""

    voice: str | None = None
    ref_audio: Path | None = None
    ref_text: str | None = None
    x_vector_only: bool = False


@dataclass(frozen=True)
class Options:
    fmt: str = "mp3"
    part_chars: int = DEFAULT_PART_CHARS
    parallel: int = 4
    pauses: Pauses = field(default_factory=Pauses)
    loudness_lufs: float | None = -18.0  # audiobook practice (ACX asks -18 to -23 dB RMS); -16 for podcasts
    captions: str | None = "srt"
    chapter_regex: str | None = None
    job_fields: dict[str, Any] = field(default_factory=dict)  # model, language, params...: every part gets them
    retry: Retry = field(default_factory=Retry)


@dataclass(frozen=True)
class Report:
    out: Path
    manifest: Path
    captions: Path | None
    chapters: Path
    parts_total: int
    parts_fetched: int
    parts_reused: int
    retries: int
    duration_s: float
    wall_s: float
    join_s: float  # joining, levelling, encoding and writing, after the last part came back
    records: tuple[PartRecord, ...]


class Progress:
    """Parts, characters, audio seconds and the time left: a tqdm bar on a terminal, plain lines elsewhere."""

    def __init__(self, stream: TextIO | None = None, *, bar: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bar_on = self.stream.isatty() if bar is None else bar
        self.lock = threading.Lock()
        self.bar: Any = None

    def start(self, parts_total: int, chars_total: int, parts_done: int, chars_done: int, audio_s: float) -> None:
        self.parts_total, self.chars_total = parts_total, chars_total
        self.parts_done, self.chars_done, self.audio_s = parts_done, chars_done, audio_s
        self.started, self.chars_at_start = time.monotonic(), chars_done
        if self.bar_on:
            from tqdm import tqdm

            self.bar = tqdm(
                total=chars_total,
                initial=chars_done,
                unit="char",
                unit_scale=True,
                file=self.stream,
                dynamic_ncols=True,
            )
            self._describe()
        else:
            self.line(f"{parts_done}/{parts_total} parts done ({chars_done}/{chars_total} characters) before this run")

    def _describe(self) -> None:
        self.bar.set_description(f"parts {self.parts_done}/{self.parts_total}", refresh=False)
        self.bar.set_postfix_str(f"{self.audio_s:.0f} s audio")

    def line(self, text: str) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def part_done(self, key: str, chars: int, duration_s: float) -> None:
        with self.lock:
            self.parts_done += 1
            self.chars_done += chars
            self.audio_s += duration_s
            if self.bar is not None:
                self._describe()
                self.bar.update(chars)
                return
            elapsed = time.monotonic() - self.started
            rate = (self.chars_done - self.chars_at_start) / elapsed if elapsed > 0 else 0.0
            left = f", about {(self.chars_total - self.chars_done) / rate:.0f} s left" if rate > 0 else ""
        self.line(
            f"part {key} done: {self.parts_done}/{self.parts_total} parts, {self.chars_done}/{self.chars_total} "
            f"characters, {self.audio_s:.1f} s of audio{left}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _wait_job(target: JobQueue, job_input: dict[str, Any]) -> dict[str, Any]:
    job_id = target.submit(job_input)
    body = target.wait(job_id, deadline=time.monotonic() + VOICE_TIMEOUT_S, stop=threading.Event())
    if body.get("status") != "COMPLETED" or not isinstance(body.get("output"), dict):
        code, message = job_error(body)
        raise PartFailed("voice", f"{job_input.get('action')}: {code}: {message}", retriable=False)
    return body["output"]


def voice_fields(plan: VoicePlan, target: JobQueue, manifest: Manifest) -> dict[str, Any]:
    """The job fields that give every part the same voice. A reference clip is saved as a voice once (its id kept
    in the manifest, found by name if an earlier run saved it), so every part uses the same clone prompt."""
    if plan.ref_audio is None:
        return {"voice": plan.voice} if plan.voice else {}
    try:
        clip = plan.ref_audio.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --ref-audio: {exc}") from None
    digest = hashlib.sha256(clip + f"\0{plan.ref_text}\0{plan.x_vector_only}".encode()).hexdigest()
    if manifest.voice.get("ref_sha256") == digest:
        return {"voice": manifest.voice["voice_id"]}
    name = f"long-form {digest[:16]}"
    job = {
        "action": "create_voice",
        "name": name,
        "ref_audio": base64.b64encode(clip).decode("ascii"),
        "x_vector_only": plan.x_vector_only,
    }
    if plan.ref_text:
        job["ref_text"] = plan.ref_text
    try:
        voice_id = _wait_job(target, job)["voice_id"]
    except PartFailed:
        listed = _wait_job(target, {"action": "list_voices"}).get("voices") or []
        found = [v["voice_id"] for v in listed if v.get("name") == name]
        if not found:
            raise
        voice_id = found[0]
    manifest.voice = {"ref_sha256": digest, "voice_id": voice_id}
    manifest.save()
    return {"voice": voice_id}


def run(
    source_path: Path,
    out: Path,
    targets: Sequence[JobQueue],
    *,
    options: Options,
    voice: VoicePlan,
    seed: int | None = None,
    progress: Progress | None = None,
) -> Report:
    """Speak `source_path` into `out` through `targets` (see the package doc); resumes from the manifest beside
    `out`. RunFailed if parts failed after every retry (the rest is kept), Cancelled on Ctrl-C."""
    started = time.monotonic()
    assemble.check_format(options.fmt)
    if options.captions not in (None, *captions.FORMATS):
        raise UsageError(f"unknown captions format {options.captions!r}: use srt or vtt")
    if not targets:
        raise UsageError("give a local API (--url) or an endpoint (--endpoint-id)")
    source = read_source(source_path, chapter_regex=options.chapter_regex)
    progress = progress or Progress()
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = parts_dir(out)
    folder.mkdir(exist_ok=True)
    manifest = Manifest.load(manifest_path(out))
    if manifest is None:
        manifest = Manifest(manifest_path(out), seed if seed is not None else random.randrange(2**31))
    elif seed is not None:
        manifest.seed = seed  # a new seed: every part's input changes, so every part is fetched again
    manifest.save()

    fields = {**source.job_fields, **options.job_fields, **voice_fields(voice, targets[0], manifest)}
    parts = plan_parts(source, part_chars=options.part_chars, job_seed=manifest.seed, pauses=options.pauses)
    inputs = {
        p.key: part_input(p, fields, paragraph_pause_ms=options.pauses.paragraph_ms, transfer_format=TRANSFER_FORMAT)
        for p in parts
    }
    hashes = {key: input_hash(job) for key, job in inputs.items()}
    manifest.keep_only(set(inputs), folder)
    reused = {p.key: r for p in parts if (r := manifest.done(p.key, hashes[p.key], folder)) is not None}
    todo = [Task(p.key, inputs[p.key], p.chars) for p in parts if p.key not in reused]
    retries = [0]

    def done(task: Task, result: Any, attempts: int) -> None:
        try:
            frames, rate = assemble.duration_of(result.audio)
        except RuntimeError as exc:  # libsndfile: not audio
            raise PartFailed(
                task.key, f"job {result.job_id}: the audio does not decode: {exc}", retriable=True
            ) from None
        name = f"{task.key}.{TRANSFER_FORMAT}"
        assemble.write_atomic(folder / name, result.audio)
        generation_s = result.metadata.get("generation_time_seconds")
        record = PartRecord(
            key=task.key,
            input_hash=hashes[task.key],
            file=name,
            audio_sha256=file_sha256(folder / name),
            sample_rate=rate,
            duration_s=frames / rate,
            timeline=list(result.metadata.get("timeline") or []),
            job_id=result.job_id,
            worker=result.worker,
            attempts=attempts,
            wall_s=round(result.wall_s, 3),
            worker_s=float(generation_s) if generation_s is not None else None,
            chars=task.chars,
        )
        manifest.record(record)
        progress.part_done(task.key, task.chars, record.duration_s)

    def retried(task: Task, attempt: int, error: PartFailed) -> None:
        retries[0] += 1
        progress.line(
            f"{error}; try {attempt + 1} of {options.retry.attempts} in {options.retry.delay_s(attempt):.1f} s"
        )

    progress.start(
        len(parts),
        sum(p.chars for p in parts),
        len(reused),
        sum(r.chars for r in reused.values()),
        sum(r.duration_s for r in reused.values()),
    )
    try:
        fan_out(todo, targets, parallel=options.parallel, retry=options.retry, on_done=done, on_retry=retried)
    finally:
        progress.close()
    records = [manifest.parts.get(p.key) for p in parts]
    missing = [p.key for p, r in zip(parts, records, strict=True) if r is None]
    if missing:
        raise RunFailed(f"parts {', '.join(missing)} are missing")

    join_started = time.monotonic()
    track = assemble.join_parts(parts, records, folder)
    samples = assemble.level(track.samples, track.sample_rate, options.loudness_lufs)
    marks = assemble.chapter_marks(parts, track.part_starts_s, track.duration_s)
    assemble.write_atomic(out, assemble.encode(samples, track.sample_rate, options.fmt, marks, source_path.stem))
    captions_path = None
    if options.captions:
        cue_list = captions.cues(assemble.timeline(parts, records, track.part_starts_s))
        captions_path = out.with_name(f"{out.stem}.{options.captions}")
        assemble.write_atomic(captions_path, captions.render(cue_list, options.captions).encode("utf-8"))
    chapters_path = out.with_name(f"{out.stem}.chapters.txt")
    assemble.write_atomic(chapters_path, assemble.chapters_text(marks).encode("utf-8"))
    finished = time.monotonic()
    return Report(
        out=out,
        manifest=manifest.path,
        captions=captions_path,
        chapters=chapters_path,
        parts_total=len(parts),
        parts_fetched=len(todo),
        parts_reused=len(reused),
        retries=retries[0],
        duration_s=track.duration_s,
        wall_s=finished - started,
        join_s=finished - join_started,
        records=tuple(records),
    )


def parts_of(source_path: Path, *, options: Options, seed: int) -> list[Part]:
    """The plan `run` would make (for dry runs and tests)."""
    source = read_source(source_path, chapter_regex=options.chapter_regex)
    return plan_parts(source, part_chars=options.part_chars, job_seed=seed, pauses=options.pauses)
