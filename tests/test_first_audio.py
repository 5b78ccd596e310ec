"""First audio after one frame: a streamed chunk's first piece is decoded after its first codec frame, then pieces
grow (`QWEN_TTS_STREAM_PIECE_FRAMES`, default 1, 2, 4, 8, 12 frames, the last repeating); the queue stream and the
HTTP stream deliver that first piece at once; joined, a stream equals the same audio unstreamed (<= 2 LSB)."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest

from audio.model_loader import ModelCache
from audio.serving import http_server, streaming
from audio.settings import STREAM_PIECE_FRAMES, Settings
from audio.speech import ChunkRequest, Voice
from audio.worker import Worker
from tests.conftest import DEVICE_ENV
from tests.test_handler_e2e import REF

MAX_DIFF_16 = 2 / 32768  # 2 LSB of 16-bit PCM
CHECKPOINTS = ["tiny", "real-structure"]


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, real_shape_model_dir):
    return {"tiny": tiny_model_dir, "real-structure": real_shape_model_dir}


def _settings(model_dir, **env: str) -> Settings:
    base = {
        "QWEN_TTS_MODEL_DIR": str(model_dir),
        "QWEN_TTS_PRELOAD": "none",
        "QWEN_TTS_MAX_LOADED_MODELS": "1",
        "QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice",
        "QWEN_TTS_MIN_SECONDS_PER_CHAR": "0",
        "HF_HOME": str(model_dir / "no-hf"),
    }
    return Settings.from_env({**base, **DEVICE_ENV, **env})


@pytest.fixture(scope="module")
def caches(model_dirs):
    return {name: ModelCache(_settings(path)) for name, path in model_dirs.items()}


def test_stream_piece_frames_setting():
    assert Settings.from_env({}).stream_piece_frames == STREAM_PIECE_FRAMES == (1, 2, 4, 8, 12)
    assert Settings.from_env({"QWEN_TTS_STREAM_PIECE_FRAMES": "2, 6,12"}).stream_piece_frames == (2, 6, 12)
    with pytest.raises(ValueError, match="QWEN_TTS_STREAM_PIECE_FRAMES must be positive frame counts"):
        Settings.from_env({"QWEN_TTS_STREAM_PIECE_FRAMES": "1,0"})
    with pytest.raises(ValueError, match="must be frame counts separated by commas"):
        Settings.from_env({"QWEN_TTS_STREAM_PIECE_FRAMES": "one"})


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_engine_stream_starts_with_one_frame_and_joins_to_the_whole(caches, checkpoint):
    model = caches[checkpoint].get("0.6B-CustomVoice")
    kwargs = {"language": "Auto", "voice": Voice(speaker="Ryan"), "params": {}}
    requests = [ChunkRequest("The first audio comes after one frame.", 30, seed=8)]
    whole = model.generate(requests, **kwargs)[0]
    started = time.perf_counter()
    pieces, first_s = [], None
    for piece in model.stream(requests, **kwargs):
        if first_s is None:
            first_s = time.perf_counter() - started
        pieces.append(piece)
    assert [p.frames for p in pieces] == [1, 2, 4, 8, 12, 3]
    assert [p.first_frame for p in pieces] == [0, 1, 3, 7, 15, 27]
    assert len(pieces[0].samples) == model.frame_samples
    joined = np.concatenate([p.samples for p in pieces])
    assert len(joined) == len(whole) == 30 * model.frame_samples
    assert np.max(np.abs(joined - whole)) <= MAX_DIFF_16
    print(
        f"{checkpoint}: first piece {len(pieces[0].samples) / model.sample_rate * 1000:.0f} ms of audio after "
        f"{first_s * 1000:.0f} ms"
    )


@pytest.mark.slow
def test_a_cloned_voice_streams_from_one_frame_on_real_shapes(caches):
    from audio.voices.reference import decode_reference

    model = caches["real-structure"].get("0.6B-Base")
    ref = decode_reference(REF, model.sample_rate)
    voice = Voice(ref_audio=(ref.samples, ref.sample_rate), ref_text="A reference sentence.", ref_key=ref.key)
    kwargs = {"language": "Auto", "voice": voice, "params": {}, "clone_prompt": model.clone_prompt(voice)}
    requests = [ChunkRequest("Cloned and streamed.", 16, seed=1)]
    whole = model.generate(requests, **kwargs)[0]
    pieces = list(model.stream(requests, **kwargs))
    assert [p.frames for p in pieces] == [1, 2, 4, 8, 1]
    joined = np.concatenate([p.samples for p in pieces])
    assert len(joined) == len(whole) == 16 * model.frame_samples
    assert np.max(np.abs(joined - whole)) <= MAX_DIFF_16


class FirstPieceGate:
    """Wraps the real model: its stream stops after the first piece until `release` is set, so whatever reaches
    the consumer before then was made from that piece alone."""

    def __init__(self, cache: ModelCache):
        self.cache = cache
        self.frames: list[int] = []
        self.release = threading.Event()

    def __call__(self, name: str):
        model, gate = self.cache.get(name), self

        class Gated:
            def __getattr__(self, attr):
                return getattr(model, attr)

            def stream(self, requests, **kwargs):
                for piece in model.stream(requests, **kwargs):
                    gate.frames.append(piece.frames)
                    yield piece
                    if len(gate.frames) == 1:
                        gate.release.wait(60)

        return Gated()


def _gated_worker(caches, model_dirs, checkpoint) -> tuple[Worker, FirstPieceGate]:
    gate = FirstPieceGate(caches[checkpoint])
    return Worker(_settings(model_dirs[checkpoint]), models=caches[checkpoint], get_model=gate), gate


JOB = {"text": "Streaming starts at once. Then the rest follows.", "seed": 4, "params": {"max_new_tokens": 14}}


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_the_queue_stream_delivers_the_first_frame_at_once(caches, model_dirs, checkpoint):
    worker, gate = _gated_worker(caches, model_dirs, checkpoint)
    plan = worker.plan_synthesis({**JOB, "stream": True}, stream_default_format="pcm")
    items = streaming.queue_items(worker, plan, "first")
    try:
        first = next(items)
        assert gate.frames == [1]  # the generation is held after its first frame's piece
    finally:
        gate.release.set()
    rest = list(items)
    model = caches[checkpoint].get("0.6B-CustomVoice")
    crossfade = int(model.sample_rate * worker.settings.crossfade_ms / 1000)
    # The joiner holds back one crossfade's worth (a chunk's end may be crossfaded): 80 ms made, 40 ms out.
    samples = len(base64.b64decode(first["audio_base64"])) // 2
    assert samples == model.frame_samples - crossfade
    assert first["duration_seconds"] == round(samples / model.sample_rate, 4)
    print(
        f"{checkpoint}: first queue item {first['duration_seconds'] * 1000:.0f} ms of audio at "
        f"{first['elapsed_seconds'] * 1000:.0f} ms"
    )
    unstreamed = worker.handle({**JOB, "output_format": "pcm"}, "whole")
    want = np.frombuffer(base64.b64decode(unstreamed["audio_base64"]), "<i2").astype(np.int32)
    got = np.concatenate([np.frombuffer(base64.b64decode(i["audio_base64"]), "<i2") for i in [first, *rest]])
    assert len(got) == len(want)
    assert np.max(np.abs(got - want)) <= 2


@pytest.mark.slow
def test_the_http_stream_delivers_the_first_frame_at_once(caches, model_dirs):
    worker, gate = _gated_worker(caches, model_dirs, "tiny")
    plan = worker.plan_synthesis({**JOB, "stream": True}, stream_default_format="pcm")
    cancel = threading.Event()
    parts = http_server._encoded(worker, plan, cancel)
    try:
        first = next(part for part in parts if part)
        assert gate.frames == [1]
    finally:
        gate.release.set()
    rest = b"".join(parts)
    model = caches["tiny"].get("0.6B-CustomVoice")
    assert len(first) // 2 == model.frame_samples - int(model.sample_rate * worker.settings.crossfade_ms / 1000)
    assert len(rest) > 0
