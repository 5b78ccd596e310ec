"""The long-form guard (audio/guard.py): detectors on constructed token sequences, the expected-duration model,
and, on the real engines, looping and stalled rows stopped inside a batch whose other rows come out unchanged."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from audio.guard import (
    DEFAULT_RATE_S_PER_UNIT,
    SPEAKING_RATE_S_PER_UNIT,
    BatchGuard,
    GuardLimits,
    RateModel,
    RowWatch,
    band_failure,
    find_loop,
    find_stall,
    guarded_budget,
    longest_internal_silence_s,
)
from audio.serving.service import make_handler
from audio.speech import ChunkRequest, Voice, derive_seed
from tests.test_http_server import served  # noqa: F401 - the HTTP mode's fixture

FRAME_RATE_HZ = 12.5  # the 12 Hz codec: 24 kHz / 1920
LIMITS = GuardLimits()
VOCAB = 2048


def speech_like(n: int, seed: int) -> np.ndarray:
    """First-codebook ids with the skew of real codec tokens (a few ids are common, most are rare)."""
    rng = np.random.default_rng(seed)
    return (rng.zipf(1.3, n) - 1) % VOCAB


def looped(stretch: np.ndarray, times: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    out = np.tile(stretch, times)
    rng = np.random.default_rng(seed)
    flip = rng.random(out.size) < noise
    out[flip] = rng.integers(0, VOCAB, flip.sum())
    return out


# -- detectors on constructed sequences ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens, period",
    [
        pytest.param(np.concatenate((speech_like(40, 1), looped(speech_like(13, 2), 3))), 13, id="1s-phrase-x3"),
        pytest.param(np.concatenate((speech_like(20, 3), looped(speech_like(30, 4), 4))), 30, id="2.4s-phrase-x4"),
        pytest.param(looped(speech_like(25, 5), 3, noise=0.04, seed=9), 25, id="near-exact-loop"),
    ],
)
def test_a_phrase_said_three_times_is_a_loop(tokens, period):
    assert find_loop(tokens, 12, 75, LIMITS.loop_repeats, LIMITS.loop_match) == period


@pytest.mark.parametrize(
    "tokens",
    [
        pytest.param(speech_like(2000, 7), id="speech-like-160s"),
        pytest.param(np.random.default_rng(8).integers(0, VOCAB, 2000), id="uniform-ids"),
        pytest.param(np.random.default_rng(8).integers(0, 4, 600), id="ids-repeating-by-chance"),
        pytest.param(np.concatenate((speech_like(40, 1), looped(speech_like(6, 2), 4))), id="short-repeat-0.5s"),
        pytest.param(np.concatenate((speech_like(40, 1), looped(speech_like(15, 2), 2))), id="phrase-said-twice"),
    ],
)
def test_natural_sequences_are_not_loops(tokens):
    watch = RowWatch(FRAME_RATE_HZ, LIMITS)
    verdicts = [watch.push(tokens[i : i + 6]) for i in range(0, tokens.size, 6)]
    assert [v for v in verdicts if v] == []


def test_one_frame_held_for_the_stall_time_is_a_stall():
    frames = round(LIMITS.stall_s * FRAME_RATE_HZ)  # 19
    held = np.concatenate((speech_like(30, 1), np.full(frames, 17)))
    assert find_stall(held, frames)
    assert not find_stall(held[:-1], frames)  # 18 frames: 1.44 s
    watch = RowWatch(FRAME_RATE_HZ, LIMITS)
    assert watch.push(held) == "stalled: one frame repeated for 1.5 s (at 3.9 s)"


def test_a_loop_is_named_with_its_stretch_and_where_it_was_caught():
    watch = RowWatch(FRAME_RATE_HZ, LIMITS)
    tokens = looped(speech_like(15, 4), 3)
    assert [watch.push(tokens[i : i + 6]) for i in range(0, 42, 6)][-1] is None  # 42 frames: no third repeat yet
    assert watch.push(tokens[42:]) == "looping: a 1.2 s stretch said 3 times (at 3.6 s)"


def test_internal_silence_is_measured_between_the_first_and_last_sound():
    rate = 24000
    tone = 0.3 * np.sin(np.arange(rate) * 2 * np.pi * 220 / rate)
    gap = np.zeros(int(2.5 * rate))
    x = np.concatenate((np.zeros(3 * rate), tone, gap, tone, np.zeros(4 * rate))).astype(np.float32)
    assert longest_internal_silence_s(x, rate, -50.0) == pytest.approx(2.5, abs=0.05)
    assert longest_internal_silence_s(x[: 4 * rate], rate, -50.0) == 0.0  # leading silence is no inner gap


# -- the expected-duration model -------------------------------------------------------------------------------


def test_expected_duration_starts_from_the_language_prior_then_follows_the_job():
    rates = RateModel()
    voice = ("1.7B-CustomVoice", ("Ryan",), "English")
    assert rates.expected_s(voice, "English", 100) == pytest.approx(6.6)
    assert rates.expected_s(voice, "Auto", 100) == pytest.approx(100 * DEFAULT_RATE_S_PER_UNIT)
    assert not rates.known(voice)
    for duration_s in (5.0, 9.0, 7.0):  # 0.05, 0.09, 0.07 s per unit: median 0.07
        rates.accept(voice, 100, duration_s)
    assert rates.known(voice)
    assert rates.expected_s(voice, "English", 50) == pytest.approx(3.5)
    assert rates.expected_s(("other",), "Chinese", 30) == pytest.approx(30 * SPEAKING_RATE_S_PER_UNIT["Chinese"])


@pytest.mark.parametrize(
    "duration_s, reason",
    [
        pytest.param(4.9, "too short: 4.90 s against an expected 10.00 s (0.49×)", id="short"),
        pytest.param(5.0, None, id="band-low-edge"),
        pytest.param(18.0, None, id="band-high-edge"),
        pytest.param(18.2, "too long: 18.20 s against an expected 10.00 s (1.82×)", id="long"),
    ],
)
def test_the_band_around_the_expected_length(duration_s, reason):
    assert band_failure(duration_s, 10.0, LIMITS) == reason


@pytest.mark.parametrize(
    "duration_s, reason",
    [
        pytest.param(3.3, "too short: 3.30 s against an expected 10.00 s (0.33×)", id="short"),
        pytest.param(3.4, None, id="slow-voice-low"),
        pytest.param(26.9, None, id="slow-voice-high"),
        pytest.param(27.1, "too long: 27.10 s against an expected 10.00 s (2.71×)", id="long"),
    ],
)
def test_against_the_language_prior_the_band_is_wider(duration_s, reason):
    assert band_failure(duration_s, 10.0, LIMITS, measured=False) == reason


def test_the_budget_tightens_to_a_multiple_of_the_expected_length():
    assert guarded_budget(200, 4.0, FRAME_RATE_HZ, LIMITS) == 125  # 2.5 × 4 s × 12.5 Hz
    assert guarded_budget(100, 4.0, FRAME_RATE_HZ, LIMITS) == 100  # never looser than the text's own budget


# -- on the real engines ---------------------------------------------------------------------------------------

LOOP = np.tile(np.arange(100, 112), 20)  # a 12-frame (0.96 s) stretch, over and over
STALL = np.full(240, 7)


class InjectingLoop:
    """Delegates to the engine's real frame loop; the rows whose seed is in `inject` get their first-codebook
    tokens replaced by the pattern (what the guard then sees), their other codebooks left as generated."""

    def __init__(self, real, inject: dict[int, np.ndarray]):
        self.real = real
        self.inject = inject

    def __getattr__(self, name):
        return getattr(self.real, name)

    def run(self, prompts, pad_embed, budgets, sampling, seeds):
        targets = {row: self.inject[s] for row, s in enumerate(seeds) if s in self.inject}
        steps = self.real.run(prompts, pad_embed, budgets, sampling, seeds)
        stop = None
        while True:
            try:
                step = steps.send(stop)
            except StopIteration:
                return
            if targets.keys() & set(step.rows):
                codes = step.codes.clone()  # the loop's own tensors are inference tensors
                for k, row in enumerate(step.rows):
                    if row in targets:
                        codes[k, 0] = int(targets[row][step.index])
                step = type(step)(step.index, step.rows, codes)
            stop = yield step


def fast_model(model_cache, name="0.6B-CustomVoice"):
    model = model_cache.get(name)
    assert model.capabilities.engine == "fast"
    return model


REQUESTS = [ChunkRequest(f"Row number {i} says its sentence.", 60, 1000 + i) for i in range(4)]
CALL = {"language": "English", "voice": Voice(speaker="Ryan"), "params": {}}


@pytest.mark.parametrize(
    "pattern, frames, reason",
    [
        pytest.param(LOOP, 36, "looping: a 1.0 s stretch said 3 times (at 2.9 s)", id="loop"),
        pytest.param(STALL, 24, "stalled: one frame repeated for 1.5 s (at 1.9 s)", id="stall"),
    ],
)
def test_a_looping_or_stalled_row_leaves_the_batch_and_the_others_are_unchanged(
    model_cache, monkeypatch, pattern, frames, reason
):
    model = fast_model(model_cache)
    clean = model.generate(REQUESTS, **CALL)
    monkeypatch.setattr(model, "loop", InjectingLoop(model.loop, {REQUESTS[2].seed: pattern}))
    guard = BatchGuard(len(REQUESTS), model.frame_rate_hz, LIMITS)
    guarded = model.generate(REQUESTS, guard=guard, **CALL)
    assert guard.reasons == {2: reason}
    assert [len(w) // model.frame_samples for w in guarded] == [60, 60, frames, 60]  # dead EOS: the budget
    for row in (0, 1, 3):
        assert np.array_equal(guarded[row], clean[row]), row


def test_the_reference_engine_gets_the_same_checks_after_the_fact(make_settings, monkeypatch):
    from audio.model_loader import ModelCache

    model = ModelCache(make_settings({"QWEN_TTS_ENGINE": "reference"})).get("0.6B-CustomVoice")
    real = model.tts.model.generate

    def injecting(*args, **kwargs):
        codes, hidden = real(*args, **kwargs)
        codes[1][:, 0] = torch_tensor(LOOP[: codes[1].shape[0]], codes[1])
        return codes, hidden

    monkeypatch.setattr(model.tts.model, "generate", injecting)
    guard = BatchGuard(2, model.frame_rate_hz, LIMITS)
    wavs = model.generate(REQUESTS[:2], guard=guard, **CALL)
    assert guard.reasons == {1: "looping: a 1.0 s stretch said 3 times (at 4.8 s)"}
    assert [len(w) // model.frame_samples for w in wavs] == [60, 60]  # qwen_tts's generate runs to the end


def torch_tensor(values, like):
    import torch

    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


def run(worker, job):
    return make_handler(worker)({"id": "guard", "input": job})


TEXT = "Alpha says the first line here. Bravo says the second line here. Charlie says the third."


def test_a_looping_chunk_is_retried_with_a_new_seed_and_reported(make_worker, model_cache, monkeypatch):
    job = {"text": TEXT, "model": "0.6B-CustomVoice", "seed": 11, "params": {"max_new_tokens": 61}}
    env = {"QWEN_TTS_CHUNK_TARGET_CHARS": "30", "QWEN_TTS_CHUNK_MAX_CHARS": "40"}
    clean = run(make_worker(env), job)
    model = fast_model(model_cache)
    monkeypatch.setattr(model, "loop", InjectingLoop(model.loop, {derive_seed(11, 1, 0): LOOP}))
    result = run(make_worker(env), job)
    quality = result["metadata"]["quality"]
    assert (result["metadata"]["retries"], quality["retried_chunks"], quality["failed_chunks"]) == (1, 1, 0)
    assert [(c["chunk"], c["attempts"], c["seed"]) for c in quality["chunks"]] == [
        (0, 1, derive_seed(11, 0, 0)),
        (1, 2, derive_seed(11, 1, 1)),
        (2, 1, derive_seed(11, 2, 0)),
    ]
    assert quality["chunks"][1]["failures"] == ["looping: a 1.0 s stretch said 3 times (at 2.9 s)"]
    assert [c["duration_s"] for c in quality["chunks"]] == [4.8] * 3  # 60 frames each, the kept attempts
    chunks_clean, chunks_guarded = spans(clean), spans(result)
    assert chunks_guarded[0] == chunks_clean[0] and chunks_guarded[2] == chunks_clean[2]
    assert chunks_guarded[1] != chunks_clean[1]  # the retry's new seed


def spans(result) -> list[bytes]:
    audio, rate = sf.read(io.BytesIO(base64.b64decode(result["audio_base64"])), dtype="int16")
    return [
        audio[round(t["start_s"] * rate) : round(t["end_s"] * rate)].tobytes() for t in result["metadata"]["timeline"]
    ]


class Paced:
    """Delegates to the real model and cuts each chunk to `s_per_char` × its length, a steady speaker; the chunk
    holding `marker` drags to `factor` × that (as far as its budget lets it) on its first attempt. Records each
    chunk's frame budgets."""

    def __init__(self, real, marker: str, factor: float, s_per_char: float = 0.08):
        self.real, self.marker, self.factor, self.s_per_char = real, marker, factor, s_per_char
        self.budgets: dict[str, list[int]] = {}

    def __getattr__(self, name):
        return getattr(self.real, name)

    def generate(self, requests, **kwargs):
        wavs = self.real.generate(requests, **kwargs)
        out = []
        for request, wav in zip(requests, wavs, strict=True):
            first = request.text not in self.budgets
            self.budgets.setdefault(request.text, []).append(request.budget_frames)
            seconds = (
                self.s_per_char * len(request.text) * (self.factor if self.marker in request.text and first else 1)
            )
            out.append(wav[: round(seconds * self.real.frame_rate_hz) * self.real.frame_samples])
        return out


