"""Pauses by boundary kind, `metadata.timeline`, captions and text with nothing to say, end to end on the tiny
checkpoint (dead EOS: every chunk is exactly max_new_tokens - 1 frames of loud noise, so silence in the output
is exactly the pauses the joiner put there)."""

from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import re

import numpy as np
import pytest
import requests
import soundfile as sf

from audio.schema import parse_job, plan_job
from audio.serving.service import make_handler
from audio.text.splitter import split_chunks

FRAME = 1920
RATE = 24000
CHUNK = 3 * FRAME  # max_new_tokens 4
SMALL = {"QWEN_TTS_CHUNK_TARGET_CHARS": "20", "QWEN_TTS_CHUNK_MAX_CHARS": "30"}
# Sentence end, then a clause break (","), then a forced cut (whitespace inside a clause), then the end.
TEXT = "One short sentence. Then a clause goes on, and the words keep on coming to us."


def run(worker, job_input, job_id="tl-1"):
    return make_handler(worker)({"id": job_id, "input": job_input})


def decoded(result) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(base64.b64decode(result["audio_base64"])), dtype="int16")
    return audio, rate


def zero_runs(audio: np.ndarray, min_len: int = 200) -> list[tuple[int, int]]:
    """(start, length) of each run of exact zeros at least `min_len` long, rounded down to 10 samples (the
    noise itself now and then holds a zero sample or two next to a pause)."""
    zero = np.concatenate([[False], audio == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    runs = [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_len]
    return [(a, n - n % 10) for a, n in runs]


def job(**fields):
    return {"text": TEXT, "model": "0.6B-CustomVoice", "seed": 3, "params": {"max_new_tokens": 4}, **fields}


def test_the_splitter_reports_why_each_chunk_ends():
    chunks = split_chunks(TEXT, 20, 30)
    assert [(TEXT[c.start : c.end], c.boundary) for c in chunks] == [
        ("One short sentence.", "sentence"),
        ("Then a clause goes on,", "clause"),
        ("and the words keep", "forced"),
        ("on coming to us.", "sentence"),
    ]


@pytest.mark.parametrize(
    ("env", "sentence", "clause"),
    [
        pytest.param({}, 7200, 2880, id="defaults-300-120ms"),
        pytest.param({"QWEN_TTS_SENTENCE_PAUSE_MS": "500", "QWEN_TTS_CLAUSE_PAUSE_MS": "50"}, 12000, 1200, id="set"),
    ],
)
def test_pause_by_boundary_kind(make_worker, env, sentence, clause):
    result = run(make_worker({**SMALL, **env}), job())
    audio, _ = decoded(result)
    crossfade = 960
    assert len(audio) == 4 * CHUNK + sentence + clause - crossfade
    assert zero_runs(audio) == [(CHUNK, sentence), (2 * CHUNK + sentence, clause)]


def test_timeline_spans_each_chunk_and_the_pauses_lie_between(make_worker):
    result = run(make_worker(SMALL), job())
    audio, rate = decoded(result)
    timeline = result["metadata"]["timeline"]
    starts = [0, CHUNK + 7200, 2 * CHUNK + 7200 + 2880, 3 * CHUNK + 7200 + 2880 - 960]
    assert timeline == [
        {"segment": 0, "start_s": round(s / RATE, 3), "end_s": round((s + CHUNK) / RATE, 3), "chars": [c.start, c.end]}
        for s, c in zip(starts, split_chunks(TEXT, 20, 30), strict=True)
    ]
    assert timeline[-1]["end_s"] == round(len(audio) / rate, 3) == result["metadata"]["duration_seconds"]
    for before, after in itertools.pairwise(timeline):
        gap = audio[round(before["end_s"] * rate) : round(after["start_s"] * rate)]
        assert not gap.any()  # the pause (or nothing, at the crossfade) lies between entries


@pytest.mark.parametrize(
    ("fields", "speed"),
    [
        pytest.param({"sample_rate": 16000}, 1.0, id="resampled"),
        pytest.param({"loudness_lufs": -20}, 1.0, id="levelled"),
        pytest.param({}, 1.25, id="speed"),
    ],
)
def test_timeline_is_in_the_delivered_audio_time(make_worker, fields, speed):
    worker = make_worker(SMALL)
    plan = plan_job(parse_job(job(**fields)), default_model="1.7B-CustomVoice", max_chars=1000)
    result = worker.synthesize(dataclasses.replace(plan, speed=speed), "tl-x")
    audio, rate = sf.read(io.BytesIO(base64.b64decode(result["audio_base64"])), dtype="float32")
    timeline = result["metadata"]["timeline"]
    assert timeline[-1]["end_s"] == pytest.approx(len(audio) / rate, abs=0.002)
    first_pause = (timeline[0]["end_s"], timeline[1]["start_s"])
    assert first_pause[1] - first_pause[0] == pytest.approx(0.3 / speed, abs=0.002)
    margin = round(0.05 * rate)  # resampling and the tempo change smear only the pause's edges
    inside = audio[round(first_pause[0] * rate) + margin : round(first_pause[1] * rate) - margin]
    assert np.abs(inside).max() < 0.001
    assert np.abs(audio[round(timeline[1]["start_s"] * rate) :][:margin]).max() > 0.01  # speech starts there


def test_srt_and_vtt_captions_follow_the_timeline(make_worker):
    worker = make_worker(SMALL)
    srt = run(worker, job(captions="srt"))
    vtt = run(worker, job(captions="vtt"))
    timeline = srt["metadata"]["timeline"]
    stamp = [f"00:00:{t:06.3f}" for e in timeline for t in (e["start_s"], e["end_s"])]
    assert srt["captions"] == (
        f"1\n{stamp[0].replace('.', ',')} --> {stamp[1].replace('.', ',')}\nOne short sentence.\n\n"
        f"2\n{stamp[2].replace('.', ',')} --> {stamp[3].replace('.', ',')}\nThen a clause goes on,\n\n"
        f"3\n{stamp[4].replace('.', ',')} --> {stamp[5].replace('.', ',')}\nand the words keep\n\n"
        f"4\n{stamp[6].replace('.', ',')} --> {stamp[7].replace('.', ',')}\non coming to us.\n"
    )
    assert vtt["captions"].startswith(f"WEBVTT\n\n{stamp[0]} --> {stamp[1]}\nOne short sentence.\n\n")
    assert srt["audio_base64"] == vtt["audio_base64"]


def test_captions_cut_long_sentences_and_start_each_segment_anew(make_worker):
    long = (
        "This sentence is rather long, it has several clauses, each of them adds words; "
        "and so it must be shown in more than one cue."
    )
    segments = [{"text": "Hello there. " + long, "voice": "Ryan"}, {"text": "Yes.", "voice": "Vivian"}]
    body = {"segments": segments, "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 30}, "captions": "srt"}
    result = run(make_worker(), body)
    cues = [block.split("\n") for block in result["captions"].strip().split("\n\n")]
    texts = [" ".join(c[2:]) for c in cues]
    assert texts[0] == "Hello there."
    assert " ".join(texts[1:-1]) == long and len(texts) > 3
    assert texts[-1] == "Yes."
    for cue in cues:
        assert len(cue[2:]) <= 2 and all(len(line) <= 42 for line in cue[2:])
        a, b = (
            sum(float(x) * m for x, m in zip(re.split("[:,]", t), (3600, 60, 1, 0.001), strict=True))
            for t in cue[1].split(" --> ")
        )
        assert 0 < b - a <= 7.0
    second = result["metadata"]["timeline"][-1]
    assert cues[-1][1].startswith(f"00:00:{second['start_s']:06.3f}".replace(".", ","))


def test_captions_stay_inline_with_s3_delivery(make_worker, s3_server):
    result = run(make_worker({**SMALL, **s3_server.env()}), job(captions="vtt", delivery="s3"), job_id="cap-s3")
    assert "audio_base64" not in result and result["captions"].startswith("WEBVTT\n\n")
    data = requests.get(result["audio_url"], timeout=10).content
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert result["metadata"]["timeline"][-1]["end_s"] == round(len(audio) / rate, 3)


@pytest.mark.parametrize("text", ["…", "— -- ...", "😀 🎉!", "。。。", " ?! "])
def test_a_job_with_nothing_to_say_is_invalid_input(make_worker, text):
    result = run(make_worker(get_model=lambda name: pytest.fail("no model for nothing to say")), {"text": text})
    assert result == {
        "error": {
            "code": "invalid_input",
            "message": "the text has nothing to speak: it holds only punctuation, symbols, emoji or whitespace",
        }
    }


def test_a_chunk_with_nothing_to_say_becomes_a_pause(make_worker, model_cache):
    calls = []

    def get_model(name):
        real = model_cache.get(name)

        class Counting:
            sample_rate, frame_samples = real.sample_rate, real.frame_samples

            def generate(self, requests, **kwargs):
                calls.append([r.text for r in requests])
                return real.generate(requests, **kwargs)

        return Counting()

    segments = [{"text": "Hello."}, {"text": "… … …"}, {"text": "Bye."}]
    body = {"segments": segments, "model": "0.6B-CustomVoice", "pause_ms": 0, "params": {"max_new_tokens": 4}}
    result = run(make_worker(get_model=get_model), body)
    audio, _ = decoded(result)
    assert [sorted(c) for c in calls] == [["Bye.", "Hello."]]  # one batch; the ellipses never reach the model
    assert len(audio) == 2 * CHUNK + 7200
    assert zero_runs(audio) == [(CHUNK, 7200)]
    assert [e["segment"] for e in result["metadata"]["timeline"]] == [0, 1, 2]
