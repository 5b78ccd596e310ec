"""Long-form and podcast generation on the real tiny model: chunking, batching, retries and exact joins.

`FaultyModel` wraps a real loaded model (it never replaces it): the real qwen_tts generation runs, then the
wrapper can swap one chunk's audio for silence or a runaway-length output, N times, to drive the retry path.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import numpy as np
import pytest
import soundfile as sf

from audio.output.joiner import CROSSFADE as CROSSFADE_GAP
from audio.output.joiner import joined_length
from audio.serving.service import make_handler
from audio.text.splitter import split_chunks, split_text

FRAME = 1920
CROSSFADE = 960  # 40 ms at 24 kHz, the default
PAUSE = 7200  # 300 ms at 24 kHz, the default

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Dr. Smith measured 3.5 liters of water, e.g. for the experiment at 9 a.m.",
    "She said, \u201cwe will meet again in the U.S. next spring.\u201d",
    "Numbers like 1,000.50 and URLs like https://example.com/a.b stay whole.",
    "Long-form speech needs chunks that end at sentence boundaries.",
    "每个句子都应该完整地保留下来。",
    "Then the story continues with another calm, measured sentence.",
]


GAPS = {"sentence": PAUSE, "clause": 2880, "forced": CROSSFADE_GAP}  # 300 ms, 120 ms at 24 kHz; crossfade


def gaps_of(text: str, target: int = 150, maximum: int = 250) -> list[list[int]]:
    """The joiner's gap after each chunk but the last of one segment, by why the chunk ends."""
    return [[GAPS[c.boundary] for c in split_chunks(text, target, maximum)[:-1]]]


def long_text(chars: int) -> str:
    out, i = [], 0
    while sum(len(s) + 1 for s in out) < chars:
        out.append(SENTENCES[i % len(SENTENCES)])
        i += 1
    return " ".join(out)[:chars].rsplit(" ", 1)[0] + "."


@dataclass
class FaultyModel:
    """Delegates to a real model; `faults[marker] = [kind, times]` corrupts the chunk containing `marker`."""

    real: object
    faults: dict[str, list] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        return self.real.sample_rate

    @property
    def frame_samples(self) -> int:
        return self.real.frame_samples

    def clone_prompt(self, voice):
        return self.real.clone_prompt(voice)

    @property
    def capabilities(self):
        return self.real.capabilities

    def generate(self, requests, **kwargs):
        texts = [r.text for r in requests]
        self.calls.append(texts)
        wavs = self.real.generate(requests, **kwargs)
        for i, text in enumerate(texts):
            for marker, fault in self.faults.items():
                if marker in text and fault[1] > 0:
                    fault[1] -= 1
                    if fault[0] == "silence":
                        wavs[i] = np.zeros_like(wavs[i])
                    elif fault[0] == "runaway":  # the whole budget, no end of speech
                        n = requests[i].budget_frames * self.frame_samples
                        wavs[i] = np.random.default_rng(0).uniform(-0.3, 0.3, n).astype(np.float32)
                    elif fault[0] == "nan":
                        wavs[i] = np.full_like(wavs[i], np.nan)
        return wavs


@pytest.fixture
def faulty(model_cache):
    wrappers: dict[str, FaultyModel] = {}

    def get_model(name: str) -> FaultyModel:
        if name not in wrappers:
            wrappers[name] = FaultyModel(model_cache.get(name))
        return wrappers[name]

    get_model.wrappers = wrappers
    return get_model


def run(worker, job_input, job_id="gen-1"):
    return make_handler(worker)({"id": job_id, "input": job_input})


def samples_of(result) -> np.ndarray:
    audio, _ = sf.read(io.BytesIO(base64.b64decode(result["audio_base64"])), dtype="int16")
    return audio


def test_long_text_is_one_wav_of_exactly_the_joined_length(make_worker, faulty):
    text = long_text(2000)
    chunks = split_text(text, 150, 250)
    worker = make_worker(get_model=faulty)
    result = run(worker, {"text": text, "model": "0.6B-CustomVoice", "seed": 1, "params": {"max_new_tokens": 4}})
    chunk_len = 3 * FRAME
    assert result["metadata"]["num_chunks"] == len(chunks) == 17
    assert {c.boundary for c in split_chunks(text, 150, 250)} == {"sentence"}  # every chunk ends a sentence
    assert len(samples_of(result)) == len(chunks) * chunk_len + (len(chunks) - 1) * PAUSE
    assert len(samples_of(result)) == joined_length([[chunk_len] * len(chunks)], [0], CROSSFADE, gaps_of(text))
    calls = faulty.wrappers["0.6B-CustomVoice"].calls
    assert [len(c) for c in calls] == [8, 8, 1]  # QWEN_TTS_MAX_BATCH=8
    assert sorted(t for call in calls for t in call) == sorted(chunks)  # every chunk generated once, none lost


