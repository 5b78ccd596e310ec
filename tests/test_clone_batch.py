"""`join: false`: one audio item per segment (a clone batch), through `make_handler(worker)` on the tiny models.

The tiny checkpoints make exactly (max_new_tokens - 1) codec frames of noise per chunk, 1920 samples each at
24 kHz, so every item's length is known in advance. Model calls are counted by a wrapper that delegates to the
real model (it replaces nothing).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import soundfile as sf

from audio.errors import InputError
from audio.output import postprocess
from audio.schema import parse_job, plan_job
from audio.serving.service import make_handler
from tests.conftest import SPEECH_TEXT

FRAME = 1920
RATE = 24000
SENTENCE_GAP = RATE * 300 // 1000  # the default silence between chunks of a segment that end sentences
# Chunks of about 20 (at most 40) characters, so a segment of two sentences is two chunks.
SMALL_CHUNKS = {"QWEN_TTS_CHUNK_TARGET_CHARS": "20", "QWEN_TTS_CHUNK_MAX_CHARS": "40"}
SEGMENTS = [
    {"text": "One short line."},
    {"text": "The second line is longer. It has two sentences."},
    {"text": "Third."},
]
CHUNKS_PER_SEGMENT = [1, 2, 1]
CHARS = [[(0, 15)], [(0, 26), (27, 48)], [(0, 6)]]  # each chunk's character range in its segment


class Recording:
    """The real model, with each generate and clone_prompt call noted in `calls`."""

    def __init__(self, model, calls: list):
        self._model = model
        self._calls = calls

    def __getattr__(self, name):
        return getattr(self._model, name)

    def clone_prompt(self, voice):
        self._calls.append(("clone_prompt", self._model.variant.name, None))
        return self._model.clone_prompt(voice)

    def generate(self, requests, **kwargs):
        self._calls.append(("generate", self._model.variant.name, [r.text for r in requests]))
        return self._model.generate(requests, **kwargs)


@pytest.fixture
def recorded(make_worker, model_cache):
    def make(env=None):
        calls: list = []
        worker = make_worker({**SMALL_CHUNKS, **(env or {})}, get_model=lambda n: Recording(model_cache.get(n), calls))
        return worker, calls

    return make


def run(worker, job_input, job_id="batch-1"):
    return make_handler(worker)({"id": job_id, "input": job_input})


def clone_batch(speech_wav: bytes, frames: int = 4, **fields) -> dict:
    return {
        "model": "0.6B-Base",
        "ref_audio": base64.b64encode(speech_wav).decode(),
        "ref_text": SPEECH_TEXT,
        "join": False,
        "seed": 3,
        "params": {"max_new_tokens": frames + 1},
        "segments": SEGMENTS,
        **fields,
    }


def item_length(chunks: int, frames: int) -> int:
    return chunks * frames * FRAME + (chunks - 1) * SENTENCE_GAP


def decode_item(item: dict) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(base64.b64decode(item["audio_base64"], validate=True)), dtype="float64")
    return samples, rate


def test_one_item_per_segment_each_its_own_length(recorded, speech_wav):
    worker, calls = recorded()
    result = run(worker, clone_batch(speech_wav))
    assert "error" not in result and "audio_base64" not in result
    items = result["items"]
    assert len(items) == 3
    for i, (item, chunks, seg) in enumerate(zip(items, CHUNKS_PER_SEGMENT, SEGMENTS, strict=True)):
        samples, rate = decode_item(item)
        assert rate == RATE
        assert len(samples) == item_length(chunks, 4)
        assert item["metadata"] == {
            "segment": i,
            "text_chars": len(seg["text"]),
            "num_chunks": chunks,
            "duration_seconds": round(item_length(chunks, 4) / RATE, 3),
            "size_bytes": 44 + 2 * item_length(chunks, 4),
            "timeline": [  # in the item's own time
                {
                    "segment": i,
                    "start_s": round(j * (4 * FRAME + SENTENCE_GAP) / RATE, 3),
                    "end_s": round((j * (4 * FRAME + SENTENCE_GAP) + 4 * FRAME) / RATE, 3),
                    "chars": list(span),
                }
                for j, span in enumerate(CHARS[i])
            ],
        }
    meta = result["metadata"]
    assert meta["num_items"] == 3 and meta["num_segments"] == 3 and meta["num_chunks"] == 4
    assert meta["model"] == "0.6B-Base" and meta["seed"] == 3 and meta["retries"] == 0
    assert meta["voice_cache"] == "miss" and "timeline" not in meta
    assert meta["size_bytes"] == sum(item["metadata"]["size_bytes"] for item in items)
    assert meta["duration_seconds"] == pytest.approx(sum(item_length(c, 4) for c in CHUNKS_PER_SEGMENT) / RATE)
    # the clone prompt is built once, and all four chunks share one batched generate call
    assert [c[:2] for c in calls] == [("clone_prompt", "0.6B-Base"), ("generate", "0.6B-Base")]
    assert sorted(calls[1][2]) == sorted(
        ["One short line.", "The second line is longer.", "It has two sentences.", "Third."]
    )


def test_items_are_the_segments_of_the_joined_track(recorded, speech_wav):
    worker, _ = recorded()
    items = run(worker, clone_batch(speech_wav))["items"]
    joined_job = {k: v for k, v in clone_batch(speech_wav).items() if k != "join"}
    joined, _ = decode_item(run(worker, joined_job))
    pause = RATE * 300 // 1000
    pos = 0
    for i, item in enumerate(items):
        samples, _ = decode_item(item)
        pos += pause if i else 0
        np.testing.assert_array_equal(joined[pos : pos + len(samples)], samples)
        pos += len(samples)
    assert pos == len(joined)


def test_each_item_is_resampled_and_levelled_on_its_own(recorded, speech_wav):
    worker, _ = recorded()
    job = clone_batch(speech_wav, frames=13, loudness_lufs=-20, sample_rate=48000)
    job["segments"] = [{"text": "One short line."}, {"text": "Third."}]  # one chunk each, 1.04 s
    items = run(worker, job)["items"]
    assert len(items) == 2
    for item in items:
        samples, rate = decode_item(item)
        assert rate == 48000 and len(samples) == 13 * FRAME * 2
        assert postprocess.measure_loudness(samples, rate) == pytest.approx(-20, abs=1.0)
        assert postprocess.true_peak_dbtp(samples, rate) <= -1.0


@pytest.mark.parametrize(("fmt", "ext"), [pytest.param("wav", "wav", id="wav"), pytest.param("mp3", "mp3", id="mp3")])
def test_s3_delivers_one_object_per_item(recorded, s3_server, speech_wav, fmt, ext):
    worker, _ = recorded(s3_server.env())
    job_id = f"s3-batch-{fmt}"
    result = run(worker, clone_batch(speech_wav, output_format=fmt), job_id=job_id)
    assert "error" not in result
    inline, _ = recorded()
    inline_items = run(inline, clone_batch(speech_wav, output_format=fmt, delivery="base64"))["items"]
    assert len(result["items"]) == 3
    for i, (item, inline_item) in enumerate(zip(result["items"], inline_items, strict=True)):
        assert "audio_base64" not in item
        key = f"tts-output/{job_id}/{i}.{ext}"
        assert f"/{s3_server.bucket}/{key}?" in item["audio_url"]
        body = requests.get(item["audio_url"], timeout=30).content
        assert body == s3_server.path_of(key).read_bytes() == base64.b64decode(inline_item["audio_base64"])
        assert item["metadata"] == inline_item["metadata"]
        assert item["metadata"]["size_bytes"] == len(body)


# The wav items: 15404, 45164 and 15404 bytes; 20540, 60220 and 20540 as base64, 101300 together.
@pytest.mark.parametrize(
    ("limit", "fits"),
    [pytest.param(101300, True, id="all-items-at-the-limit"), pytest.param(101299, False, id="one-byte-over")],
)
def test_the_inline_limit_is_on_all_items_together(recorded, speech_wav, limit, fits):
    worker, _ = recorded({"QWEN_TTS_MAX_INLINE_BYTES": str(limit)})
    result = run(worker, clone_batch(speech_wav))
    if fits:
        assert [len(item["audio_base64"]) for item in result["items"]] == [20540, 60220, 20540]
        return
    assert result["error"]["code"] == "payload_too_large"
    assert result["error"]["message"].startswith(
        f"The 3 audio items are together 101300 bytes as base64, over this worker's inline limit of {limit} bytes."
    )


def test_captions_come_with_each_item(recorded, speech_wav):
    worker, _ = recorded()
    result = run(worker, clone_batch(speech_wav, captions="vtt"))
    assert "captions" not in result
    assert [item["captions"] for item in result["items"]] == [
        "WEBVTT\n\n00:00:00.000 --> 00:00:00.320\nOne short line.\n",
        "WEBVTT\n\n00:00:00.000 --> 00:00:00.320\nThe second line is longer.\n\n"
        "00:00:00.620 --> 00:00:00.940\nIt has two sentences.\n",
        "WEBVTT\n\n00:00:00.000 --> 00:00:00.320\nThird.\n",
    ]


def test_join_true_is_the_joined_track(recorded, speech_wav):
    worker, _ = recorded()
    result = run(worker, clone_batch(speech_wav, join=True))
    assert "items" not in result and "num_items" not in result["metadata"]
    samples, _ = decode_item(result)
    assert len(samples) == sum(item_length(c, 4) for c in CHUNKS_PER_SEGMENT) + 2 * RATE * 300 // 1000


@pytest.mark.parametrize(
    ("job", "message"),
    [
        pytest.param(
            {"text": "Hello.", "join": False},
            "join: false returns one audio item per segment: give segments, not text",
            id="text",
        ),
        pytest.param(
            {"segments": [{"text": "A."}, {"text": "B."}], "join": False, "pause_ms": 500},
            "pause_ms: pause_ms is the silence between joined segments and has no meaning with join: false "
            "(each segment is its own audio item); leave it out",
            id="job-pause",
        ),
        pytest.param(
            {"segments": [{"text": "A."}, {"text": "B.", "pause_ms": 0}], "join": False},
            "segments[1].pause_ms: pause_ms is the silence between joined segments and has no meaning with "
            "join: false (each segment is its own audio item); leave it out",
            id="segment-pause",
        ),
        pytest.param(
            {"segments": [{"text": "A."}], "join": "maybe"}, "join: Input should be a valid boolean", id="not-a-bool"
        ),
    ],
)
def test_join_false_refusals(job, message):
    with pytest.raises(InputError) as caught:
        plan_job(parse_job(job), default_model="0.6B-CustomVoice", max_chars=1000)
    assert caught.value.message.startswith(message)


def test_pause_ms_with_joined_segments_is_fine():
    plan = plan_job(
        parse_job({"segments": [{"text": "A."}, {"text": "B."}], "pause_ms": 500, "join": True}),
        default_model="0.6B-CustomVoice",
        max_chars=1000,
    )
    assert plan.join and [s.pause_ms for s in plan.segments] == [500, 500]