def test_a_chunk_far_from_its_expected_length_is_retried_under_a_tighter_budget(make_worker, model_cache):
    """The first chunks set the voice's rate; a chunk dragging to 2× it fails the band and is retried (one that
    drags further is cut at its tightened budget: a runaway)."""
    paced = Paced(model_cache.get("0.6B-CustomVoice"), "Bravo", 2.0)
    env = {"QWEN_TTS_CHUNK_TARGET_CHARS": "30", "QWEN_TTS_CHUNK_MAX_CHARS": "40", "QWEN_TTS_MAX_BATCH": "1"}
    result = run(make_worker(env, get_model=lambda _name: paced), {"text": TEXT, "model": "0.6B-CustomVoice"})
    quality = result["metadata"]["quality"]["chunks"]
    texts = [TEXT[a:b] for a, b in (t["chars"] for t in result["metadata"]["timeline"])]
    # Batches of one run shortest first: Charlie (23 characters), Alpha (31), then Bravo (32).
    charlie, alpha, bravo = (texts.index(t) for t in sorted(texts, key=len))
    rate = np.median([quality[i]["duration_s"] / len(texts[i]) for i in (charlie, alpha)])
    expected_s = rate * len(texts[bravo])
    budget = int(np.ceil(LIMITS.budget_multiple * expected_s * FRAME_RATE_HZ))
    assert paced.budgets[texts[charlie]][0] == int(np.ceil((0.25 * 23 + 2.0) * FRAME_RATE_HZ))  # the text's own
    assert paced.budgets[texts[bravo]] == [budget, budget]  # tightened by the measured rate
    dragged_s = round(2.0 * 0.08 * len(texts[bravo]) * FRAME_RATE_HZ) / FRAME_RATE_HZ
    assert quality[bravo]["failures"] == [
        f"too long: {dragged_s:.2f} s against an expected {expected_s:.2f} s ({dragged_s / expected_s:.2f}×)"
    ]
    assert quality[bravo]["attempts"] == 2
    assert quality[bravo]["expected_s"] == pytest.approx(expected_s, abs=1e-3)
    assert result["metadata"]["retries"] == 1


