"""The worker's clone-prompt cache on the real tiny Base models: prompt builds are counted by a wrapper that
delegates to the real model (it replaces nothing)."""

from __future__ import annotations

import base64

import pytest

from audio.serving.service import make_handler
from tests.conftest import SPEECH_TEXT


class CountingModel:
    def __init__(self, model, counts: dict):
        self._model = model
        self._counts = counts

    def __getattr__(self, name):
        return getattr(self._model, name)

    def clone_prompt(self, voice):
        self._counts[self._model.variant.name] = self._counts.get(self._model.variant.name, 0) + 1
        return self._model.clone_prompt(voice)


@pytest.fixture
def counted(make_worker, model_cache):
    def make(env=None):
        counts: dict[str, int] = {}
        worker = make_worker(env, get_model=lambda name: CountingModel(model_cache.get(name), counts))
        return worker, counts

    return make


def run(worker, job_input):
    return make_handler(worker)({"id": "cache", "input": job_input})


@pytest.fixture
def job(speech_wav):
    return {
        "text": "A cached voice speaks twice.",
        "model": "0.6B-Base",
        "ref_audio": base64.b64encode(speech_wav).decode(),
        "ref_text": SPEECH_TEXT,
        "seed": 5,
        "params": {"max_new_tokens": 4},
    }


def test_the_same_reference_twice_builds_one_prompt(counted, job):
    worker, counts = counted()
    first = run(worker, job)
    second = run(worker, job)
    assert first["metadata"]["voice_cache"] == "miss"
    assert second["metadata"]["voice_cache"] == "hit"
    assert counts == {"0.6B-Base": 1}
    assert first["audio_base64"] == second["audio_base64"]  # the cached prompt conditions exactly the same


def test_the_key_is_the_decoded_audio_not_how_it_was_sent(counted, job):
    worker, counts = counted()
    run(worker, job)
    result = run(worker, {**job, "ref_audio": "data:audio/wav;base64," + job["ref_audio"]})
    assert result["metadata"]["voice_cache"] == "hit"
    assert counts == {"0.6B-Base": 1}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"ref_text": "Some other words."}, id="ref_text"),
        pytest.param({"x_vector_only": True, "ref_text": None}, id="x_vector_only"),
        pytest.param({"model": "1.7B-Base"}, id="model"),
    ],
)
def test_each_part_of_the_key_makes_a_new_prompt(counted, job, change):
    worker, counts = counted()
    run(worker, job)
    other = {k: v for k, v in {**job, **change}.items() if v is not None}
    assert run(worker, other)["metadata"]["voice_cache"] == "miss"
    assert sum(counts.values()) == 2


def test_a_multi_chunk_podcast_builds_each_voice_once(counted, job):
    worker, counts = counted()
    segments = [
        {"text": "First line. " * 20},
        {"text": "Second line. " * 20, "model": "1.7B-Base"},
        {"text": "Third line. " * 20},
    ]
    base = {k: v for k, v in job.items() if k != "text"}
    result = run(worker, {**base, "segments": segments, "params": {"max_new_tokens": 3}})
    assert result["metadata"]["num_chunks"] > 3
    assert counts == {"0.6B-Base": 1, "1.7B-Base": 1}


def test_the_cache_is_lru_bounded(counted, job):
    worker, counts = counted({"QWEN_TTS_VOICE_CACHE": "1"})
    run(worker, job)
    run(worker, {**job, "ref_text": "Other words."})  # evicts the first
    assert run(worker, job)["metadata"]["voice_cache"] == "miss"
    assert counts == {"0.6B-Base": 3}


def test_a_zero_size_cache_builds_every_time(counted, job):
    worker, counts = counted({"QWEN_TTS_VOICE_CACHE": "0"})
    run(worker, job)
    assert run(worker, job)["metadata"]["voice_cache"] == "miss"
    assert counts == {"0.6B-Base": 2}


def test_jobs_without_a_clone_voice_have_no_voice_cache_field(worker):
    result = run(worker, {"text": "Hi.", "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 3}})
    assert "voice_cache" not in result["metadata"]
