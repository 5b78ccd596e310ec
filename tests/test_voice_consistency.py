"""VoiceDesign across chunks: `voice_consistency: "clone"` designs a voice's first chunk and clones the rest from
it on the Base model of its size; without it, a multi-chunk designed voice warns that it may drift.

Runs the real tiny models; a wrapper around each (delegating, replacing nothing) records every generate and
clone_prompt call with its voice, its prompt and the audio made.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from audio.serving.service import make_handler
from audio.voices.reference import TAIL_SILENCE_S

FRAME = 1920
RATE = 24000
SENTENCE_GAP = RATE * 300 // 1000  # between chunks that end sentences
SMALL_CHUNKS = {"QWEN_TTS_CHUNK_TARGET_CHARS": "20", "QWEN_TTS_CHUNK_MAX_CHARS": "40"}
TEXT = "The first sentence is here. The second sentence follows. And a third one ends it."
CHUNKS = ["The first sentence is here.", "The second sentence follows.", "And a third one ends it."]
FRAMES = 15  # 1.2 s a chunk: a designed reference of at least 1 s
DESIGN = "A calm, low voice."
DRIFT = (
    "1.7B-VoiceDesign designs the voice anew for each chunk, so the {n} chunks of {where} may drift between voices; "
    '"voice_consistency": "clone" designs the first chunk and clones it for the rest (on 1.7B-Base)'
)


@dataclass
class Call:
    kind: str  # "generate" | "clone_prompt"
    model: str
    voice: Any
    texts: list[str] = field(default_factory=list)  # sorted: a batch is ordered by length, not by text
    prompt: Any = None  # the clone prompt passed to generate, or the one clone_prompt built
    wavs: list[np.ndarray] = field(default_factory=list)


class Recording:
    def __init__(self, model, calls: list[Call]):
        self._model = model
        self._calls = calls

    def __getattr__(self, name):
        return getattr(self._model, name)

    def clone_prompt(self, voice):
        prompt = self._model.clone_prompt(voice)
        self._calls.append(Call("clone_prompt", self._model.variant.name, voice, prompt=prompt))
        return prompt

    def generate(self, requests, *, language, voice, params, clone_prompt=None, **engine):
        wavs = self._model.generate(
            requests, language=language, voice=voice, params=params, clone_prompt=clone_prompt, **engine
        )
        name = self._model.variant.name
        self._calls.append(Call("generate", name, voice, sorted(r.text for r in requests), clone_prompt, wavs))
        return wavs


@pytest.fixture
def recorded(make_worker, model_cache):
    calls: list[Call] = []
    worker = make_worker(SMALL_CHUNKS, get_model=lambda n: Recording(model_cache.get(n), calls))
    return worker, calls


def run(worker, job_input):
    return make_handler(worker)({"id": "design", "input": job_input})


def design_job(frames: int = FRAMES, **fields) -> dict:
    return {
        "model": "1.7B-VoiceDesign",
        "instruct": DESIGN,
        "text": TEXT,
        "seed": 11,
        "params": {"max_new_tokens": frames + 1},
        **fields,
    }


def decoded_length(result: dict) -> int:
    samples, rate = sf.read(io.BytesIO(base64.b64decode(result["audio_base64"])), dtype="float32")
    assert rate == RATE
    return len(samples)


def joined_length(chunks: int, frames: int = FRAMES) -> int:
    return chunks * frames * FRAME + (chunks - 1) * SENTENCE_GAP


def test_clone_designs_the_first_chunk_and_clones_it_on_base_for_the_rest(recorded):
    worker, calls = recorded
    result = run(worker, design_job(voice_consistency="clone"))
    assert "error" not in result, result
    design, built, cloned = calls
    # 1. the first chunk alone, designed from the description
    assert (design.kind, design.model, design.texts) == ("generate", "1.7B-VoiceDesign", CHUNKS[:1])
    assert design.voice.instruct == DESIGN and design.prompt is None
    # 2. one ICL clone prompt on 1.7B-Base from that chunk's audio (trimmed and padded as a reference) and text
    assert (built.kind, built.model) == ("clone_prompt", "1.7B-Base")
    samples, rate = built.voice.ref_audio
    made = design.wavs[0]
    assert rate == RATE and len(made) == FRAMES * FRAME
    assert len(samples) == len(made) + int(TAIL_SILENCE_S * RATE)
    np.testing.assert_array_equal(samples[: len(made)], made)
    assert not samples[len(made) :].any()
    assert built.voice.ref_text == CHUNKS[0] and not built.voice.x_vector_only and built.voice.instruct is None
    # 3. the rest, batched on 1.7B-Base with that prompt
    assert (cloned.kind, cloned.model, cloned.texts) == ("generate", "1.7B-Base", sorted(CHUNKS[1:]))
    assert cloned.prompt is built.prompt
    meta = result["metadata"]
    assert meta["model"] == "1.7B-VoiceDesign, 1.7B-Base"
    assert meta["num_chunks"] == 3 and meta["voice_cache"] == "miss" and "warnings" not in meta
    assert decoded_length(result) == joined_length(3)


def test_the_same_seeded_clone_job_again_reuses_its_prompt(recorded):
    worker, calls = recorded
    first = run(worker, design_job(voice_consistency="clone"))
    second = run(worker, design_job(voice_consistency="clone"))
    assert second["metadata"]["voice_cache"] == "hit"  # the same designed audio: the same reference key
    assert [c.kind for c in calls].count("clone_prompt") == 1
    assert first["audio_base64"] == second["audio_base64"]


@pytest.mark.parametrize("consistency", [pytest.param(None, id="omitted"), pytest.param("none", id="none")])
def test_without_clone_every_chunk_is_designed_and_the_job_warns(recorded, consistency):
    worker, calls = recorded
    job = design_job() if consistency is None else design_job(voice_consistency=consistency)
    result = run(worker, job)
    assert [(c.kind, c.model, c.texts) for c in calls] == [("generate", "1.7B-VoiceDesign", sorted(CHUNKS))]
    assert result["metadata"]["warnings"] == [DRIFT.format(n=3, where="the text")]
    assert result["metadata"]["model"] == "1.7B-VoiceDesign"
    assert decoded_length(result) == joined_length(3)


@pytest.mark.parametrize("consistency", [pytest.param("none", id="none"), pytest.param("clone", id="clone")])
def test_a_one_chunk_design_neither_warns_nor_clones(recorded, consistency):
    worker, calls = recorded
    result = run(worker, design_job(text="Only one chunk.", voice_consistency=consistency))
    assert [(c.kind, c.model) for c in calls] == [("generate", "1.7B-VoiceDesign")]
    assert "warnings" not in result["metadata"] and result["metadata"]["model"] == "1.7B-VoiceDesign"


PODCAST = [
    {"text": "Narrator speaks first. With two chunks.", "instruct": DESIGN},
    {"text": "A preset voice answers.", "model": "0.6B-CustomVoice", "voice": "Ryan"},
    {"text": "A guest has one.", "instruct": "A bright, quick voice."},
    {"text": "The narrator returns.", "instruct": DESIGN},
]


def podcast_job(**fields) -> dict:
    job = {"model": "1.7B-VoiceDesign", "segments": PODCAST, "seed": 4, "params": {"max_new_tokens": FRAMES + 1}}
    return {**job, **fields}


def test_in_segments_a_designed_voice_is_one_voice_across_the_segments_that_share_its_description(recorded):
    worker, calls = recorded
    result = run(worker, podcast_job(voice_consistency="clone", join=False))
    generated = [(c.model, c.voice.instruct, c.texts) for c in calls if c.kind == "generate"]
    # first all that needs no clone (the guest's only chunk is simply designed), then the narrator's clones
    assert sorted(generated[:3]) == [
        ("0.6B-CustomVoice", None, ["A preset voice answers."]),
        ("1.7B-VoiceDesign", "A bright, quick voice.", ["A guest has one."]),
        ("1.7B-VoiceDesign", DESIGN, ["Narrator speaks first."]),
    ]
    assert generated[3:] == [("1.7B-Base", None, ["The narrator returns.", "With two chunks."])]  # segments 1, 4
    narrator = next(c for c in calls if c.kind == "generate" and c.voice.instruct == DESIGN)
    (built,) = [c for c in calls if c.kind == "clone_prompt"]
    np.testing.assert_array_equal(built.voice.ref_audio[0][: FRAMES * FRAME], narrator.wavs[0])
    assert built.voice.ref_text == "Narrator speaks first."
    assert result["metadata"]["model"] == "1.7B-VoiceDesign, 0.6B-CustomVoice, 1.7B-Base"
    assert [item["metadata"]["num_chunks"] for item in result["items"]] == [2, 1, 1, 1]
    assert "warnings" not in result["metadata"]


def test_in_segments_without_clone_the_warning_names_the_segments(recorded):
    worker, calls = recorded
    result = run(worker, podcast_job())
    assert result["metadata"]["warnings"] == [DRIFT.format(n=3, where="segments 1, 4")]
    assert not any(c.model == "1.7B-Base" for c in calls)


def test_a_short_first_chunk_still_clones_and_says_it_is_short(recorded):
    worker, calls = recorded
    result = run(worker, design_job(frames=4, voice_consistency="clone"))  # 0.32 s a chunk
    assert result["metadata"]["warnings"] == [
        "the designed voice's first chunk is 0.3 s long: as the clone reference for the rest it holds the voice "
        "less well than 1 s or more would (start with a longer sentence)"
    ]
    assert [c.model for c in calls if c.kind == "generate"] == ["1.7B-VoiceDesign", "1.7B-Base"]


def test_clone_without_a_voice_design_segment_warns_and_changes_nothing(recorded):
    worker, calls = recorded
    job = {"model": "0.6B-CustomVoice", "text": TEXT, "voice_consistency": "clone", "params": {"max_new_tokens": 4}}
    result = run(worker, job)
    assert result["metadata"]["warnings"] == [
        'voice_consistency "clone" applies to VoiceDesign voices; this job has none'
    ]
    assert [(c.model, c.texts) for c in calls] == [("0.6B-CustomVoice", sorted(CHUNKS))]


def test_voice_consistency_takes_none_or_clone(worker):
    result = run(worker, design_job(voice_consistency="always"))
    assert result["error"] == {
        "code": "invalid_input",
        "message": "voice_consistency: Input should be 'none' or 'clone'",
    }


def test_clone_without_the_base_model_is_model_unavailable_before_any_generation(tmp_path, model_cache):
    from audio.settings import Settings
    from audio.worker import Worker
    from scripts.build_tiny_checkpoint import build
    from tests.conftest import CACHE

    only_design = build(CACHE / "tiny-design-only", seed=0, names=["1.7B-VoiceDesign"])
    settings = Settings.from_env(
        {"QWEN_TTS_MODEL_DIR": str(only_design), "QWEN_TTS_PRELOAD": "none", "HF_HOME": str(tmp_path), **SMALL_CHUNKS}
    )
    calls: list[Call] = []
    worker = Worker(settings, get_model=lambda n: Recording(model_cache.get(n), calls))
    result = run(worker, design_job(text="Only one chunk.", voice_consistency="clone"))
    assert result["error"] == {
        "code": "model_unavailable",
        "message": (
            'voice_consistency "clone" keeps a designed voice by cloning it on 1.7B-Base, which is not in '
            f"{only_design} or the Hugging Face caches. Download it to the network volume: huggingface-cli download "
            f"Qwen/Qwen3-TTS-12Hz-1.7B-Base --local-dir {only_design}/Qwen3-TTS-12Hz-1.7B-Base (or: python "
            'scripts/download_models.py 1.7B-Base --force); or send "voice_consistency": "none"'
        ),
    }
    assert calls == []
    assert run(worker, design_job())["metadata"]["warnings"] == [DRIFT.format(n=3, where="the text")]  # without: runs