def test_a_streamed_first_chunk_that_loops_fails_the_job_at_detection(make_worker, model_cache, monkeypatch):
    from audio.serving import streaming

    env = {"QWEN_TTS_CHUNK_TARGET_CHARS": "30", "QWEN_TTS_CHUNK_MAX_CHARS": "40"}
    worker = make_worker(env)
    job = {"text": TEXT, "model": "0.6B-CustomVoice", "seed": 3, "stream": True, "params": {"max_new_tokens": 61}}
    plan = worker.plan_synthesis(job, stream_default_format="pcm")
    model = fast_model(model_cache)
    loop = InjectingLoop(model.loop, {derive_seed(3, 0, 0): LOOP})
    monkeypatch.setattr(model, "loop", loop)
    items, frames = [], 0
    with pytest.raises(Exception) as failed:
        for item in streaming.queue_items(worker, plan, "s"):
            items.append(item)
    assert failed.value.code == "synthesis_failed"
    assert "looping: a 1.0 s stretch said 3 times (at 2.9 s)" in failed.value.message
    assert "streamed as it was made" in failed.value.message
    streamed = sum(len(base64.b64decode(i["audio_base64"])) // 2 for i in items)
    frames = streamed / model.frame_samples
    assert frames <= 36  # what was out before the loop was caught, and nothing generated after it


def test_the_http_mode_reports_a_retried_stall(served, model_cache, monkeypatch):  # noqa: F811 - the fixture
    import requests

    model = fast_model(model_cache)
    monkeypatch.setattr(model, "loop", InjectingLoop(model.loop, {derive_seed(5, 1, 0): STALL}))
    server = served({"QWEN_TTS_CHUNK_TARGET_CHARS": "30", "QWEN_TTS_CHUNK_MAX_CHARS": "40"})
    job = {"text": TEXT, "model": "0.6B-CustomVoice", "seed": 5, "params": {"max_new_tokens": 31}}
    reply = requests.post(f"{server.url}/run", json={"input": job}, timeout=120)
    quality = reply.json()["metadata"]["quality"]
    assert (reply.status_code, quality["retried_chunks"]) == (200, 1)
    assert quality["chunks"][1]["failures"] == ["stalled: one frame repeated for 1.5 s (at 1.9 s)"]


def test_a_streams_last_item_carries_the_quality_report(make_worker):
    from audio.serving import streaming

    worker = make_worker({"QWEN_TTS_CHUNK_TARGET_CHARS": "30", "QWEN_TTS_CHUNK_MAX_CHARS": "40"})
    job = {"text": TEXT, "model": "0.6B-CustomVoice", "seed": 5, "stream": True, "params": {"max_new_tokens": 9}}
    items = list(streaming.queue_items(worker, worker.plan_synthesis(job, stream_default_format="pcm"), "s"))
    quality = items[-1]["metadata"]["quality"]
    assert [(c["chunk"], c["attempts"], c["duration_s"]) for c in quality["chunks"]] == [(i, 1, 0.64) for i in range(3)]
    assert all("metadata" not in item for item in items[:-1])