PODCAST = [
    ("male_1", "Welcome back to the show. Today we talk about long-form speech synthesis."),
    ("female_1", "Thanks for having me. It is a topic close to my heart."),
    ("male_1", "Let us start with the basics. Why split text at all?"),
    ("female_1", "Because models drift on very long inputs. Short chunks keep the voice steady and clear."),
    ("male_1", "And how do you join the pieces back together?"),
    ("female_1", "With a short crossfade inside a speaker, and a real pause between speakers."),
]


def test_six_segment_podcast_has_exact_length_and_batches_per_voice(make_worker, faulty):
    segments = [{"text": text, "voice": voice} for voice, text in PODCAST]
    job = {"segments": segments, "model": "0.6B-CustomVoice", "seed": 2, "params": {"max_new_tokens": 5}}
    result = run(make_worker(get_model=faulty), job)
    per_segment = [[4 * FRAME] * len(split_text(t, 150, 250)) for _, t in PODCAST]
    expected = joined_length(per_segment, [PAUSE] * len(PODCAST), CROSSFADE)
    audio = samples_of(result)
    assert len(audio) == expected
    assert result["metadata"]["num_segments"] == 6
    # Between speakers: silence of exactly pause_ms, no crossfade across the boundary.
    first_end = sum(per_segment[0]) - (len(per_segment[0]) - 1) * CROSSFADE
    assert not audio[first_end : first_end + PAUSE].any()
    assert np.abs(audio[first_end - 50 : first_end]).max() > 0
    assert np.abs(audio[first_end + PAUSE : first_end + PAUSE + 50]).max() > 0
    # One generate call per voice: the three segments of each speaker share a batch.
    calls = faulty.wrappers["0.6B-CustomVoice"].calls
    assert sorted(len(c) for c in calls) == [3, 3]


def test_per_segment_pause_and_voice_override_inheritance(make_worker):
    job = {
        "segments": [{"text": "First."}, {"text": "Second.", "pause_ms": 1000, "voice": "Aiden"}],
        "voice": "Vivian",
        "pause_ms": 0,
        "model": "0.6B-CustomVoice",
        "params": {"max_new_tokens": 3},
    }
    assert len(samples_of(run(make_worker(), job))) == 2 * FRAME + 24000 + 2 * FRAME


def test_seed_handler_podcast_example_runs_as_written(live_eos_worker):
    """The seed's example: generic voice names, language under params, no model, no token cap."""
    job = {
        "segments": [
            {"text": "Hello and welcome to our podcast.", "voice": "male_1"},
            {"text": "Thanks, it's great to be here.", "voice": "female_1"},
        ],
        "params": {"language": "en"},
        "seed": 3,
    }
    result = run(live_eos_worker(), job)
    assert "error" not in result, result
    assert result["metadata"]["num_segments"] == 2
    assert result["metadata"]["model"] == "1.7B-CustomVoice"


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        pytest.param("silence", "silent", id="silent-chunk"),
        pytest.param("nan", "non-finite", id="nan-chunk"),
    ],
)
def test_a_failing_chunk_alone_is_retried_and_the_job_succeeds(make_worker, faulty, kind, reason):
    text = "Alpha sentence comes first. " * 6 + "Bravo sentence is the one that fails. " + "Charlie ends it. " * 6
    chunks = split_text(text, 150, 250)
    bad = next(c for c in chunks if "Bravo" in c)
    worker = make_worker(get_model=faulty)
    model = faulty("0.6B-CustomVoice")
    model.faults["Bravo"] = [kind, 2]
    result = run(worker, {"text": text, "model": "0.6B-CustomVoice", "seed": 4, "params": {"max_new_tokens": 30}})
    assert result["metadata"]["retries"] == 2
    assert model.calls[1:] == [[bad], [bad]]  # only the failing chunk is regenerated
    assert len(samples_of(result)) == joined_length([[29 * FRAME] * len(chunks)], [0], CROSSFADE, gaps_of(text))


def test_a_runaway_chunk_is_retried_against_its_text_budget(live_eos_worker, model_cache):
    text = "Alpha sentence comes first. Bravo sentence is the one that runs away. Charlie ends it."
    wrappers = {}

    def get_model(name):
        return wrappers.setdefault(name, FaultyModel(worker.models.get(name), faults={"Bravo": ["runaway", 2]}))

    worker = live_eos_worker(get_model)
    # No params.max_new_tokens: each chunk's budget comes from its text, and using all of it is a runaway.
    result = run(worker, {"text": text, "model": "0.6B-CustomVoice", "seed": 5})
    assert result["metadata"]["retries"] == 2
    assert wrappers["0.6B-CustomVoice"].calls[1:] == [[text]] * 2


