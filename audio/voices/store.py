"""Saved voices on the network volume (QWEN_TTS_VOICE_DIR): a reference clip, its transcript and metadata,
plus the clone prompts built from it per Base model (safetensors + JSON, never pickle).

Layout, one directory per voice, written atomically (built under a temp name, then renamed), so workers
sharing the volume never see half a voice:

    <voice_dir>/<voice_id>/voice.json                      name, ref_text, x_vector_only, language, source, ...
    <voice_dir>/<voice_id>/reference.wav                   the prepared reference (float32, its own rate)
    <voice_dir>/<voice_id>/prompts/<model>.<icl|xvec>.safetensors + .json
    <voice_dir>/.names/<sha256 of the NFC, case-folded name>   claim on a name: holds the voice_id

Names are unique (case-insensitive, whatever their Unicode normalization): the claim file is created with
O_EXCL, so of two concurrent creates of a name one wins and the other is refused. Ids are generated here and
checked on every use (no path from input). A voice damaged on the volume is listed as damaged (`DamagedVoice`)
and can always be deleted; its reference is checked before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from audio.errors import InputError, quoted
from audio.output import postprocess
from audio.voices.reference import Reference

log = logging.getLogger(__name__)

VOICE_ID = re.compile(r"v_[0-9a-f]{16}")
MAX_NAME_CHARS = 100
FORMAT_VERSION = 1
_STALE_CLAIM_S = 300.0  # a name claim whose voice never appeared (a crashed create) is free again after this
_PROMPT_NAME = re.compile(r"[0-9A-Za-z.-]+")


def is_voice_id(value: str | None) -> bool:
    return value is not None and VOICE_ID.fullmatch(value) is not None


def check_name(raw: Any) -> str:
    """The name as stored: stripped and NFC-normalized ("Café" typed precomposed or decomposed is one name)."""
    if not isinstance(raw, str):
        raise InputError("name must be a string of 1-100 characters")
    if any(unicodedata.category(c) == "Cs" for c in raw):
        raise InputError("name must be valid Unicode text: it holds a lone UTF-16 surrogate")
    name = unicodedata.normalize("NFC", raw.strip())
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise InputError(f"name must be 1-{MAX_NAME_CHARS} characters, got {len(name)}")
    if "/" in name or "\\" in name:
        raise InputError("name must not contain path separators (/ or \\)")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise InputError("name must not contain control characters")
    return name


def name_key(name: str) -> str:
    """What two names are compared by: NFC, case-folded (and NFC again: folding can denormalize)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def check_voice_id(raw: Any) -> str:
    if not isinstance(raw, str) or not is_voice_id(raw):
        shown = repr(raw)[:40]
        raise InputError(f"voice_id {shown} is not a saved voice's id (they look like v_0123456789abcdef)")
    return raw


@dataclass(frozen=True)
class SavedVoice:
    voice_id: str
    name: str
    source: str  # "reference" | "design"
    ref_text: str | None
    x_vector_only: bool
    language: str
    duration_seconds: float
    sample_rate: int
    created_at: float
    instruct: str | None = None  # a designed voice's description

    def public(self, prompt_models: list[str]) -> dict[str, Any]:
        out = asdict(self)
        out["prompts"] = prompt_models
        return out


@dataclass(frozen=True)
class DamagedVoice:
    """A voice whose files on the volume can't be used: listed as such, so it can be found and deleted."""

    voice_id: str
    name: str | None  # None when voice.json itself is unreadable
    problem: str

    def public(self) -> dict[str, Any]:
        return {"voice_id": self.voice_id, "name": self.name, "damaged": True, "problem": self.problem}


def _corrupt(voice_id: str, detail: str | None = None) -> InputError:
    why = f" ({detail})" if detail else ""
    return InputError(f"voice {voice_id} is corrupt on the volume{why}; delete it and create it again")


