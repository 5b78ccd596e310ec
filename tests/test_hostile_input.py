"""Hostile values at the contract's edge (issue #23, classes 5 and 7): text the tokenizer can't take, numbers the
sampler can't take, NaN and infinity, and JSON types the contract does not document. Each goes through the real
entry point (`make_handler(worker)`), plain and OpenAI-shaped, and ends in `invalid_input` naming the field."""

from __future__ import annotations

import json

import pytest

from audio.serving.service import make_handler

SMALL = {"seed": 1, "params": {"max_new_tokens": 3}}


def run(worker, job_input: dict) -> dict:
    return make_handler(worker)({"id": "hostile", "input": job_input})


def refused(worker, job_input: dict) -> str:
    result = run(worker, job_input)
    assert set(result) == {"error"}, result
    assert result["error"]["code"] == "invalid_input"
    json.dumps(result, ensure_ascii=False).encode("utf-8")  # the answer itself is valid UTF-8 text
    return result["error"]["message"]


LONE_SURROGATE = "\ud800"  # valid JSON ("\ud800"), not valid Unicode text


@pytest.mark.parametrize(
    ("job_input", "fragment"),
    [
        pytest.param({"text": f"hi {LONE_SURROGATE}"}, "text: holds a lone UTF-16 surrogate (U+D800)", id="text"),
        pytest.param(
            {"segments": [{"text": "ok"}, {"text": LONE_SURROGATE}]}, "segments.1.text: holds a lone", id="segment"
        ),
        pytest.param({"text": "hi", "instruct": "\udfff calm"}, "instruct: holds a lone", id="instruct"),
        pytest.param({"text": "hi", "voice": LONE_SURROGATE}, "voice: holds a lone", id="voice"),
        pytest.param({"text": "hi", "language": LONE_SURROGATE}, "language: holds a lone", id="language"),
        pytest.param({"text": "hi", "params": {"instruct": LONE_SURROGATE}}, "params.instruct: holds", id="params"),
        pytest.param({"text": "hi", LONE_SURROGATE: 1}, "unknown field(s): \\ud800", id="field-name"),
        pytest.param(
            {"openai_input": {"input": f"hi {LONE_SURROGATE}", "voice": "alloy"}},
            "openai_input.input holds a lone UTF-16 surrogate",
            id="openai-input",
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "voice": LONE_SURROGATE}}, "openai_input.voice holds", id="openai-voice"
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "instructions": LONE_SURROGATE}},
            "openai_input.instructions holds",
            id="openai-instructions",
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "language": LONE_SURROGATE}},
            "openai_input.language holds",
            id="openai-lang",
        ),
        pytest.param(
            {"action": "create_voice", "name": f"a{LONE_SURROGATE}", "instruct": "calm"},
            "name: holds a lone",
            id="voice-name",
        ),
    ],
)
def test_lone_surrogates_are_invalid_input_naming_the_field(worker, job_input, fragment):
    assert fragment in refused(worker, {**SMALL, **job_input} if "text" in job_input else job_input)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        pytest.param({"temperature": 1e-45}, "params.temperature: must be at least 0.01", id="temperature-tiny"),
        pytest.param({"subtalker_temperature": 1e-30}, "params.subtalker_temperature: must be at least", id="sub-tiny"),
        pytest.param({"repetition_penalty": 5e-324}, "params.repetition_penalty: must be at least", id="penalty-tiny"),
        pytest.param({"temperature": float("nan")}, "params.temperature: must be a finite number, not NaN", id="nan"),
        pytest.param({"top_p": float("inf")}, "params.top_p: must be a finite number, not inf", id="inf"),
        pytest.param({"top_p": float("-inf")}, "params.top_p: must be a finite number, not -inf", id="minus-inf"),
    ],
)
def test_numbers_the_sampler_cannot_take_are_refused(worker, params, fragment):
    assert fragment in refused(worker, {"text": "hi", "seed": 1, "params": {"max_new_tokens": 3, **params}})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        pytest.param("loudness_lufs", float("nan"), "loudness_lufs: must be a finite number, not NaN", id="lufs-nan"),
        pytest.param("seed", float("nan"), "seed: must be a finite number, not NaN", id="int-field-nan"),
        pytest.param("sample_rate", float("inf"), "sample_rate: must be a finite number, not inf", id="int-field-inf"),
    ],
)
def test_nan_and_infinity_have_their_own_message(worker, field, value, message):
    assert refused(worker, {"text": "hi", **SMALL, field: value}) == message


