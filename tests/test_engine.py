"""The fast engine against qwen_tts's own generate (the `reference` engine), on the real code of tiny checkpoints.

Greedy (`top_k: 1`, `subtalker_top_k: 1`): identical codec frames and identical result bytes through the handler.
Sampling: a chunk's frames depend on its seed only (alone or in a batch of 8), a retry draws a new sample.
Incremental decoding matches the whole decode. The CUDA-graph bodies, run eagerly on CPU, match the loop.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import soundfile as sf
import torch

from audio.engine.codec import decode_whole
from audio.engine.graphs import GraphSteps, _codes
from audio.model_loader import ModelCache
from audio.serving.service import make_handler
from audio.settings import Settings
from audio.speech import ChunkRequest, Voice
from audio.worker import Worker
from tests.conftest import DEVICE_ENV
from tests.test_handler_e2e import REF

GREEDY = {"top_k": 1, "subtalker_top_k": 1}
MAX_DIFF_INCREMENTAL = 1e-3
ON_CUDA = DEVICE_ENV.get("QWEN_TTS_DEVICE", "cpu").startswith("cuda")


def engine_settings(model_dir, **env: str) -> Settings:
    base = {"QWEN_TTS_MODEL_DIR": str(model_dir), "QWEN_TTS_PRELOAD": "none", "HF_HOME": str(model_dir / "no-hf")}
    return Settings.from_env({**base, **DEVICE_ENV, **env})


class CodeSpy:
    """Records the codec frames each decode receives, around the real speech tokenizer's `decode`."""

    def __init__(self, cache: ModelCache):
        self.cache = cache
        self.codes: list[list[np.ndarray]] = []

    def get(self, name: str):
        model = self.cache.get(name)
        tokenizer = model.tts.model.speech_tokenizer
        if not hasattr(tokenizer, "_spied"):
            real = tokenizer.decode

            def decode(encoded):
                self.codes.append([np.asarray(e["audio_codes"].cpu()) for e in encoded])
                return real(encoded)

            tokenizer.decode = decode
            tokenizer._spied = True
        return model


@dataclass
class Pair:
    """The same checkpoints behind both engines, each with its own cache and decode spy."""

    make: Callable[[str], tuple[Worker, CodeSpy]]
    engines: dict[str, tuple[Worker, CodeSpy]] = field(default_factory=dict)

    def run(self, engine: str, job_input: dict) -> tuple[dict, list[list[np.ndarray]]]:
        if engine not in self.engines:
            self.engines[engine] = self.make(engine)
        worker, spy = self.engines[engine]
        spy.codes.clear()
        result = make_handler(worker)({"id": "eq", "input": job_input})
        return result, [c for call in spy.codes for c in call]


def _pair(model_dir, extra_env=None) -> Pair:
    def make(engine: str) -> tuple[Worker, CodeSpy]:
        settings = engine_settings(
            model_dir, QWEN_TTS_MAX_LOADED_MODELS="5", QWEN_TTS_ENGINE=engine, **(extra_env or {})
        )
        spy = CodeSpy(ModelCache(settings))
        return Worker(settings, models=spy.cache, get_model=spy.get), spy

    return Pair(make)


@pytest.fixture(scope="module")
def dead_eos_pair(tiny_model_dir) -> Pair:
    return _pair(tiny_model_dir)


@pytest.fixture(scope="module")
def live_eos_pair(live_eos_model_dir) -> Pair:
    return _pair(live_eos_model_dir, {"QWEN_TTS_MIN_SECONDS_PER_CHAR": "0"})


def _first_divergence(a: list[np.ndarray], b: list[np.ndarray]) -> str:
    for row, (x, y) in enumerate(zip(a, b, strict=False)):
        n = min(len(x), len(y))
        diff = np.nonzero((x[:n] != y[:n]).any(axis=1))[0]
        if len(diff) or len(x) != len(y):
            return f"row {row}: first divergent frame {int(diff[0]) if len(diff) else n} (lengths {len(x)}/{len(y)})"
    return f"{len(a)} vs {len(b)} rows"


