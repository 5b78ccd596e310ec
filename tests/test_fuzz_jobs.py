"""Property-based fuzzing of the queue entry (issue #23): `hypothesis` jobs through `make_handler(worker)(job)`:
the contract's fields with random, boundary and wrong-typed values, unknown fields, deep nesting, huge strings,
Unicode edge cases (lone surrogates, combining marks, zero-width and bidi characters), NaN and infinity; plain,
OpenAI-shaped, info and voice actions. Every job ends in a success or a documented error code other than
`internal`, as valid UTF-8 JSON, with no traceback and no path of the worker's code.

Kept CPU-cheap and reproducible: most jobs are refused by validation; those that would synthesize get a small
`params.max_new_tokens` from the strategy and run on the tiny checkpoint; the worker's fetch policy can reach no
network (its resolver answers a documentation address and its connector refuses); `derandomize=True`.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from audio.model_loader import ModelCache
from audio.schema import INFO_ACTIONS, VOICE_ACTIONS
from audio.serving.service import make_handler
from audio.voices.reference import FetchPolicy
from audio.worker import Worker
from tests.conftest import NO_DURATION_BAND, ROOT

DOCUMENTED = {"invalid_input", "model_unavailable", "synthesis_failed", "payload_too_large", "delivery_failed"}
EXAMPLES = 300
SMALL_TOKENS = st.integers(min_value=1, max_value=4)


def _no_network(address: str, port: int, timeout_s: float):
    raise ConnectionRefusedError(f"the fuzz worker connects nowhere ({address}:{port})")


@pytest.fixture(scope="module")
def handle(make_settings, tmp_path_factory):
    env = {
        **NO_DURATION_BAND,
        "QWEN_TTS_MIN_SECONDS_PER_CHAR": "0",
        "QWEN_TTS_MAX_CHARS": "2000",  # a huge text is refused cheaply; one that fits still speaks
        "QWEN_TTS_VOICE_DIR": str(tmp_path_factory.mktemp("fuzz-voices")),
    }
    worker_settings = make_settings(env)
    policy = FetchPolicy(resolver=lambda host, port: ["203.0.113.7"], connector=_no_network)
    return make_handler(Worker(worker_settings, models=ModelCache(worker_settings), fetch_policy=policy))


# -- values ----------------------------------------------------------------------------------------------------------
EDGE_TEXT = [
    "",
    " ",
    "Hello there.",
    "你好，世界。",
    "\ud800",
    "a\udfffb",
    "\x00",
    "\u200b\u200d",
    "\u202etxet\u202c",
    "\ufeffhi",
    "Cafe\u0301",
    "🙂👍🏽",
    "\n\t\r",
    "Ryan",
    "alloy",
    "en",
    "zh-CN",
    "1.7B-Base",
    "0.6B-CustomVoice",
    "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
    "tts-1",
    "wav",
    "opus",
    "G711",
    "s3",
    "srt",
    "clone",
    "v_0123456789abcdef",
    "../../etc/passwd",
    "http://127.0.0.1:9/ref.wav",
    "https://example.com/me.wav",
    "http://203.0.113.9/x.wav",  # TEST-NET-3, and the fuzz worker connects nowhere
    "data:audio/wav;base64,UklGRg==",
    "AAAA",
    "%s%n{0}",
]
EDGE_NUMBERS = [0, -1, 1, 3, 2**31, 2**32, 2**63, 10**30, 0.0, -0.0, 1e-45, 5e-324, 0.01, 0.5, 2.0, 1e308]
EDGE_NUMBERS += [math.nan, math.inf, -math.inf, 8000, 48000, 8192, 8193, 10_001, -70, -5, 4.0, 0.25]

texts = st.one_of(
    st.sampled_from(EDGE_TEXT),
    st.integers(min_value=1000, max_value=40_000).map(lambda n: "word " * n),  # huge: over QWEN_TTS_MAX_CHARS
    st.text(max_size=30),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Mn", "Zs", "Lo", "So"]), max_size=12),
)
numbers = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=6
)


def _deep(depth: int) -> dict:
    node: dict = {"x": 1}
    for _ in range(depth):
        node = {"a": node}
    return node


# -- jobs ----------------------------------------------------------------------------------------------------------
def _params() -> st.SearchStrategy:
    names = ["temperature", "top_k", "top_p", "repetition_penalty", "subtalker_temperature", "subtalker_top_k"]
    names += ["subtalker_top_p", "language", "instruct", "max_new_tokens", "seed"]
    return st.one_of(st.dictionaries(st.sampled_from(names), st.one_of(numbers, scalars), max_size=5), anything)


def _cheap(job: dict, tokens: int) -> dict:
    """A job that might synthesize gets a small max_new_tokens, unless its own is refused anyway (wrong type,
    out of range) or already small: the fuzzing of that field stays."""
    params = job.get("params", {})
    if isinstance(params, dict):
        asked = params.get("max_new_tokens")
        refused = not isinstance(asked, int) or isinstance(asked, bool) or not 1 <= asked <= 8192
        if asked is None or not (refused or asked <= 4):
            job = {**job, "params": {**params, "max_new_tokens": tokens}}
    return job


FIELD_VALUES = {
    "text": texts,
    "model": texts,
    "voice": texts,
    "language": texts,
    "instruct": texts,
    "ref_audio": texts,
    "ref_text": texts,
    "x_vector_only": scalars,
    "pause_ms": numbers,
    "output_format": st.sampled_from(["wav", "mp3", "flac", "opus", "aac", "pcm", "ulaw", "alaw"]) | texts,
    "sample_rate": st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]) | numbers,
    "loudness_lufs": numbers,
    "delivery": texts,
    "stream": scalars,
    "wav_header": scalars,
    "seed": numbers | scalars,
    "params": _params(),
    "join": scalars,
    "voice_consistency": texts,
    "captions": st.sampled_from(["srt", "vtt"]) | texts,
}
segment = st.fixed_dictionaries(
    {"text": texts},
    optional={k: FIELD_VALUES[k] for k in ("voice", "language", "instruct", "model", "ref_audio", "pause_ms")},
)
plain_jobs = st.builds(
    _cheap,
    st.fixed_dictionaries(
        {},
        optional={**FIELD_VALUES, "segments": st.lists(segment, max_size=3) | anything, "action": texts},
    ),
    SMALL_TOKENS,
)
speech = {
    "model": texts,
    "input": texts,
    "voice": texts | anything,
    "instructions": texts,
    "response_format": texts,
    "speed": numbers | scalars,
    "stream_format": texts,
    "language": texts,
    "seed": numbers | scalars,
    "ref_audio": texts,
    "ref_text": texts,
    "x_vector_only_mode": scalars,
    "task_type": st.sampled_from(["CustomVoice", "VoiceDesign", "Base"]) | texts,
}


def _openai(request, tokens: int, route) -> dict:
    if isinstance(request, dict) and "max_new_tokens" not in request:
        request = {**request, "max_new_tokens": tokens}
    return {"openai_route": route, "openai_input": request}


openai_jobs = st.builds(
    _openai,
    st.fixed_dictionaries({}, optional={**speech, "max_new_tokens": numbers | scalars}) | anything,
    SMALL_TOKENS,
    st.sampled_from(["/v1/audio/speech", "/audio/speech", None]) | texts,
)
action_jobs = st.builds(
    _cheap,
    st.fixed_dictionaries(
        {"action": st.sampled_from(INFO_ACTIONS + VOICE_ACTIONS) | texts | anything},
        optional={
            "name": texts | anything,
            "voice_id": texts | anything,
            "ref_audio": texts,
            "ref_text": texts,
            "instruct": texts,
            "sample_text": texts,
            "model": texts,
            "language": texts,
            "seed": numbers,
            "params": _params(),
            "x_vector_only": scalars,
        },
    ),
    SMALL_TOKENS,
)
# Jobs that synthesize: valid values across the contract's ranges (boundaries included), then maybe one field
# made hostile, so the sampler, post-processing and encoders see what validation lets through.
SPEAKABLE = ["Hello there.", "你好，世界。", "Cafe\u0301 au lait.", "Hi 🙂, ok.", "1, 2, 3.", "Ja. Nein!", "a"]


def _unit(low: float, high: float) -> st.SearchStrategy:
    return st.sampled_from([low, high]) | st.floats(min_value=low, max_value=high)


valid_params = st.fixed_dictionaries(
    {"max_new_tokens": SMALL_TOKENS},
    optional={
        "temperature": _unit(0.01, 2),
        "top_k": st.integers(0, 2048),
        "top_p": _unit(1e-9, 1),
        "repetition_penalty": _unit(0.01, 3),
        "subtalker_temperature": _unit(0.01, 2),
        "subtalker_top_k": st.integers(0, 2048),
        "subtalker_top_p": _unit(1e-9, 1),
    },
)
valid_fields = {
    "voice": st.sampled_from(["Ryan", "vivian", "Dylan", "female_2", "alloy", "nova"]),
    "language": st.sampled_from(["Auto", "en", "zh-CN", "pt-BR", "Japanese", ""]),
    "output_format": st.sampled_from(["wav", "mp3", "flac", "opus", "aac", "pcm"]),
    "sample_rate": st.sampled_from([8000, 16000, 24000, 48000]) | st.integers(8000, 48000),
    "loudness_lufs": _unit(-70, -5),
    "pause_ms": st.integers(0, 10_000),
    "delivery": st.sampled_from(["auto", "base64", "BASE64 "]),
    "stream": st.booleans(),
    "seed": st.integers(0, 2**32 - 1),
    "captions": st.sampled_from(["srt", "vtt"]),
    "model": st.sampled_from(["0.6B-CustomVoice", "1.7B-CustomVoice", "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"]),
    "instruct": st.sampled_from(["calm", "  ", "Speak fast."]),
}


PARAM_NAMES = ["temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "subtalker_temperature"]
PARAM_NAMES += ["subtalker_top_k", "subtalker_top_p", "language", "instruct"]
MUTABLE = sorted(FIELD_VALUES) + [f"params.{name}" for name in PARAM_NAMES]
hostile = st.one_of(
    numbers,
    scalars,
    st.builds(lambda text, odd: f"{text} {odd}", st.sampled_from(SPEAKABLE), texts),  # speakable, with a hostile tail
    anything,
)


def _mutate(job: dict, mutations: list[tuple[str, object]]) -> dict:
    """The job with up to a few fields (or params fields) replaced by hostile values."""
    for target, value in mutations:
        if target.startswith("params."):
            job = {**job, "params": {**job["params"], target.removeprefix("params."): value}}
        else:
            job = {**job, target: value}
    return job


ODD_CHARACTERS = ["\ud800", "\udfff", "\x00", "\u200b", "\u202e", "\ufeff", "\u0301", "\U0010ffff", "\ufffe", "\x7f"]
TEXT_TARGETS = ["text", "voice", "language", "instruct", "model", "output_format", "params.instruct", "params.language"]
NUMBER_TARGETS = ["seed", "sample_rate", "loudness_lufs", "pause_ms"] + [f"params.{n}" for n in PARAM_NAMES[:8]]
odd_text = st.tuples(
    st.sampled_from(TEXT_TARGETS),
    st.builds(lambda text, odd: text + odd, st.sampled_from(SPEAKABLE), st.sampled_from(ODD_CHARACTERS)),
)
odd_number = st.tuples(st.sampled_from(NUMBER_TARGETS), st.sampled_from(EDGE_NUMBERS))
# Weighted towards one odd character or one edge number in an otherwise valid job: what slips past validation.
any_number = st.tuples(st.sampled_from(NUMBER_TARGETS), numbers)
any_field = st.tuples(st.sampled_from(MUTABLE), hostile)
mutation = st.one_of(odd_text, odd_text, odd_number, odd_number, any_number, any_field)
valid_jobs = st.builds(
    _mutate,
    st.fixed_dictionaries({"text": st.sampled_from(SPEAKABLE), "params": valid_params}, optional=valid_fields),
    st.lists(mutation, min_size=1, max_size=2),
).map(lambda job: _cheap(job, 3))
valid_segments = st.builds(
    lambda segs, join, params, fmt: {"segments": segs, "join": join, "params": params, "output_format": fmt},
    st.lists(
        st.fixed_dictionaries(
            {"text": st.sampled_from(SPEAKABLE)},
            optional={k: valid_fields[k] for k in ("voice", "language", "model")},
        ),
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
    valid_params,
    valid_fields["output_format"],
)
jobs = st.one_of(valid_jobs, valid_jobs, valid_jobs, valid_segments, plain_jobs, openai_jobs, action_jobs, anything)


def check(result) -> None:
    assert isinstance(result, dict), result
    answer = json.dumps(result, ensure_ascii=False, allow_nan=False)
    answer.encode("utf-8")  # valid UTF-8 text, no NaN
    if "error" in result:
        error = result["error"]
        assert error["code"] in DOCUMENTED, error
        assert isinstance(error["message"], str) and error["message"], error
    else:
        assert (
            "audio_base64" in result
            or "items" in result
            or result.get("status")
            or "voices" in result
            or ("voice_id" in result)
        ), result
    for leak in ("Traceback", 'File "', str(ROOT), "site-packages"):
        assert leak not in answer, (leak, answer[:500])


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=timedelta(seconds=30),  # a hang, not a slow machine: every job here is milliseconds to a second
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(job_input=jobs)
@example(job_input={"text": "hi \ud800", "params": {"max_new_tokens": 3}})
@example(job_input={"text": "hi", "params": {"temperature": 1e-45, "max_new_tokens": 3}})
@example(job_input={"text": "hi", "seed": True, "params": {"max_new_tokens": 3}})
@example(job_input={"text": "hi", "params": {"max_new_tokens": 1}})
@example(job_input={"text": "hi", "params": _deep(50)})
@example(job_input={"text": "x " * 100_000, "params": {"max_new_tokens": 3}})
@example(job_input={"openai_input": {"input": "hi", "max_new_tokens": 1, "response_format": "opus"}})
@example(job_input={"action": "create_voice", "name": "n", "instruct": "calm", "params": {"max_new_tokens": 3}})
@example(job_input={"text": "hi", "instruct": "word " * 20_000, "params": {"max_new_tokens": 3}})
@example(job_input=None)
def test_every_job_ends_in_a_contract_answer(handle, job_input):
    result = handle({"id": "fuzz", "input": job_input})
    check(result)
    event(result["error"]["code"] if isinstance(result, dict) and "error" in result else "success")


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        pytest.param({"text": "hi", "params": _deep(5000)}, "unknown field(s): params.a", id="params"),
        pytest.param({"segments": [_deep(5000)]}, "unknown field(s): segments.0.a", id="segment"),
        pytest.param({"text": _deep(5000)}, "text: Input should be a valid string, not an object", id="text"),
    ],
)
def test_deep_nesting_is_refused_naming_the_field(handle, job_input, message):
    # Outside hypothesis: it can't print a value nested this deep.
    result = handle({"id": "deep", "input": job_input})
    check(result)
    assert message in result["error"]["message"]