def test_a_caller_token_cap_is_not_a_runaway(make_worker):
    # Dead EOS: the chunk uses its whole (caller-set) budget, which is what the caller asked for.
    result = run(make_worker(), {"text": "Capped.", "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 3}})
    assert result["metadata"]["retries"] == 0


def test_chunk_failing_past_the_retry_limit_fails_the_job_naming_it(make_worker, faulty):
    text = "A fine first sentence here. Bravo is broken for good. A fine last sentence here."
    worker = make_worker({"QWEN_TTS_CHUNK_TARGET_CHARS": "30", "QWEN_TTS_CHUNK_MAX_CHARS": "40"}, get_model=faulty)
    model = faulty("0.6B-CustomVoice")
    model.faults["Bravo"] = ["silence", 99]
    result = run(worker, {"text": text, "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 4}})
    assert result == {
        "error": {
            "code": "synthesis_failed",
            "message": "chunk 2 of 3 (characters 28-53) failed its quality check after 3 attempts: "
            "the audio is silent (-inf dBFS)",
        }
    }
    # One batch, then the failing chunk alone for each of the 2 retries; no sleeps, no fourth try.
    assert model.calls[1:] == [["Bravo is broken for good."]] * 2


def test_invalid_input_fails_at_once_with_zero_model_calls(make_worker):
    calls = []

    def get_model(name):
        calls.append(name)
        raise AssertionError("no model may be touched for invalid input")

    result = run(make_worker(get_model=get_model), {"text": "Hello.", "voice": "Nobody", "model": "0.6B-CustomVoice"})
    assert result["error"]["code"] == "invalid_input"
    assert calls == []


def test_whole_job_is_reproducible_with_a_seed(make_worker):
    job = {"text": long_text(600), "model": "0.6B-CustomVoice", "seed": 9, "params": {"max_new_tokens": 3}}
    assert run(make_worker(), job)["audio_base64"] == run(make_worker(), job)["audio_base64"]


def test_progress_is_reported_after_each_batch(make_worker):
    seen = []
    worker = make_worker({"QWEN_TTS_MAX_BATCH": "4"})
    text = long_text(1200)
    worker.handle(
        {"text": text, "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 2}},
        "progress-job",
        lambda done, total: seen.append((done, total)),
    )
    total = len(split_text(text, 150, 250))
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) == -(-total // 4)


def test_alternating_models_under_a_cap_of_one_load_each_model_once(make_settings):
    """A/Ryan, B/Ryan, A/Vivian, B/Vivian: each model loads once, its work runs in one stretch, and the first is
    freed (no reference left anywhere) before the second loads."""
    import weakref

    from audio.model_loader import ModelCache, _load_qwen_tts
    from audio.worker import Worker

    loaded: dict[str, weakref.ref] = {}
    alive_at_load: list[tuple[str, list[str]]] = []

    def load(path, tokenizer, runtime):
        alive_at_load.append((path.name, sorted(n for n, r in loaded.items() if r() is not None)))
        tts = _load_qwen_tts(path, tokenizer, runtime)
        loaded[path.name] = weakref.ref(tts)
        return tts

    settings = make_settings({"QWEN_TTS_MAX_LOADED_MODELS": "1"})
    cache = ModelCache(settings, load=load)
    calls: dict[str, list] = {}

    def get_model(name):  # a fresh wrapper per fetch that keeps no reference once the generator drops it
        return FaultyModel(cache.get(name), calls=calls.setdefault(name, []))

    worker = Worker(settings, models=cache, get_model=get_model)
    a, b = "0.6B-CustomVoice", "1.7B-CustomVoice"
    segments = [
        {"text": "One from A.", "model": a, "voice": "Ryan"},
        {"text": "Two from B.", "model": b, "voice": "Ryan"},
        {"text": "Three from A.", "model": a, "voice": "Vivian"},
        {"text": "Four from B.", "model": b, "voice": "Vivian"},
    ]
    result = run(worker, {"segments": segments, "seed": 3, "params": {"max_new_tokens": 4}})
    assert len(samples_of(result)) == 4 * 3 * FRAME + 3 * PAUSE
    assert alive_at_load == [("Qwen3-TTS-12Hz-0.6B-CustomVoice", []), ("Qwen3-TTS-12Hz-1.7B-CustomVoice", [])]
    assert calls == {a: [["One from A."], ["Three from A."]], b: [["Two from B."], ["Four from B."]]}
    health = run(worker, {"action": "health"})
    assert (health["loaded_models"], health["model_loads"]) == ([b], {a: 1, b: 1})


def test_warm_up_runs_one_short_generation_without_the_quality_gate(make_settings, model_cache):
    """A real model's 3-frame warm-up may well be silence: preload must not fail it as a chunk would."""
    from audio.worker import Worker

    settings = make_settings({"QWEN_TTS_PRELOAD": "0.6B-CustomVoice"})
    silent = FaultyModel(model_cache.get("0.6B-CustomVoice"), faults={"Hello": ["silence", 99]})
    worker = Worker(settings, models=model_cache, get_model=lambda name: silent)
    worker.preload()
    assert silent.calls == [["Hello."]]  # one generation, no retries
    result = run(worker, {"text": "Hello.", "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 4}})
    assert result["error"]["code"] == "synthesis_failed"  # a job's chunk still gets the gate
