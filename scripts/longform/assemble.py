"""The parts as one book: joined with the worker's joiner (the parts' pauses between them), levelled as one
track, encoded once (m4b with chapter markers through ffmpeg, or the worker's encoders), and the parts' timelines
shifted by their offsets into captions and a chapters file.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf

from audio.output import encoders, joiner, postprocess
from audio.text import captions
from scripts.longform.errors import AssemblyError, UsageError
from scripts.longform.manifest import PartRecord
from scripts.longform.plan import Part

FORMATS = ("mp3", "m4b", "aac", "flac", "wav", "opus")
M4B_BITRATE = "64k"  # mono speech; what audiobook stores ship
FFMPEG_TIMEOUT_S = 3600
TRUE_PEAK_DBTP = -1.0
LEVEL_WHOLE_MAX_S = 1800.0  # longer books are levelled window by window (see `level`)
LEVEL_WINDOW_S = 600.0
PEAK_OVERLAP = 64  # samples shared by neighbouring windows, so a peak between them is oversampled whole


@dataclass(frozen=True)
class ChapterMark:
    title: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Track:
    samples: np.ndarray
    sample_rate: int
    part_starts_s: tuple[float, ...]  # where each part's audio starts in the track

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def join_parts(parts: Sequence[Part], records: Sequence[PartRecord], folder: Path) -> Track:
    """The parts' audio in order, `pause_before_ms` of silence before each; all at the rate they came back at."""
    audios = []
    rates = set()
    for record in records:
        samples, rate = sf.read(folder / record.file, dtype="float32", always_2d=True)
        audios.append(samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0])
        rates.add(int(rate))
    if len(rates) != 1:
        raise AssemblyError(f"the parts came back at different sample rates {sorted(rates)}: give them one rate")
    rate = rates.pop()
    pauses = [0] + [round(rate * p.pause_before_ms / 1000.0) for p in parts[1:]]
    samples = joiner.join([[a] for a in audios], pauses, crossfade=0)
    spans = joiner.layout([[len(a)] for a in audios], pauses, 0)
    return Track(samples, rate, tuple(seg[0][0] / rate for seg in spans))


def level(
    samples: np.ndarray, sample_rate: int, loudness_lufs: float | None, *, whole_max_s: float = LEVEL_WHOLE_MAX_S
) -> np.ndarray:
    """The whole book to one integrated loudness, true peak under -1 dBTP.

    Up to `whole_max_s` of audio: the worker's levelling (BS.1770 with a look-ahead limiter). Longer: that would
    hold several float64 copies and a 4x oversampled one at once (a 10-hour book at 24 kHz: tens of GB), so the
    loudness is measured in windows (`integrated_loudness_lufs`, the same gating), one gain applied in place,
    and lowered if a window's true peak would pass the ceiling (no limiter: the book may end up quieter than
    asked, never clipped)."""
    if loudness_lufs is None:
        return samples
    if len(samples) <= whole_max_s * sample_rate:
        return postprocess.normalize_loudness(samples, sample_rate, loudness_lufs, true_peak_dbtp=TRUE_PEAK_DBTP)
    loudness = integrated_loudness_lufs(samples, sample_rate)
    if not np.isfinite(loudness):
        return samples
    gain_db = loudness_lufs - loudness
    window = int(LEVEL_WINDOW_S * sample_rate)
    peak_db = max(
        postprocess.true_peak_dbtp(samples[i : i + window + PEAK_OVERLAP], sample_rate)
        for i in range(0, len(samples), window)
    )
    gain_db = min(gain_db, TRUE_PEAK_DBTP - 0.01 - peak_db)
    samples *= np.float32(10.0 ** (gain_db / 20.0))
    return samples


