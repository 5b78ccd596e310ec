"""The manifest beside the output: the run's seed and voice, and each done part's input hash and result (its audio
file under `<stem>.parts/`, sample rate, duration, timeline). Written atomically after every change, so a crash,
a quota stop or Ctrl-C loses at most the parts in flight; a rerun fetches only parts whose input hash differs or
whose audio file is missing or altered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.longform.errors import UsageError

VERSION = 1


def manifest_path(out: Path) -> Path:
    """`book.mp3` → `book.manifest.json`: one per book whatever the output format, so re-encoding is a rejoin."""
    return out.with_name(f"{out.stem}.manifest.json")


def parts_dir(out: Path) -> Path:
    return out.with_name(f"{out.stem}.parts")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class PartRecord:
    """A done part: what was asked (`input_hash`) and what came back."""

    key: str
    input_hash: str
    file: str  # name under the parts folder
    audio_sha256: str
    sample_rate: int
    duration_s: float
    timeline: list[dict[str, Any]]  # the worker's metadata.timeline, in the part's time
    job_id: str
    worker: str  # the endpoint or local API that answered
    attempts: int
    wall_s: float  # submit to audio on disk, this client's view
    worker_s: float | None  # the job's own generation_time_seconds
    chars: int


@dataclass
class Manifest:
    path: Path
    seed: int
    voice: dict[str, Any] = field(default_factory=dict)  # a cloned reference's hash and its saved voice_id
    parts: dict[str, PartRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            parts = {k: PartRecord(**v) for k, v in data["parts"].items()}
            return cls(path, int(data["seed"]), dict(data.get("voice") or {}), parts)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"the manifest {path} is unreadable ({exc}); move it away to start over") from None

    def save(self) -> None:
        with self._lock:
            data = {
                "version": VERSION,
                "seed": self.seed,
                "voice": self.voice,
                "parts": {k: dataclasses.asdict(r) for k, r in sorted(self.parts.items())},
            }
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
            os.replace(tmp, self.path)

    def record(self, record: PartRecord) -> None:
        with self._lock:
            self.parts[record.key] = record
        self.save()

    def done(self, key: str, input_hash: str, folder: Path) -> PartRecord | None:
        """The part's record if its result is for this very input and its audio is intact."""
        record = self.parts.get(key)
        if record is None or record.input_hash != input_hash:
            return None
        audio = folder / record.file
        if not audio.is_file() or file_sha256(audio) != record.audio_sha256:
            return None
        return record

    def keep_only(self, keys: set[str], folder: Path) -> None:
        """Forget parts the plan no longer has (a shortened chapter) and delete their audio."""
        with self._lock:
            for key in set(self.parts) - keys:
                (folder / self.parts.pop(key).file).unlink(missing_ok=True)
        self.save()
