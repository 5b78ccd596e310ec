"""Shared fixtures: tiny real checkpoints (built once, cached under .cache/), workers on them, a real S3 server."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

# Tiny models are launch-bound: one thread avoids spin-wait contention on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from audio.model_loader import ModelCache
from audio.settings import Settings
from audio.worker import Worker
from scripts.build_tiny_checkpoint import build
from tests.s3server import s3_server_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("QWEN_TTS_TEST_CACHE", ROOT / ".cache"))
# scripts/gpu_check.sh runs the engine tests on a GPU: QWEN_TTS_TEST_DEVICE / _DTYPE / _CUDA_GRAPHS set them.
DEVICE_ENV = {
    f"QWEN_TTS_{name}": os.environ[f"QWEN_TTS_TEST_{name}"]
    for name in ("DEVICE", "DTYPE", "CUDA_GRAPHS")
    if os.environ.get(f"QWEN_TTS_TEST_{name}")
}
if DEVICE_ENV.get("QWEN_TTS_DEVICE", "cpu").startswith("cuda"):
    import torch

    # Equivalence with the reference engine is checked in fp32: TF32 matmuls and convolutions would round.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# The guard's expected-length band turned off, for random weights whose lengths ignore the text.
NO_DURATION_BAND = {"QWEN_TTS_GUARD_MIN_RATIO": "0", "QWEN_TTS_GUARD_MAX_RATIO": "1e9"}


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """All five variants, EOS dead: every generation is exactly max_new_tokens - 1 frames long."""
    return build(CACHE / "tiny-models", seed=0)


REAL_SHAPE_MODELS = ["1.7B-CustomVoice", "0.6B-CustomVoice", "0.6B-Base", "1.7B-VoiceDesign"]
# CPU default: one talker / code-predictor layer and the decoder's conv stack narrowed 16x (its transformer stays the
# real one). `scripts/gpu_check.sh --real-shape-tests` sets QWEN_TTS_TEST_REAL_LAYERS=full and
# QWEN_TTS_TEST_REAL_VOCODER_DIM=1536.
_layers = os.environ.get("QWEN_TTS_TEST_REAL_LAYERS", "1").strip().lower()
REAL_SHAPE_LAYERS = None if _layers == "full" else int(_layers)
REAL_SHAPE_VOCODER_DIM = int(os.environ.get("QWEN_TTS_TEST_REAL_VOCODER_DIM", "96"))


@pytest.fixture(scope="session")
def real_shape_model_dir() -> Path:
    """The released models' widths, heads, rope, projections and 8-layer decoder (random weights, EOS dead)."""
    return build(
        CACHE / f"real-shape-models-{_layers}-{REAL_SHAPE_VOCODER_DIM}",
        seed=0,
        names=REAL_SHAPE_MODELS,
        real=True,
        layers=REAL_SHAPE_LAYERS,
        vocoder_dim=REAL_SHAPE_VOCODER_DIM,
    )


SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. Then it runs back home across the field."


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> bytes:
    """A few seconds of real speech (espeak-ng, installed by scripts/setup.sh) as WAV bytes: clone references
    for happy paths are speech, never noise. Its transcript is SPEECH_TEXT."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (scripts/setup.sh installs it): no reference speech clip")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(path), SPEECH_TEXT], check=True, timeout=60)
    return path.read_bytes()


@pytest.fixture(scope="session")
def live_eos_model_dir() -> Path:
    """The CustomVoice variants, with generations that stop at random lengths."""
    return build(CACHE / "tiny-models-live-eos", seed=0, live_eos=True, names=["1.7B-CustomVoice", "0.6B-CustomVoice"])


@pytest.fixture(scope="session")
def make_settings(tiny_model_dir: Path) -> Callable[..., Settings]:
    def make(env: Mapping[str, str] | None = None, **overrides: str) -> Settings:
        base = {
            "QWEN_TTS_MODEL_DIR": str(tiny_model_dir),
            "QWEN_TTS_PRELOAD": "none",
            "QWEN_TTS_MAX_LOADED_MODELS": "5",
            "HF_HOME": str(CACHE / "no-hf-home"),
            **DEVICE_ENV,
        }
        return Settings.from_env({**base, **(env or {}), **overrides})

    return make


@pytest.fixture(scope="session")
def model_cache(make_settings) -> ModelCache:
    """One cache for the session: each tiny model is loaded once."""
    return ModelCache(make_settings())


@pytest.fixture
def make_worker(make_settings, model_cache) -> Callable[..., Worker]:
    def make(env: Mapping[str, str] | None = None, get_model=None) -> Worker:
        return Worker(make_settings(env), models=model_cache, get_model=get_model)

    return make


@pytest.fixture
def worker(make_worker) -> Worker:
    return make_worker()


@pytest.fixture
def live_eos_worker(live_eos_model_dir):
    """A worker on models whose generations end at random lengths, like a real model's EOS."""
    # Random weights' lengths carry no relation to the text, so the too-short check and the guard's
    # expected-length band are off here; the runaway check (the text-derived frame budget) and the guard's
    # loop, stall and silence checks stay on.
    settings = Settings.from_env(
        {
            "QWEN_TTS_MODEL_DIR": str(live_eos_model_dir),
            "QWEN_TTS_PRELOAD": "none",
            **NO_DURATION_BAND,
            "QWEN_TTS_MIN_SECONDS_PER_CHAR": "0",
            "HF_HOME": str(live_eos_model_dir / "no-hf"),
        }
    )
    cache = ModelCache(settings)

    def make(get_model=None):
        return Worker(settings, models=cache, get_model=get_model)

    return make


class CallRecorder:
    """Delegates to a real model and counts finished calls: `generate` calls and `stream` pieces so far."""

    def __init__(self, get_model):
        self._get_model = get_model
        self.generated = 0
        self.pieces = 0

    def __call__(self, name):
        recorder = self

        class Recorded:
            def __getattr__(self, attr):
                return getattr(model, attr)

            def generate(self, requests, **kwargs):
                out = model.generate(requests, **kwargs)
                recorder.generated += 1
                return out

            def stream(self, requests, **kwargs):
                for piece in model.stream(requests, **kwargs):
                    recorder.pieces += 1
                    yield piece

        model = self._get_model(name)
        return Recorded()
