"""The planned-length cap (QWEN_TTS_MAX_OUTPUT_SECONDS, issue 23): a job whose track would be longer (speech at
the prior speaking rates plus its pauses, over its speed) is refused `invalid_input` through the queue's handler
before any model is asked for anything, so a few hundred bytes of job can't build hours of audio in memory; and a
job whose pauses alone make an uncompressed inline result too large is `payload_too_large` just as early."""

from __future__ import annotations

import asyncio
import json

import pytest

from audio.guard import DEFAULT_RATE_S_PER_UNIT, SPEAKING_RATE_S_PER_UNIT
from audio.worker import planned_output_s
from handler import make_async_handler, make_stream_handler


class NoModels:
    """A get_model that counts what it is asked: a refused job asks for nothing."""

    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, name):
        self.asked.append(name)
        raise AssertionError(f"model {name} was asked for: the job was not refused before generation")


def run(handle, job_input):
    return asyncio.run(handle({"id": "cap", "input": job_input}))


def pauses(count: int, pause_ms: int = 10_000) -> dict:
    return {"segments": [{"text": "Hello."}] + [{"text": "."}] * count, "pause_ms": pause_ms}


HOSTILE = [
    pytest.param({}, pauses(1500), id="issue-shape-1500-pauses-of-10s"),
    pytest.param({}, pauses(49_000), id="text-limit-49000-pauses-of-10s"),
    pytest.param(
        {"QWEN_TTS_MAX_OUTPUT_SECONDS": "600"},
        {"openai_route": "/v1/audio/speech", "openai_input": {"input": "Hello there. " * 300, "speed": 0.25}},
        id="openai-speed-quarter",
    ),
]


@pytest.mark.parametrize(("env", "job_input"), HOSTILE)
def test_a_job_planning_too_long_a_track_is_refused_before_generation(make_worker, env, job_input):
    models = NoModels()
    worker = make_worker(env, get_model=models)
    result = run(make_async_handler(worker), job_input)
    error = json.loads(result["error"])
    assert error["code"] == "invalid_input"
    assert "QWEN_TTS_MAX_OUTPUT_SECONDS" in error["message"]
    assert models.asked == []


def test_a_stream_job_is_refused_the_same_way(make_worker):
    models = NoModels()
    worker = make_worker(get_model=models)

    async def items():
        job = {"id": "s", "input": {**pauses(1500), "stream": True}}
        return [item async for item in make_stream_handler(worker)(job)]

    (item,) = asyncio.run(items())
    assert json.loads(item["error"])["code"] == "invalid_input"
    assert models.asked == []


def test_the_planned_length_is_speech_at_the_prior_rate_plus_pauses_over_speed(worker):
    job = {
        "segments": [{"text": "Hello."}, {"text": "Bonjour.", "language": "fr", "pause_ms": 2500}],
        "pause_ms": 700,  # the first segment's pause is never played
    }
    plan = worker.plan_synthesis(job)
    speech_s = 6 * DEFAULT_RATE_S_PER_UNIT + 8 * SPEAKING_RATE_S_PER_UNIT["French"]
    assert planned_output_s(plan) == pytest.approx(speech_s + 2.5)
    slow = worker.plan_synthesis({"openai_route": "/v1/audio/speech", "openai_input": {"input": "Hi", "speed": 0.5}})
    assert planned_output_s(slow) == pytest.approx(2 * DEFAULT_RATE_S_PER_UNIT / 0.5)


@pytest.mark.parametrize(("cap_s", "refused"), [(10.0, True), (10.5, False)], ids=["over-the-cap", "under-the-cap"])
def test_the_cap_is_the_setting(make_worker, cap_s, refused):
    models = NoModels()
    worker = make_worker({"QWEN_TTS_MAX_OUTPUT_SECONDS": str(cap_s)}, get_model=models)
    plan = worker.plan_synthesis({"segments": [{"text": "A"}, {"text": "B"}], "pause_ms": 10_000})
    assert planned_output_s(plan) == pytest.approx(10.0 + 2 * DEFAULT_RATE_S_PER_UNIT)
    if refused:
        with pytest.raises(Exception, match="QWEN_TTS_MAX_OUTPUT_SECONDS") as info:
            worker.check_synthesis(plan)
        assert info.value.code == "invalid_input"
    else:
        worker.check_synthesis(plan)


@pytest.mark.parametrize("char", ["a", "中"], ids=["latin", "cjk"])
def test_the_default_cap_takes_any_text_within_the_character_limit(make_worker, char):
    worker = make_worker()
    text = (char * 99 + ". ") * (worker.settings.max_chars // 101)
    worker.check_synthesis(worker.plan_synthesis({"text": text, "language": "zh" if char == "中" else "en"}))
    assert worker.settings.max_output_s <= 4 * 3600


@pytest.mark.parametrize("fmt", ["wav", "pcm", "ulaw"])
def test_the_issue_job_is_payload_too_large_before_generation_without_s3(make_worker, fmt):
    # The issue's job (201 characters of text, 2000 s of pauses): under the cap, but no inline result can carry
    # its pauses, whatever the speech.
    models = NoModels()
    job_input = {**pauses(200), "output_format": fmt}
    assert len(json.dumps(job_input)) < 3100
    result = run(make_async_handler(make_worker(get_model=models)), job_input)
    error = json.loads(result["error"])
    assert error["code"] == "payload_too_large" and models.asked == []


@pytest.mark.parametrize(
    ("pause_ms", "refused"), [(9800, False), (9900, True)], ids=["pauses-fit-inline", "pauses-alone-too-large"]
)
def test_the_inline_floor_is_the_pauses_at_the_output_rate(make_worker, pause_ms, refused):
    # 2 pauses at 8 kHz ulaw: 1 byte a sample, base64 4/3 of it; the limit sits between the two.
    worker = make_worker({"QWEN_TTS_MAX_INLINE_BYTES": str(4 * 2 * 9850 * 8 // 3)}, get_model=NoModels())
    plan = worker.plan_synthesis({**pauses(2, pause_ms), "output_format": "ulaw"})
    if refused:
        with pytest.raises(Exception, match="inline limit") as info:
            worker._check_inline_floor(plan)
        assert info.value.code == "payload_too_large"
    else:
        worker._check_inline_floor(plan)