def integrated_loudness_lufs(samples: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness (pyloudnorm's K-weighting, 400 ms blocks every 100 ms, -70 LUFS and
    -10 LU gates) computed window by window with the filter state carried over, so memory stays flat."""
    from scipy import signal

    # pyloudnorm's own filter coefficients for this rate (the version is pinned): the same K-weighting.
    stages = list(pyloudnorm.Meter(sample_rate)._filters.values())
    states = [np.zeros(max(len(f.a), len(f.b)) - 1) for f in stages]
    hop = int(0.1 * sample_rate)
    n_hops = len(samples) // hop
    energies = np.empty(n_hops)
    step = hop * int(LEVEL_WINDOW_S * 10)
    for start in range(0, n_hops * hop, step):
        y = np.asarray(samples[start : min(start + step, n_hops * hop)], dtype=np.float64)
        for k, f in enumerate(stages):
            y, states[k] = signal.lfilter(f.b, f.a, y, zi=states[k])
            y *= f.passband_gain
        energies[start // hop : start // hop + len(y) // hop] = np.square(y).reshape(-1, hop).sum(axis=1)
    n_blocks = round((len(samples) / sample_rate - 0.4) / 0.1) + 1
    block = int(0.4 * sample_rate)
    z = np.convolve(energies, np.ones(4), mode="valid")[:n_blocks] / block
    with np.errstate(divide="ignore"):
        loud = -0.691 + 10.0 * np.log10(z)
    gated = z[loud >= -70.0]
    if gated.size == 0:
        return float("-inf")
    relative = -0.691 + 10.0 * np.log10(gated.mean()) - 10.0
    kept = z[(loud > relative) & (loud > -70.0)]
    return float(-0.691 + 10.0 * np.log10(kept.mean())) if kept.size else float("-inf")


def timeline(parts: Sequence[Part], records: Sequence[PartRecord], starts_s: Sequence[float]) -> list:
    """Every chunk of the book with its text, in the book's time: each part's timeline shifted by its start."""
    out = []
    segment_base = 0
    for part, record, start_s in zip(parts, records, starts_s, strict=True):
        for entry in record.timeline:
            a, b = entry["chars"]
            text = part.segments[entry["segment"]]["text"][a:b]
            out.append(
                captions.TimedText(
                    segment_base + entry["segment"], start_s + entry["start_s"], start_s + entry["end_s"], text
                )
            )
        segment_base += len(part.segments)
    return out


def chapter_marks(parts: Sequence[Part], starts_s: Sequence[float], duration_s: float) -> list[ChapterMark]:
    """A mark where each chapter's first part starts (untitled chapters are numbered), ending at the next one."""
    firsts = [(p, s) for p, s in zip(parts, starts_s, strict=True) if p.first_in_chapter]
    marks = []
    for i, (part, start_s) in enumerate(firsts):
        end_s = firsts[i + 1][1] if i + 1 < len(firsts) else duration_s
        marks.append(ChapterMark(part.chapter_title or f"Chapter {part.chapter + 1}", start_s, end_s))
    return marks


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def chapters_text(marks: Sequence[ChapterMark]) -> str:
    """One line a chapter, `HH:MM:SS.mmm Title` (the form podcast apps and video sites read)."""
    return "".join(f"{_stamp(m.start_s)} {m.title}\n" for m in marks)


def ffmetadata(marks: Sequence[ChapterMark], title: str) -> str:
    def esc(value: str) -> str:
        return "".join(f"\\{c}" if c in "=;#\\\n" else c for c in value)

    lines = [";FFMETADATA1", f"title={esc(title)}"]
    for m in marks:
        lines += [
            "[CHAPTER]",
            "TIMEBASE=1/1000",
            f"START={round(m.start_s * 1000)}",
            f"END={round(m.end_s * 1000)}",
            f"title={esc(m.title)}",
        ]
    return "\n".join(lines) + "\n"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt in ("m4b", "aac") and shutil.which("ffmpeg") is None:
        raise UsageError(f"{fmt} needs ffmpeg, which is not installed")


def encode(samples: np.ndarray, sample_rate: int, fmt: str, marks: Sequence[ChapterMark], title: str) -> bytes:
    """The track in `fmt`, once. m4b is AAC in MP4 with the chapter markers (ffmpeg); mp3 is the worker's encoder
    with the markers added as ID3 chapter frames when ffmpeg is there (a copy, nothing re-encoded); the other
    containers carry no chapters (the chapters file does)."""
    if fmt == "m4b":
        pcm = np.clip(np.asarray(samples, dtype="<f4"), -1.0, 1.0).tobytes()
        source = ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1"]
        return _with_chapters(pcm, source, ["-c:a", "aac", "-b:a", M4B_BITRATE, "-movflags", "+faststart", "-f", "mp4"],
                              marks, title)  # fmt: skip
    audio = encoders.encode(samples, sample_rate, fmt)
    if fmt == "mp3" and marks and shutil.which("ffmpeg") is not None:
        return _with_chapters(audio, ["-f", "mp3"], ["-c", "copy", "-id3v2_version", "3", "-f", "mp3"], marks, title)
    return audio


def _with_chapters(
    data: bytes, source_args: list[str], output_args: list[str], marks: Sequence[ChapterMark], title: str
) -> bytes:
    """ffmpeg: `data` (described by `source_args`) out through `output_args`, with the title and chapters."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UsageError("chapter markers in this format need ffmpeg, which is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        meta = Path(tmp) / "chapters.txt"
        meta.write_text(ffmetadata(marks, title), encoding="utf-8")
        out = Path(tmp) / "book"
        cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", *source_args, "-i", "pipe:0", "-i", str(meta),
               "-map", "0:a", "-map_metadata", "1", "-map_chapters", "1", *output_args, str(out)]  # fmt: skip
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise AssemblyError(f"ffmpeg failed adding chapters: {done.stderr.decode(errors='replace')[-500:]}")
        return out.read_bytes()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def duration_of(audio: bytes) -> tuple[int, int]:
    """(frames, sample rate) of a part's lossless audio."""
    info = sf.info(io.BytesIO(audio))
    return int(info.frames), int(info.samplerate)
