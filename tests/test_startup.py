"""A worker whose start fails keeps answering: preload failures (missing model, load error, CUDA out of memory)
and configuration errors, in process through `service.start` / `service.preload`."""

from __future__ import annotations

import pytest
import torch

from audio.model_loader import ModelCache
from audio.serving import service
from audio.worker import Worker

JOB = {"text": "Hi.", "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 3}}


def out_of_memory(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total)")


class OutOfMemoryOnGenerate:
    """Delegates to a real model, whose every generation then runs out of GPU memory."""

    def __init__(self, real):
        self.real = real
        self.sample_rate = real.sample_rate
        self.frame_samples = real.frame_samples

    def generate(self, texts, **kwargs):
        out_of_memory()


def answers(worker: Worker) -> tuple[dict, dict]:
    handle = service.make_handler(worker)
    return handle({"id": "j1", "input": JOB}), handle({"id": "j2", "input": {"action": "health"}})


def test_out_of_memory_while_loading_at_preload(make_settings):
    settings = make_settings({"QWEN_TTS_PRELOAD": "0.6B-CustomVoice"})
    worker = Worker(settings, models=ModelCache(settings, load=out_of_memory))
    service.preload(worker)
    job, health = answers(worker)
    reason = (
        "model 0.6B-CustomVoice could not be loaded: the GPU ran out of memory (OutOfMemoryError). Keep fewer "
        "models loaded (QWEN_TTS_MAX_LOADED_MODELS, QWEN_TTS_PRELOAD) or use a GPU with more memory."
    )
    assert job == {"error": {"code": "model_unavailable", "message": f"this worker could not start: {reason}"}}
    assert (health["status"], health["startup_error"], health["model_loads"]) == ("unavailable", reason, {})


def test_out_of_memory_during_the_warm_up_generation(make_settings, model_cache):
    settings = make_settings({"QWEN_TTS_PRELOAD": "0.6B-CustomVoice"})
    worker = Worker(settings, models=model_cache, get_model=lambda name: OutOfMemoryOnGenerate(model_cache.get(name)))
    service.preload(worker)
    job, health = answers(worker)
    reason = (
        "the GPU ran out of memory while warming up the preloaded models (OutOfMemoryError); preload fewer "
        "models (QWEN_TTS_PRELOAD) or use a GPU with more memory"
    )
    assert job["error"] == {"code": "model_unavailable", "message": f"this worker could not start: {reason}"}
    assert health["startup_error"] == reason
    assert "79.15" not in job["error"]["message"]  # no library text passes through


def test_a_successful_preload_takes_jobs(make_settings, model_cache):
    worker = Worker(make_settings({"QWEN_TTS_PRELOAD": "0.6B-CustomVoice"}), models=model_cache)
    service.preload(worker)
    job, health = answers(worker)
    assert "audio_base64" in job and health["status"] == "ok"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        pytest.param({"QWEN_TTS_MAX_BATCH": "many"}, "QWEN_TTS_MAX_BATCH must be an integer, got 'many'", id="int"),
        pytest.param(
            {"QWEN_TTS_PRELOAD": "2B-Imaginary"}, "QWEN_TTS_PRELOAD='2B-Imaginary' is not a known model", id="model"
        ),
    ],
)
def test_configuration_error_answers_internal_naming_the_variable(env, problem, caplog):
    handle = service.start(env)
    assert handle({"id": "j1", "input": JOB}) == {
        "error": {
            "code": "internal",
            "message": f"the worker is misconfigured: {problem}. Fix the endpoint's environment variables.",
        }
    }
    assert f"CONFIGURATION ERROR, answering every job with this error: {problem}" in caplog.text