@pytest.mark.parametrize("value", [0.01, 2.0], ids=["floor", "ceiling"])
def test_the_edges_of_the_temperature_range_speak(worker, value):
    params = {"max_new_tokens": 3, "temperature": value, "subtalker_temperature": value, "repetition_penalty": value}
    result = run(worker, {"text": "hi", "seed": 1, "params": params})
    assert result["metadata"]["duration_seconds"] > 0


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        pytest.param(
            {"text": "hi", "seed": True},
            "seed: Input should be a valid integer (a JSON number without a fraction), not true/false",
            id="seed-true",
        ),
        pytest.param(
            {"text": "hi", "seed": "5"},
            "seed: Input should be a valid integer (a JSON number without a fraction), not a string",
            id="seed-string",
        ),
        pytest.param(
            {"text": "hi", "sample_rate": "16000"},
            "sample_rate: Input should be a valid integer (a JSON number without a fraction), not a string",
            id="rate-string",
        ),
        pytest.param(
            {"text": "hi", "params": {"max_new_tokens": 3.5}},
            "params.max_new_tokens: Input should be a valid integer (a JSON number without a fraction), "
            "not a fractional number",
            id="tokens-fraction",
        ),
        pytest.param(
            {"text": "hi", "params": {"temperature": "0.7"}},
            "params.temperature: Input should be a valid number (a JSON number), not a string",
            id="temperature-string",
        ),
        pytest.param(
            {"text": "hi", "stream": "yes"},
            "stream: Input should be a valid boolean (true or false), not a string",
            id="stream-string",
        ),
        pytest.param(
            {"text": "hi", "x_vector_only": 1},
            "x_vector_only: Input should be a valid boolean (true or false), not int",
            id="bool-from-1",
        ),
        pytest.param(
            {"text": "hi", "params": []},
            "params: Input should be a valid dictionary (a JSON object), not a list",
            id="params-list",
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "seed": "5"}},
            "openai_input.seed must be an integer, got a string",
            id="openai-seed-string",
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "seed": True}},
            "openai_input.seed must be an integer, got true/false",
            id="openai-seed-true",
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "max_new_tokens": "3"}},
            "openai_input.max_new_tokens must be an integer, got a string",
            id="openai-tokens-string",
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "x_vector_only_mode": "true"}},
            "openai_input.x_vector_only_mode must be true or false, got a string",
            id="openai-bool-string",
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "speed": "1.5"}},
            "openai_input.speed must be a number from 0.25 to 4.0, got '1.5'",
            id="openai-speed-string",
        ),
    ],
)
def test_undocumented_types_are_refused_not_coerced(worker, job_input, message):
    assert refused(worker, job_input) == message


def test_documented_types_still_speak(worker):
    plain = run(worker, {"text": "hi", "seed": 7, "sample_rate": 16000, "params": {"max_new_tokens": 3, "top_p": 1}})
    assert plain["metadata"]["seed"] == 7 and plain["metadata"]["sample_rate"] == 16000
    shaped = run(worker, {"openai_input": {"input": "hi", "voice": "alloy", "seed": 7, "max_new_tokens": 3}})
    assert shaped["metadata"]["seed"] == 7 and shaped["metadata"]["format"] == "mp3"


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        pytest.param(
            {"text": "hi", "instruct": "word " * 20_000},
            "instruct: is 100000 characters; at most 2000 are taken",
            id="instruct",
        ),
        pytest.param(
            {"segments": [{"text": "hi", "instruct": "x" * 2001}]},
            "segments.0.instruct: is 2001 characters; at most 2000 are taken",
            id="segment-instruct",
        ),
        pytest.param(
            {"text": "hi", "params": {"instruct": "x" * 5000}},
            "params.instruct: is 5000 characters; at most 2000 are taken",
            id="params-instruct",
        ),
        pytest.param(
            {"model": "0.6B-Base", "text": "hi", "ref_audio": "AAAA", "ref_text": "x" * 2001},
            "ref_text: is 2001 characters; at most 2000 are taken",
            id="ref-text",
        ),
        pytest.param(
            {"openai_input": {"input": "hi", "instructions": "calm " * 1000}},
            "instruct: is 5000 characters; at most 2000 are taken",
            id="openai-instructions",
        ),
    ],
)
def test_prompt_text_is_bounded(worker, job_input, message):
    # instruct and ref_text are in every chunk's prompt: 100k characters asked the attention for gigabytes
    assert refused(worker, {**SMALL, **job_input} if "openai_input" not in job_input else job_input) == message


def test_prompt_text_at_its_bound_speaks(worker):
    result = run(worker, {"text": "hi", "instruct": "calm " * 400, **SMALL})
    assert result["metadata"]["duration_seconds"] > 0


LONG = "v" * 100_000
LONG_SHOWN = f"{'v' * 64!r}… (100000 characters)"


@pytest.mark.parametrize(
    ("job_input", "fragment"),
    [
        pytest.param({"text": "hi", "voice": LONG}, f"unknown voice {LONG_SHOWN}: use one of", id="voice"),
        pytest.param({"text": "hi", "model": LONG}, f"unknown model {LONG_SHOWN}: use one of", id="model"),
        pytest.param({"text": "hi", "language": LONG}, f"unknown language {LONG_SHOWN}: use one of", id="language"),
        pytest.param({"text": "hi", "output_format": LONG}, "output_format: must be one of", id="format"),
        pytest.param({"text": "hi", LONG: 1}, f"unknown field(s): {'v' * 64}… (100000 characters)", id="field-name"),
        pytest.param({"action": LONG}, f"unknown action {LONG_SHOWN}: use synthesize", id="action"),
        pytest.param(
            {"openai_input": {"input": "hi", "model": LONG}}, f"unknown model {LONG_SHOWN}: use an OpenAI", id="openai"
        ),
    ],
)
def test_a_long_unknown_string_is_not_echoed_whole(worker, job_input, fragment):
    message = refused(worker, job_input)
    assert fragment in message
    assert len(message) < 2_000, len(message)
