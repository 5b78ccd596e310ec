"""The saved-voice actions: create_voice (from a clip, or designed with the VoiceDesign model), list_voices,
get_voice and delete_voice. A request in, the voice store's answer out.

They are given what they use, never the worker: the voice store, the clone-prompt cache, the URL policy, and
`VoiceModels` (a model by name, the Base models usable here, and a synthesis callable that speaks a designed
voice's sample through the worker's own generator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from audio import catalog
from audio.errors import InputError, ModelError
from audio.schema import CreateVoiceJob, VoiceIdJob, parse_voice_action, resolve_job_language
from audio.speech import SpeechModel, Voice
from audio.voices.cache import ClonePromptCache
from audio.voices.reference import FetchPolicy, Reference, decode_audio, prepare, reference_bytes
from audio.voices.store import DamagedVoice, SavedVoice, VoiceStore, check_name, check_voice_id

DESIGN_MODEL = "1.7B-VoiceDesign"
BASE_MODELS = ("1.7B-Base", "0.6B-Base")
# What a designed voice says in its saved sample (then its clone transcript) unless sample_text is given.
DESIGN_SAMPLE_TEXT = "Hello! This is my voice. I read stories, news and notes in a clear, natural way."


@dataclass(frozen=True)
class VoiceModels:
    """What the voice actions need of the worker's models."""

    get: Callable[[str], SpeechModel]  # a model by name, loaded on first use
    base_models: Callable[[], list[str]]  # the Base models usable here, loaded ones first
    speak: Callable[[dict[str, Any]], tuple[np.ndarray, int]]  # a synthesis job input -> one track, its rate
    model_dir: str  # where models are looked for (for messages)


class VoiceActions:
    def __init__(self, store: VoiceStore, prompts: ClonePromptCache, models: VoiceModels, *, fetch_policy: FetchPolicy):
        self.store = store
        self.prompts = prompts
        self.models = models
        self.fetch_policy = fetch_policy

    def handle(self, job_input: dict[str, Any]) -> dict[str, Any]:
        """One of VOICE_ACTIONS, validated; the answer as the job's result."""
        request = parse_voice_action(job_input)
        if isinstance(request, CreateVoiceJob):
            return self.create_voice(request)
        if isinstance(request, VoiceIdJob):
            if request.action == "delete_voice":
                voice = self.store.delete(request.voice_id)
                return {"deleted": True, "voice_id": voice.voice_id, "name": voice.name}
            return self._public(self.store.inspect(check_voice_id(request.voice_id)))
        return {"voices": [self._public(v) for v in self.store.list()]}

    def _public(self, voice: SavedVoice | DamagedVoice) -> dict[str, Any]:
        if isinstance(voice, DamagedVoice):
            return voice.public()
        return voice.public(self.store.prompt_models(voice.voice_id))

    def create_voice(self, request: CreateVoiceJob) -> dict[str, Any]:
        check_name(request.name)
        self.store.check_writable()  # before fetching or generating anything
        language = resolve_job_language(request.language)
        build_for = None
        if request.model is not None:
            variant = catalog.find_model(request.model)
            if variant is None or variant.kind != catalog.BASE:
                raise InputError(f"create_voice model must be a Base model ({', '.join(BASE_MODELS)})")
            build_for = variant.name
        if (request.ref_audio is None) == (request.instruct is None):
            raise InputError("create_voice needs one of ref_audio (a clip to clone) or instruct (a description)")
        warnings: list[str] = []
        if request.ref_audio is not None:
            if request.sample_text is not None or request.params is not None:
                raise InputError("sample_text and params are for designed voices (instruct); a clip has ref_text")
            if not request.x_vector_only and not (request.ref_text and request.ref_text.strip()):
                raise InputError(
                    "create_voice needs ref_text (the transcript of ref_audio) unless x_vector_only is true"
                )
            data = reference_bytes(request.ref_audio, self.fetch_policy)
            # Stored at a Base model's rate; another Base model resamples it to its own on use.
            rate = self._reference_rate(build_for)
            reference = prepare(decode_audio(data, rate), rate)
            warnings.extend(reference.warnings)
            source, ref_text, instruct = "reference", request.ref_text, None
        else:
            if request.ref_text is not None or request.x_vector_only:
                raise InputError("a designed voice (instruct) takes sample_text, not ref_text/x_vector_only")
            reference, ref_text = self._design_reference(request, language)
            source, instruct = "design", request.instruct
        voice = self.store.create(
            request.name,
            reference,
            source=source,
            ref_text=ref_text,
            x_vector_only=request.x_vector_only,
            language=language,
            instruct=instruct,
        )
        if build_for is not None:
            model = self.models.get(build_for)
            ref = self.store.reference(voice.voice_id, model.sample_rate)
            clone = Voice(
                ref_audio=(ref.samples, ref.sample_rate),
                ref_text=voice.ref_text,
                x_vector_only=voice.x_vector_only,
                ref_key=ref.key,
                saved_voice=voice.voice_id,
            )
            self.prompts.get(build_for, model, clone)
        out = voice.public(self.store.prompt_models(voice.voice_id))
        if warnings:
            out["warnings"] = warnings
        return out

    def _reference_rate(self, model_name: str | None) -> int:
        """A Base model's rate: the one named, else a loaded one, else the first present (loading it)."""
        if model_name is None:
            model_name = next(iter(self.models.base_models()), None)
        if model_name is None:
            raise ModelError(self._no_base_message())
        return self.models.get(model_name).sample_rate

    def _no_base_message(self) -> str:
        return (
            "saved voices are clone references and need a Base model (1.7B-Base or 0.6B-Base) on this worker; "
            f"none is present in {self.models.model_dir}. "
            "Download one: python scripts/download_models.py 0.6B-Base"
        )

    def _design_reference(self, request: CreateVoiceJob, language: str) -> tuple[Reference, str]:
        """Qwen's design-then-clone recipe: the VoiceDesign model speaks a sample in the described voice, which
        becomes the saved voice's clone reference with its text as the transcript."""
        if not self.models.base_models():
            raise ModelError(self._no_base_message())
        text = (request.sample_text or DESIGN_SAMPLE_TEXT).strip()
        job = {"model": DESIGN_MODEL, "text": text, "instruct": request.instruct, "language": language}
        if request.seed is not None:
            job["seed"] = request.seed
        if request.params is not None:
            job["params"] = request.params.model_dump(exclude_none=True)
        samples, sample_rate = self.models.speak(job)
        return prepare(samples, sample_rate), text