def _top2_gap_note(pair: Pair, job: dict) -> str:
    """On a greedy mismatch: the smallest top-2 gap of the talker's logits in the fast run (near-ties explain it)."""
    worker, spy = pair.engines["fast"]
    gaps: list[float] = []
    for model in spy.cache._models.values():
        loop = model.loop
        real = loop.head

        def head(hidden, real=real):
            out = real(hidden)
            top = out[1].topk(2, dim=-1).values
            gaps.append(float((top[:, 0] - top[:, 1]).min()))
            return out

        loop.head = head
    try:
        make_handler(worker)({"id": "gap", "input": job})
    finally:
        for model in spy.cache._models.values():
            del model.loop.head
    return f"smallest talker top-2 logit gap in the fast run: {min(gaps):.3g} (fp32 near-ties are ~1e-5)"


EQUIVALENCE = [
    pytest.param({"model": "1.7B-CustomVoice", "voice": "Ryan", "text": "Hello there."}, id="custom-voice"),
    pytest.param(
        {"model": "1.7B-CustomVoice", "voice": "Vivian", "instruct": "Speak cheerfully.", "text": "Good morning."},
        id="custom-voice-instruct",
    ),
    pytest.param({"model": "0.6B-CustomVoice", "voice": "Dylan", "text": "A dialect speaker."}, id="dialect-auto"),
    pytest.param(
        {"model": "1.7B-VoiceDesign", "instruct": "A warm, low voice.", "text": "Designed voices speak too."},
        id="voice-design",
    ),
    pytest.param(
        {"model": "1.7B-Base", "ref_audio": REF, "ref_text": "A reference sentence.", "text": "Cloned speech."},
        id="base-icl",
    ),
    pytest.param({"model": "0.6B-Base", "ref_audio": REF, "x_vector_only": True, "text": "X-vector."}, id="base-xvec"),
    pytest.param(
        {
            "model": "0.6B-CustomVoice",
            "text": "Short one. " + "This sentence is rather longer than the first one, by design. " * 5,
            "voice": "Aiden",
        },
        id="multi-chunk-left-padding",
    ),
    pytest.param(
        {
            "segments": [
                {"text": "Host speaks first.", "model": "1.7B-CustomVoice", "voice": "Ryan"},
                {"text": "A designed guest answers.", "model": "1.7B-VoiceDesign", "instruct": "A bright voice."},
                {"text": "A clone closes.", "model": "0.6B-Base", "ref_audio": REF, "ref_text": "Reference."},
            ]
        },
        id="podcast-mixing-models",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("job", EQUIVALENCE)
def test_greedy_fast_equals_reference_frames_and_bytes(dead_eos_pair, job):
    job = {**job, "seed": 3, "params": {**GREEDY, "max_new_tokens": 9}}
    ref, ref_codes = dead_eos_pair.run("reference", job)
    fast, fast_codes = dead_eos_pair.run("fast", job)
    assert "error" not in ref, ref
    same = len(ref_codes) == len(fast_codes) and all(
        np.array_equal(a, b) for a, b in zip(ref_codes, fast_codes, strict=False)
    )
    assert same, f"{_first_divergence(ref_codes, fast_codes)}; {_top2_gap_note(dead_eos_pair, job)}"
    assert fast["audio_base64"] == ref["audio_base64"]
    assert fast["metadata"]["duration_seconds"] == ref["metadata"]["duration_seconds"]
    assert len(fast_codes) == fast["metadata"]["num_chunks"]


LIVE_EOS_MODELS = ("1.7B-CustomVoice", "0.6B-CustomVoice")  # the variants the live-EOS build has


@pytest.mark.slow
@pytest.mark.parametrize(
    "job", [p for p in EQUIVALENCE if p.values[0].get("model") in LIVE_EOS_MODELS], ids=lambda j: j.get("voice")
)
def test_greedy_fast_equals_reference_with_live_eos(live_eos_pair, job):
    job = {**job, "seed": 3, "params": {**GREEDY, "max_new_tokens": 30}}
    ref, ref_codes = live_eos_pair.run("reference", job)
    fast, fast_codes = live_eos_pair.run("fast", job)
    assert "error" not in ref, ref
    assert all(map(np.array_equal, ref_codes, fast_codes)) and len(ref_codes) == len(fast_codes), _first_divergence(
        ref_codes, fast_codes
    )
    assert fast["audio_base64"] == ref["audio_base64"]


@pytest.mark.slow
def test_greedy_rows_that_stop_at_different_frames_match_reference(live_eos_pair):
    text = " ".join(f"Sentence number {i} is here to be spoken." for i in range(8))
    job = {"model": "0.6B-CustomVoice", "text": text, "seed": 5, "params": {**GREEDY, "max_new_tokens": 40}}
    ref, ref_codes = live_eos_pair.run("reference", job)
    fast, fast_codes = live_eos_pair.run("fast", job)
    lengths = [len(c) for c in fast_codes]
    assert len(set(lengths)) > 1, lengths  # the rows really ended at different steps
    assert min(lengths) < 39  # and some before the cap: EOS
    assert [len(c) for c in ref_codes] == lengths
    assert all(np.array_equal(a, b) for a, b in zip(ref_codes, fast_codes, strict=False)), _first_divergence(
        ref_codes, fast_codes
    )
    assert fast["audio_base64"] == ref["audio_base64"]


def _samples(result: dict) -> np.ndarray:
    audio, _ = sf.read(io.BytesIO(base64.b64decode(result["audio_base64"])), dtype="float32")
    return audio


@pytest.mark.slow
def test_sampling_same_seed_same_bytes_and_new_seed_new_audio(dead_eos_pair):
    job = {"model": "0.6B-CustomVoice", "text": "Sampled speech.", "seed": 11, "params": {"max_new_tokens": 12}}
    first, _ = dead_eos_pair.run("fast", job)
    again, _ = dead_eos_pair.run("fast", job)
    other, _ = dead_eos_pair.run("fast", {**job, "seed": 12})
    assert first["audio_base64"] == again["audio_base64"]
    assert first["audio_base64"] != other["audio_base64"]


@pytest.fixture(scope="module")
def fast_model(tiny_model_dir):
    return ModelCache(engine_settings(tiny_model_dir)).get("0.6B-CustomVoice")


def _frames(model, requests, **kwargs) -> list[np.ndarray]:
    rows: list[list] = [[] for _ in requests]
    for step in model.frames(requests, language="Auto", voice=Voice(speaker="Ryan"), params={}, **kwargs):
        for row, codes in zip(step.rows, step.codes.tolist(), strict=True):
            rows[row].append(codes)
    return [np.array(r) for r in rows]


@pytest.mark.slow
def test_a_chunk_samples_the_same_frames_alone_and_in_a_batch_of_8(fast_model):
    texts = [f"Row {i} says something {'rather long ' * i}here." for i in range(8)]
    requests = [ChunkRequest(t, 10 + i, seed=100 + i) for i, t in enumerate(texts)]
    batch = _frames(fast_model, requests)
    alone = _frames(fast_model, [requests[5]])[0]
    assert np.array_equal(batch[5], alone)
    assert [len(f) for f in batch] == [10 + i for i in range(8)]  # each row stops at its own budget
    wav_batch = fast_model.generate(requests, language="Auto", voice=Voice(speaker="Ryan"), params={})[5]
    wav_alone = fast_model.generate([requests[5]], language="Auto", voice=Voice(speaker="Ryan"), params={})[0]
    assert len(wav_batch) == len(wav_alone) == 15 * fast_model.frame_samples
    assert np.max(np.abs(wav_batch - wav_alone)) <= 1e-4


@dataclass
class FailOnce:
    """The real fast model; the first time it generates the chunk containing `marker`, that chunk is silenced."""

    real: object
    marker: str
    seen: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def generate(self, requests, **kwargs):
        wavs = self.real.generate(requests, **kwargs)
        for i, r in enumerate(requests):
            if self.marker in r.text:
                self.seen.append((r.seed, wavs[i].copy()))
                if len(self.seen) == 1:
                    wavs[i] = np.zeros_like(wavs[i])
        return wavs


@pytest.mark.slow
def test_a_retried_chunk_draws_a_new_sample(tiny_model_dir):
    settings = engine_settings(tiny_model_dir)
    cache = ModelCache(settings)
    wrapper = FailOnce(cache.get("0.6B-CustomVoice"), "Second")
    worker = Worker(settings, models=cache, get_model=lambda name: wrapper)
    text = "First sentence of the job is here. Second sentence is the one that fails once."
    job = {"model": "0.6B-CustomVoice", "text": text, "seed": 2, "params": {"max_new_tokens": 10}}
    result = make_handler(worker)({"id": "retry", "input": job})
    assert result["metadata"]["retries"] == 1
    (seed_1, wav_1), (seed_2, wav_2) = wrapper.seen
    assert seed_1 != seed_2
    assert not np.array_equal(wav_1, wav_2)


@pytest.mark.slow
@pytest.mark.parametrize("piece_frames", [1, 5, 12])
def test_incremental_decode_matches_the_whole_decode(fast_model, piece_frames):
    requests = [ChunkRequest("Streaming audio, piece by piece.", 40, seed=9), ChunkRequest("A second row.", 23, seed=4)]
    codes = [torch.tensor(f) for f in _frames(fast_model, requests)]
    whole = decode_whole(fast_model.tts, codes, [None, None])
    pieces: dict[int, list[np.ndarray]] = {0: [], 1: []}
    finals = []
    kwargs = {"language": "Auto", "voice": Voice(speaker="Ryan"), "params": {}}
    for piece in fast_model.stream(requests, piece_frames=piece_frames, **kwargs):
        pieces[piece.row].append(piece.samples)
        assert len(piece.samples) == piece.frames * fast_model.frame_samples
        if piece.final:
            finals.append(piece.row)
    assert sorted(finals) == [0, 1]
    for row in (0, 1):
        streamed = np.concatenate(pieces[row])
        assert len(streamed) == len(whole[row])
        assert np.max(np.abs(streamed - whole[row])) <= MAX_DIFF_INCREMENTAL


@pytest.mark.slow
def test_incremental_decode_of_a_cloned_voice_uses_the_reference_as_context(tiny_model_dir):
    from audio.voices.reference import decode_reference

    model = ModelCache(engine_settings(tiny_model_dir)).get("1.7B-Base")
    ref = decode_reference(REF, model.sample_rate)
    voice = Voice(ref_audio=(ref.samples, ref.sample_rate), ref_text="A reference sentence.", ref_key=ref.key)
    prompt = model.clone_prompt(voice)
    requests = [ChunkRequest("Cloned and streamed.", 30, seed=1)]
    kwargs = {"language": "Auto", "voice": voice, "params": {}, "clone_prompt": prompt}
    whole = model.generate(requests, **kwargs)[0]
    streamed = np.concatenate([p.samples for p in model.stream(requests, piece_frames=8, **kwargs)])
    assert len(streamed) == len(whole) == 30 * model.frame_samples
    assert np.max(np.abs(streamed - whole)) <= MAX_DIFF_INCREMENTAL


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_graph_bodies_run_eagerly_equal_the_loop(live_eos_model_dir, batch):
    """The CUDA-graph path's static cache, tensor slots, masks and compaction, without capture (CPU)."""
    loop = ModelCache(engine_settings(live_eos_model_dir, QWEN_TTS_CUDA_GRAPHS="off")).get("0.6B-CustomVoice").loop
    static = GraphSteps(loop, max_batch=4, max_len=64)
    static.use_replay(False)
    want = _codes(loop, loop.steps, batch, sampled=False)
    assert _codes(loop, static, batch, sampled=False) == want
    enabled = GraphSteps.try_enable(loop, max_batch=4, max_len=64)
    assert (enabled is not None) == ON_CUDA  # without CUDA: eager


@pytest.mark.skipif(not ON_CUDA, reason="CUDA graphs need a GPU (scripts/gpu_check.sh)")
@pytest.mark.parametrize("batch", [1, 5])
def test_cuda_graphs_replay_equals_eager_on_real_prompts(tiny_model_dir, batch):
    """Graphs against eager only (in bf16 the top two logits tie often, so against the reference only in fp32)."""
    graphs = ModelCache(engine_settings(tiny_model_dir, QWEN_TTS_CUDA_GRAPHS="auto")).get("0.6B-CustomVoice")
    assert graphs.cuda_graphs
    requests = [ChunkRequest(f"Graph row {i} {'speaks ' * i}now.", 12 + 3 * i, seed=i) for i in range(batch)]
    replayed = _frames(graphs, requests)
    graphs.loop.steps.use_replay(False)  # the same static computation, eagerly
    eager = _frames(graphs, requests)
    assert all(map(np.array_equal, replayed, eager))


def test_engine_setting(make_settings):
    assert make_settings().engine == "fast"
    assert make_settings({"QWEN_TTS_ENGINE": "Reference"}).engine == "reference"
    with pytest.raises(ValueError, match="QWEN_TTS_ENGINE must be one of fast, reference, got 'turbo'"):
        make_settings({"QWEN_TTS_ENGINE": "turbo"})
    with pytest.raises(ValueError, match="QWEN_TTS_CUDA_GRAPHS must be one of auto, off"):
        make_settings({"QWEN_TTS_CUDA_GRAPHS": "always"})


@pytest.mark.slow
def test_health_and_capabilities_name_the_engine(make_worker, model_cache):
    assert make_worker().info("health")["engine"] == "fast"
    caps = model_cache.get("0.6B-CustomVoice").capabilities
    assert (caps.engine, caps.streams, caps.batch_independent, caps.honours_instruct) == ("fast", True, True, False)


@pytest.mark.skipif(not ON_CUDA, reason="GPU memory is measured on a GPU (scripts/gpu_check.sh)")
def test_gpu_memory_is_flat_over_many_generations(tiny_model_dir):
    model = ModelCache(engine_settings(tiny_model_dir)).get("0.6B-CustomVoice")
    voice = Voice(speaker="Ryan")
    requests = [ChunkRequest(f"Memory row {i}.", 20 + i, seed=i) for i in range(4)]
    model.generate(requests, language="Auto", voice=voice, params={})  # first call: tables, graphs, allocator
    torch.cuda.synchronize()
    after_first = torch.cuda.memory_allocated()
    for i in range(10):
        model.generate(requests[: 1 + i % 4], language="Auto", voice=voice, params={})
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == after_first


@pytest.mark.slow
def test_calls_of_different_voices_and_settings_batch_together_as_if_alone(fast_model):
    """Concurrent jobs on one model share a batch: per-row voices, sampling settings, budgets and seeds."""
    from audio.speech import GenerateCall

    calls = [
        GenerateCall([ChunkRequest("The first job speaks.", 14, seed=1)], "Auto", Voice(speaker="Ryan"), {}),
        GenerateCall(
            [
                ChunkRequest("The second job, another voice.", 9, seed=2),
                ChunkRequest("And a second chunk.", 11, seed=3),
            ],
            "English",
            Voice(speaker="Vivian"),
            {"temperature": 0.6, "top_k": 20, "repetition_penalty": 1.2},
        ),
    ]
    together = fast_model.generate_many(calls)
    for call, batched in zip(calls, together, strict=True):
        alone = fast_model.generate(
            call.requests, language=call.language, voice=call.voice, params=call.params, clone_prompt=None
        )
        assert [len(w) for w in batched] == [r.budget_frames * fast_model.frame_samples for r in call.requests]
        assert all(map(np.array_equal, alone, batched))
