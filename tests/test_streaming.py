"""Streaming a job (audio/serving/streaming.py): the incremental joiner against joiner.join, stream items on the tiny
model against the same job unstreamed, item format and refusals, G.711 and the stream encoders."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from audio.errors import InputError
from audio.output import encoders, joiner
from audio.serving import streaming
from tests.conftest import CallRecorder

TWELVE = " ".join(f"Sentence number {i} is here." for i in range(12))
STREAM_ENV = {"QWEN_TTS_CHUNK_TARGET_CHARS": "20", "QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice"}
JOB = {"text": TWELVE, "seed": 7, "params": {"max_new_tokens": 20}}
MAX_LSB_DIFF = 2  # live pieces are decoded incrementally (left context): within 1e-3, in practice 1 LSB


def _chunk(rng, n, lead, trail):
    x = rng.normal(0, 0.2, n).astype(np.float32)
    x[:lead] = 0
    if trail:
        x[-trail:] = 0
    return x


@pytest.mark.parametrize("piece", [1, 7, 480, 960, 5000], ids=lambda p: f"piece{p}")
@pytest.mark.parametrize("lengths", [(24000, 12000, 30000), (500, 24000), (24000,)], ids=["three", "short", "one"])
def test_stream_joiner_releases_exactly_what_join_builds(piece, lengths):
    rng = np.random.default_rng(len(lengths) * piece)
    chunks = [_chunk(rng, n, lead=min(n // 4, 3000), trail=min(n // 5, 4000)) for n in lengths]
    kw = {"threshold_db": -50.0, "pad_ms": 60.0}
    trimmed = [joiner.trim_edges(c, 24000, **kw) for c in chunks]
    want = joiner.join([trimmed], [0], 960)
    sj = streaming.StreamJoiner(24000, 960, **kw)
    out = []
    for i, c in enumerate(chunks):
        if i == 0:  # the first chunk arrives live, in pieces
            for s in range(0, len(c), piece):
                out.append(sj.piece(c[s : s + piece]))
            out.append(sj.chunk())
        else:
            out.append(sj.chunk(c))
    out.append(sj.finish())
    got = np.concatenate(out)
    assert len(got) == len(want)
    assert np.array_equal(got, want)


@pytest.fixture
def stream_worker(make_worker):
    return make_worker(STREAM_ENV)


def _plan(worker, **extra):
    return worker.plan_synthesis({**JOB, "stream": True, **extra}, stream_default_format="pcm")


def _pcm(items):
    return np.concatenate([np.frombuffer(base64.b64decode(i["audio_base64"]), "<i2") for i in items])


def test_twelve_chunk_stream_joins_to_the_unstreamed_job(stream_worker, make_worker, model_cache):
    whole = stream_worker.handle({**JOB, "output_format": "pcm"}, "whole")
    recorder = CallRecorder(model_cache.get)
    stream_worker = make_worker(STREAM_ENV, get_model=recorder)
    started = time.perf_counter()
    first_s = None
    items = []
    for item in streaming.queue_items(stream_worker, _plan(stream_worker), "s"):
        if first_s is None:
            first_s = time.perf_counter() - started
            # The first audio is out while the first chunk is still being made, before any other chunk.
            assert (recorder.pieces, recorder.generated) == (1, 0)
        items.append(item)
    total_s = time.perf_counter() - started
    print(f"queue stream, 12 chunks: first audio {first_s:.3f}s of {total_s:.3f}s ({first_s / total_s:.0%})")
    assert whole["metadata"]["num_chunks"] == 12
    want = np.frombuffer(base64.b64decode(whole["audio_base64"]), "<i2")
    got = _pcm(items)
    assert len(got) == len(want)
    assert np.max(np.abs(got.astype(np.int32) - want)) <= MAX_LSB_DIFF
    assert [i["index"] for i in items] == list(range(len(items)))
    assert [i["chunk"] for i in items] == sorted(i["chunk"] for i in items)
    assert set(i["chunk"] for i in items) == set(range(12))
    assert all(i["duration_seconds"] <= streaming.PIECE_S for i in items)
    assert all(len(json.dumps(i)) < 1_000_000 for i in items)
    assert [i["start_seconds"] for i in items] == sorted(i["start_seconds"] for i in items)
    assert all(set(i) >= {"format", "sample_rate", "text_span", "segment"} for i in items)
    assert items[0]["text_span"] == [0, len("Sentence number 0 is here.")]
    meta = items[-1]["metadata"]
    assert "metadata" not in items[-2]
    assert (meta["num_chunks"], meta["seed"], meta["stream_items"], meta["format"]) == (12, 7, len(items), "pcm")
    assert meta["size_bytes"] == len(want) * 2
    assert meta["duration_seconds"] == whole["metadata"]["duration_seconds"]
    assert recorder.generated >= 1  # the other chunks came in batches after it


def test_first_chunk_arrives_in_live_pieces_before_the_rest(stream_worker):
    items = list(streaming.queue_items(stream_worker, _plan(stream_worker, params={"max_new_tokens": 40}), "s"))
    first = [i for i in items if i["chunk"] == 0]
    assert len(first) >= 3  # 39 frames in pieces of 12
    assert all(i["elapsed_seconds"] <= items[-1]["elapsed_seconds"] for i in first)


def test_reference_engine_streams_chunk_by_chunk(make_worker):
    worker = make_worker({**STREAM_ENV, "QWEN_TTS_ENGINE": "reference"})
    from audio.model_loader import ModelCache

    worker.models = ModelCache(worker.settings)
    worker.generator.get_model = worker.models.get
    items = list(streaming.queue_items(worker, _plan(worker, text=TWELVE[:60]), "s"))
    assert worker.generator.get_model("0.6B-CustomVoice").capabilities.streams is False
    n = items[-1]["metadata"]["num_chunks"]
    assert n == 3 and {i["chunk"] for i in items} == set(range(n))


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "aac", "ulaw", "alaw"])
def test_stream_items_in_other_formats_decode(stream_worker, fmt):
    items = list(streaming.queue_items(stream_worker, _plan(stream_worker, output_format=fmt, text=TWELVE[:60]), "s"))
    datas = [base64.b64decode(i["audio_base64"]) for i in items]
    meta = items[-1]["metadata"]
    rate = 8000 if fmt in ("ulaw", "alaw") else 24000
    assert meta["sample_rate"] == rate and items[0]["sample_rate"] == rate
    if fmt == "wav":  # each item a WAV of its own
        frames = sum(sf.info(io.BytesIO(d)).frames for d in datas if d)
        assert frames / 24000 == pytest.approx(meta["duration_seconds"], abs=1e-3)
        return
    data = b"".join(datas)
    if fmt in ("ulaw", "alaw"):
        assert len(data) / 8000 == pytest.approx(meta["duration_seconds"], abs=1e-3)
        return
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "-ar", "24000", "pipe:1"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    assert len(decoded) / 4 / 24000 == pytest.approx(meta["duration_seconds"], abs=0.1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param({"loudness_lufs": -16}, "loudness_lufs needs the whole track", id="loudness"),
        pytest.param({"output_format": "flac"}, "flac can't be cut", id="flac"),
        pytest.param({"delivery": "s3"}, "delivery s3 can't be streamed", id="s3"),
        pytest.param({"output_format": "ulaw", "sample_rate": 16000}, "8000 Hz", id="ulaw-rate"),
    ],
)
def test_what_cannot_be_streamed_is_refused_before_generating(stream_worker, extra, message):
    with pytest.raises(InputError, match=message):
        list(streaming.queue_items(stream_worker, _plan(stream_worker, **extra), "s"))


def test_closing_the_items_cancels_generation(stream_worker):
    calls = []
    items = streaming.queue_items(stream_worker, _plan(stream_worker), "s")
    next(items)
    items.close()
    real = stream_worker.generator.get_model

    def counting(name):
        calls.append(name)
        return real(name)

    stream_worker.generator.get_model = counting
    time.sleep(0.5)
    assert calls == []  # no further batch fetched its model


def test_stream_handler_yields_items_and_a_single_result_for_other_jobs(stream_worker):
    from handler import make_stream_handler

    handle = make_stream_handler(stream_worker)

    async def collect(job):
        return [item async for item in handle(job)]

    streamed = asyncio.run(collect({"id": "a", "input": {**JOB, "stream": True, "text": TWELVE[:60]}}))
    assert streamed[-1]["metadata"]["num_chunks"] == 3
    single = asyncio.run(collect({"id": "b", "input": {**JOB, "text": "Hi."}}))
    assert len(single) == 1 and single[0]["metadata"]["format"] == "wav"
    failed = asyncio.run(collect({"id": "c", "input": {**JOB, "stream": True, "loudness_lufs": -16}}))
    assert len(failed) == 1 and json.loads(failed[0]["error"])["code"] == "invalid_input"


# -- G.711 -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ulaw", "alaw"])
def test_g711_is_bit_exact_with_cpythons_audioop(fmt):
    import warnings

    with warnings.catch_warnings():  # CPython's own G.711 is the reference (deprecated, present in 3.11/3.12)
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop as ref
    x = np.concatenate([np.linspace(-1.2, 1.2, 70001), np.random.default_rng(0).normal(0, 0.3, 20000)])
    pcm = encoders.to_int16(x).astype("<i2").tobytes()
    lin2, back = (ref.lin2ulaw, ref.ulaw2lin) if fmt == "ulaw" else (ref.lin2alaw, ref.alaw2lin)
    assert encoders.g711(x, fmt) == lin2(pcm, 2)
    every = bytes(range(256))
    assert encoders.g711_decode(every, fmt).astype("<i2").tobytes() == back(every, 2)


@pytest.mark.parametrize(("fmt", "subtype"), [("ulaw", "ULAW"), ("alaw", "ALAW")])
def test_g711_wav_header_is_read_by_libsndfile(fmt, subtype):
    x = 0.5 * np.sin(2 * np.pi * 300 * np.arange(8000) / 8000)
    data = encoders.encode(x, 8000, fmt, wav_header=True)
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.frames, info.subtype, info.channels) == (8000, 8000, subtype, 1)
    assert encoders.encode(x, 8000, fmt) == data[-8000:]
    with pytest.raises(InputError, match="8000 Hz"):
        encoders.encode(x, 16000, fmt)


def test_streamed_wav_header_has_unknown_sizes_and_decodes_to_the_end():
    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 24000)).astype(np.float32)
    enc = encoders.StreamEncoder("wav", 24000)
    data = b"".join(enc.push(x[i : i + 1000]) for i in range(0, len(x), 1000)) + enc.finish()
    assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "pipe:1"], input=data, capture_output=True, check=True
    ).stdout
    assert decoded == encoders.to_int16(x).astype("<i2").tobytes()


def test_g711_jobs_through_the_worker(worker):
    result = worker.handle({"text": "Hi.", "output_format": "ulaw", "params": {"max_new_tokens": 5}}, "j")
    data = base64.b64decode(result["audio_base64"])
    assert result["metadata"]["sample_rate"] == 8000
    assert len(data) == round(4 * 1920 / 3)  # 4 frames of 1920 samples at 24 kHz, at 8 kHz one byte each
    wav = worker.handle(
        {"text": "Hi.", "output_format": "alaw", "wav_header": True, "params": {"max_new_tokens": 5}}, "j"
    )
    assert sf.info(io.BytesIO(base64.b64decode(wav["audio_base64"]))).subtype == "ALAW"
    with pytest.raises(InputError, match="wav_header is for ulaw and alaw"):
        worker.handle({"text": "Hi.", "wav_header": True}, "j")


# -- the merged job flow: pauses by boundary, no-speech chunks, model by model, timeline ------------------------

GAP_CASES = {
    "pauses": [7200, 2880, joiner.CROSSFADE],
    "crossfades": [joiner.CROSSFADE] * 3,
    "silence": [0, 100, 5000],
}


@pytest.mark.parametrize("piece", [7, 960, 5000], ids=lambda p: f"piece{p}")
@pytest.mark.parametrize("gaps", list(GAP_CASES.values()), ids=list(GAP_CASES))
def test_stream_joiner_releases_joins_gaps_exactly(piece, gaps):
    rng = np.random.default_rng(piece)
    lengths = (24000, 500, 12000, 30000)
    chunks = [_chunk(rng, n, lead=min(n // 4, 3000), trail=min(n // 5, 4000)) for n in lengths]
    kw = {"threshold_db": -50.0, "pad_ms": 60.0}
    want = joiner.join([[joiner.trim_edges(c, 24000, **kw) for c in chunks]], [0], 960, [gaps])
    sj = streaming.StreamJoiner(24000, 960, **kw)
    out = [sj.piece(chunks[0][s : s + piece]) for s in range(0, len(chunks[0]), piece)]
    out.append(sj.chunk(gap_after=gaps[0]))
    for c, gap in zip(chunks[1:], [*gaps[1:], 0], strict=True):  # the last chunk's pause is not the segment's
        out.append(sj.chunk(c, gap_after=gap))
    out.append(sj.finish())
    assert np.array_equal(np.concatenate(out), want)


# Segment 0: a sentence end, a clause break and a forced cut; segment 1 has nothing to say (a pause); segment 2 is
# on another model, which runs after all of the first model's work, so its audio is done after segment 3's.
PODCAST = {
    "segments": [
        {"text": "One short sentence. Then a clause goes on, and the words keep on coming to us."},
        {"text": "… …"},
        {"text": "A second voice speaks now.", "model": "1.7B-CustomVoice"},
        {"text": "Back to the first voice. It ends here."},
    ],
    "model": "0.6B-CustomVoice",
    "seed": 5,
    "pause_ms": 150,
    "captions": "srt",
    "params": {"max_new_tokens": 12},
}
SMALL_CHUNKS = {"QWEN_TTS_CHUNK_TARGET_CHARS": "20", "QWEN_TTS_CHUNK_MAX_CHARS": "30"}


@pytest.mark.parametrize("sample_rate", [None, 16000], ids=["model-rate", "resampled"])
def test_a_podcast_streams_in_text_order_and_joins_to_the_unstreamed_job(make_worker, sample_rate):
    worker = make_worker(SMALL_CHUNKS)
    job = {**PODCAST, "output_format": "pcm", **({"sample_rate": sample_rate} if sample_rate else {})}
    whole = worker.handle(job, "whole")
    items = list(streaming.queue_items(worker, worker.plan_synthesis({**job, "stream": True}), "s"))
    want = np.frombuffer(base64.b64decode(whole["audio_base64"]), "<i2")
    got = _pcm(items)
    assert len(got) == len(want)
    # soxr's stream and its one-shot resampling agree to within a few LSB where the model rate is resampled
    assert np.max(np.abs(got.astype(np.int32) - want)) <= (MAX_LSB_DIFF if sample_rate is None else 8)
    order = [(i["segment"], i["chunk"]) for i in items]
    assert order == sorted(order) and {c for _, c in order} == set(range(whole["metadata"]["num_chunks"]))
    meta, whole_meta = items[-1]["metadata"], whole["metadata"]
    assert meta["timeline"] == whole_meta["timeline"]
    assert items[-1]["captions"] == whole["captions"]
    assert (meta["model"], meta["duration_seconds"]) == (whole_meta["model"], whole_meta["duration_seconds"])


def test_a_designed_voice_kept_by_cloning_streams_its_clones_after_the_first_chunk(make_worker):
    worker = make_worker(SMALL_CHUNKS)
    job = {
        "model": "1.7B-VoiceDesign",
        "instruct": "A calm, low voice.",
        "text": "The first sentence is here. The second sentence follows. And a third one ends it.",
        "voice_consistency": "clone",
        "output_format": "pcm",
        "seed": 11,
        "params": {"max_new_tokens": 16},
    }
    whole = worker.handle(job, "whole")
    items = list(streaming.queue_items(worker, worker.plan_synthesis({**job, "stream": True}), "s"))
    assert [i["chunk"] for i in items] == sorted(i["chunk"] for i in items)
    meta = items[-1]["metadata"]
    assert meta["model"] == whole["metadata"]["model"] == "1.7B-VoiceDesign, 1.7B-Base"
    assert meta["timeline"] == whole["metadata"]["timeline"]
    assert len(_pcm(items)) == len(np.frombuffer(base64.b64decode(whole["audio_base64"]), "<i2"))


def test_join_false_is_refused_for_a_stream(stream_worker):
    plan = stream_worker.plan_synthesis(
        {"segments": [{"text": "One."}, {"text": "Two."}], "join": False, "stream": True}, stream_default_format="pcm"
    )
    with pytest.raises(InputError, match="join: false returns one audio item per segment"):
        streaming.AudioStream(stream_worker, plan)