class VoiceStore:
    def __init__(self, root: Path, *, max_voices: int = 1000, readonly: bool = False):
        self.root = Path(root)
        self.max_voices = max_voices
        self.readonly = readonly

    # -- writing --------------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        if self.readonly:
            raise InputError(
                "saved voices on this endpoint are read-only (QWEN_TTS_VOICES_READONLY): an operator manages them"
            )

    def _ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if is_voice_id(p.name) and p.is_dir())

    def create(
        self,
        name: str,
        reference: Reference,
        *,
        source: str,
        ref_text: str | None,
        x_vector_only: bool,
        language: str,
        instruct: str | None = None,
    ) -> SavedVoice:
        self.check_writable()
        name = check_name(name)
        # Claims made before names were normalized hash another spelling: the stored names are checked too.
        taken = next((v for v in self.list() if isinstance(v, SavedVoice) and name_key(v.name) == name_key(name)), None)
        if taken is not None:
            raise InputError(f"a voice named {quoted(name)} already exists (voice_id {taken.voice_id})")
        if len(self._ids()) >= self.max_voices:
            raise InputError(
                f"this endpoint already has {self.max_voices} saved voices (QWEN_TTS_MAX_SAVED_VOICES); "
                "delete some first"
            )
        voice = SavedVoice(
            voice_id="v_" + secrets.token_hex(8),
            name=name,
            source=source,
            ref_text=None if x_vector_only else ref_text,
            x_vector_only=x_vector_only,
            language=language,
            duration_seconds=round(reference.duration_s, 3),
            sample_rate=reference.sample_rate,
            created_at=round(time.time(), 3),
            instruct=instruct,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".tmp-{voice.voice_id}"
        staging.mkdir()
        try:
            sf.write(staging / "reference.wav", reference.samples, reference.sample_rate, subtype="FLOAT")
            record = {"format_version": FORMAT_VERSION, **asdict(voice)}
            (staging / "voice.json").write_text(json.dumps(record, ensure_ascii=False, indent=1))
            (staging / "prompts").mkdir()
            self._claim(name, voice.voice_id)
            staging.rename(self.root / voice.voice_id)  # the voice appears whole, or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return voice

    def _claim_path(self, name: str) -> Path:
        return self.root / ".names" / hashlib.sha256(name_key(name).encode()).hexdigest()

    def _claim(self, name: str, voice_id: str) -> None:
        path = self._claim_path(name)
        path.parent.mkdir(exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = path.read_text().strip()
                    age_s = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue  # deleted meanwhile: try again
                if is_voice_id(holder) and (self.root / holder).is_dir():
                    raise InputError(f"a voice named {quoted(name)} already exists (voice_id {holder})") from None
                if age_s < _STALE_CLAIM_S:
                    raise InputError(f"a voice named {quoted(name)} is being created by another request") from None
                path.unlink(missing_ok=True)  # a crashed create's claim
                continue
            with os.fdopen(fd, "w") as f:
                f.write(voice_id)
            return
        raise InputError(f"a voice named {quoted(name)} is being created by another request")

    def delete(self, voice_id: str) -> SavedVoice | DamagedVoice:
        """Delete a voice by id whatever state its files are in (a damaged voice is deleted too)."""
        self.check_writable()
        voice_id = check_voice_id(voice_id)
        voice = self.inspect(voice_id, check_reference=False)
        trash = self.root / f".trash-{voice_id}-{secrets.token_hex(4)}"
        try:
            (self.root / voice_id).rename(trash)  # gone for every reader at once
        except FileNotFoundError:
            raise InputError(f"voice {voice_id} does not exist (list_voices shows the saved ones)") from None
        shutil.rmtree(trash, ignore_errors=True)
        self._release_claims(voice_id)
        return voice

    def _release_claims(self, voice_id: str) -> None:
        # Every claim holding this id: its name may be unreadable, or claimed under an older spelling's hash.
        names = self.root / ".names"
        if not names.is_dir():
            return
        for claim in names.iterdir():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if claim.read_text().strip() == voice_id:
                    claim.unlink()

    # -- reading --------------------------------------------------------------------------------------------
    def get(self, voice_id: str) -> SavedVoice:
        voice_id = check_voice_id(voice_id)
        path = self.root / voice_id / "voice.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"voice {voice_id} does not exist (list_voices shows the saved ones)") from None
        except (OSError, ValueError):
            raise _corrupt(voice_id) from None
        try:
            if record.pop("format_version") != FORMAT_VERSION:
                raise ValueError("format")
            voice = SavedVoice(**record)
            # A name saved before names were NFC-normalized is still its own.
            if voice.voice_id != voice_id or check_name(voice.name) != unicodedata.normalize("NFC", voice.name):
                raise ValueError("identity")
            if not isinstance(voice.sample_rate, int) or voice.sample_rate <= 0:
                raise ValueError("sample_rate")
            if not isinstance(voice.duration_seconds, (int, float)) or not voice.duration_seconds > 0:
                raise ValueError("duration_seconds")
        except (AttributeError, KeyError, TypeError, ValueError, InputError):
            raise _corrupt(voice_id) from None
        return voice

    def inspect(self, voice_id: str, *, check_reference: bool = True) -> SavedVoice | DamagedVoice:
        """The voice, or what is wrong with it; "does not exist" stays an InputError."""
        voice_id = check_voice_id(voice_id)
        try:
            voice = self.get(voice_id)
        except InputError:
            if not (self.root / voice_id).is_dir():
                raise
            return DamagedVoice(voice_id, None, "its voice.json is unreadable")
        if check_reference:
            problem = self._reference_problem(voice)
            if problem is not None:
                return DamagedVoice(voice_id, voice.name, f"its reference clip {problem}")
        return voice

    def _reference_problem(self, voice: SavedVoice) -> str | None:
        """What is wrong with a voice's reference.wav from its header alone (cheap enough for a listing)."""
        path = self.root / voice.voice_id / "reference.wav"
        try:
            info = sf.info(str(path))
            size = path.stat().st_size
        except (sf.LibsndfileError, RuntimeError, OSError):
            return "is missing or unreadable"
        # libsndfile reads a truncated file as a shorter one: the frames it finds must be the ones saved, and
        # all their float32 bytes present.
        expected = round(voice.duration_seconds * voice.sample_rate)
        if info.channels != 1 or info.samplerate != voice.sample_rate or info.subtype != "FLOAT":
            return "is not the one saved"
        if info.frames == 0 or abs(info.frames - expected) > voice.sample_rate // 500 or size < info.frames * 4:
            return "is truncated"
        return None

    def list(self) -> list[SavedVoice | DamagedVoice]:
        """Saved voices oldest first, then the damaged ones (their problem named, so they can be deleted)."""
        voices, damaged = [], []
        for voice_id in self._ids():
            try:
                voice = self.inspect(voice_id)
            except InputError:
                continue  # deleted while listing
            (damaged if isinstance(voice, DamagedVoice) else voices).append(voice)
        return sorted(voices, key=lambda v: (v.created_at, v.voice_id)) + damaged

    def reference(self, voice_id: str, sample_rate: int) -> Reference:
        """The voice's reference at `sample_rate` (stored at the rate it was made at). A damaged one (unreadable,
        truncated, not finite) is an InputError naming the voice."""
        voice = self.get(voice_id)
        problem = self._reference_problem(voice)
        if problem is not None:
            raise _corrupt(voice_id, f"its reference clip {problem}")
        try:
            samples, rate = sf.read(self.root / voice_id / "reference.wav", dtype="float32")
        except (sf.LibsndfileError, RuntimeError, OSError):
            raise _corrupt(voice_id, "its reference clip is missing or unreadable") from None
        if samples.ndim != 1 or len(samples) == 0 or rate != voice.sample_rate:
            raise _corrupt(voice_id, "its reference clip is not the one saved")
        if not np.isfinite(samples).all():
            raise _corrupt(voice_id, "its reference clip holds samples that are not numbers")
        samples = postprocess.resample(samples, rate, sample_rate)
        digest = hashlib.sha256(samples.tobytes())
        digest.update(str(sample_rate).encode())
        return Reference(
            samples=samples, sample_rate=sample_rate, key=digest.hexdigest(), source_duration_s=voice.duration_seconds
        )

    # -- prompts (the voice cache's second tier) -----------------------------------------------------------
    def _prompt_base(self, voice_id: str, model_name: str, mode: str) -> Path:
        check_voice_id(voice_id)
        if not _PROMPT_NAME.fullmatch(model_name) or mode not in ("icl", "xvec"):
            raise ValueError(f"bad prompt name {model_name!r}/{mode!r}")
        return self.root / voice_id / "prompts" / f"{model_name}.{mode}"

    def prompt_models(self, voice_id: str) -> list[str]:
        folder = self.root / check_voice_id(voice_id) / "prompts"
        if not folder.is_dir():
            return []
        return sorted(p.name.removesuffix(".json") for p in folder.glob("*.json") if not p.name.startswith("."))

    def load_prompt(self, voice_id: str, model_name: str, mode: str, ref_key: str) -> tuple[dict, dict] | None:
        from safetensors.numpy import load_file

        base = self._prompt_base(voice_id, model_name, mode)
        try:
            meta = json.loads(Path(str(base) + ".json").read_text())
            if meta.get("ref_key") != ref_key:
                return None  # made from other audio: rebuilt
            arrays = load_file(str(base) + ".safetensors")
            if "ref_spk_embedding" not in arrays or not isinstance(meta["prompt"], dict):
                raise ValueError("not a clone prompt")
        except FileNotFoundError:
            return None
        except Exception as exc:
            # A cache entry, not the voice: a damaged one (safetensors' own error type, JSON of another shape)
            # is rebuilt from the reference and rewritten.
            log.warning("prompt %s of voice %s unreadable (%s): rebuilt", model_name, voice_id, type(exc).__name__)
            return None
        return arrays, meta["prompt"]

    def save_prompt(self, voice_id: str, model_name: str, mode: str, ref_key: str, arrays: dict, meta: dict) -> None:
        if self.readonly:
            return  # an operator's voices: nothing is written, prompts are rebuilt per worker
        from safetensors.numpy import save_file

        base = self._prompt_base(voice_id, model_name, mode)
        if not base.parent.is_dir():
            return  # the voice was deleted meanwhile
        token = secrets.token_hex(4)
        tensors_tmp = base.parent / f".{base.name}.{token}.safetensors"
        meta_tmp = base.parent / f".{base.name}.{token}.json"
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tensors_tmp))
        meta_tmp.write_text(json.dumps({"ref_key": ref_key, "model": model_name, "prompt": meta}))
        # tensors first, then the metadata that points readers at them: a reader sees both or no JSON
        os.replace(tensors_tmp, str(base) + ".safetensors")
        os.replace(meta_tmp, str(base) + ".json")
