"""Audio output end to end through `make_handler(worker)`: every output format and sample rate decoded by an
independent decoder, resampling, loudness normalisation, and delivery (base64, a real S3 server, the failures).

The tiny checkpoints make exactly (max_new_tokens - 1) codec frames of noise per chunk, 1920 samples each at
24 kHz, so every length below is known in advance.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import soundfile as sf

from audio.output import postprocess
from audio.serving.service import make_handler
from tests.s3server import free_port

FRAME = 1920  # samples per 12.5 Hz codec frame at 24 kHz
MODEL_RATE = 24000
FRAME_S = FRAME / MODEL_RATE  # 80 ms: the duration tolerance for codecs that pad to their own frames
MODEL = "0.6B-CustomVoice"
ROOT = Path(__file__).resolve().parents[1]

# ADTS sampling_frequency_index -> Hz (ISO/IEC 14496-3, table 1.18)
ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def run(worker, job_input: dict, job_id: str = "job-1") -> dict:
    return make_handler(worker)({"id": job_id, "input": job_input})


def speech_job(frames: int, **fields) -> dict:
    """A one-chunk job whose audio is exactly `frames` codec frames long at the model rate."""
    return {
        "text": "Hello there, world.",
        "model": MODEL,
        "seed": 5,
        "params": {"max_new_tokens": frames + 1},
        **fields,
    }


def audio_bytes(result: dict) -> bytes:
    assert "error" not in result, result
    assert "audio_url" not in result
    return base64.b64decode(result["audio_base64"], validate=True)


def sf_decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float64")
    assert samples.ndim == 1  # mono
    return samples, rate


def ffmpeg_decode(data: bytes) -> np.ndarray:
    """An ADTS AAC stream to float samples at its own rate, by the ffmpeg CLI (not our encoder's code path)."""
    proc = subprocess.run(
        [
            *("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "aac", "-i", "pipe:0"),
            *("-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "pipe:1"),
        ],
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return np.frombuffer(proc.stdout, dtype="<i2").astype(np.float64) / 32768.0


def decode(fmt: str, data: bytes, rate: int) -> tuple[np.ndarray, int]:
    """(samples, sample rate the file itself declares), after checking the format's magic bytes."""
    if fmt == "wav":
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
        info = sf.info(io.BytesIO(data))
        assert (info.format, info.subtype, info.channels) == ("WAV", "PCM_16", 1)
        return sf_decode(data)
    if fmt == "flac":
        assert data[:4] == b"fLaC"
        return sf_decode(data)
    if fmt == "mp3":
        assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)  # MPEG frame sync
        return sf_decode(data)
    if fmt == "opus":
        assert data[:4] == b"OggS" and data[28:36] == b"OpusHead"
        head = data[36:]
        channels, input_rate = head[1], int.from_bytes(head[4:8], "little")
        assert channels == 1
        samples, decoded_rate = sf_decode(data)
        assert decoded_rate == input_rate
        return samples, input_rate
    if fmt == "aac":
        assert data[0] == 0xFF and data[1] & 0xF6 == 0xF0  # ADTS sync 0xFFF, layer 00
        assert (data[2] >> 6) + 1 == 2  # AAC-LC
        assert ((data[2] & 1) << 2 | data[3] >> 6) == 1  # channel configuration: mono
        return ffmpeg_decode(data), ADTS_RATES[(data[2] >> 2) & 0xF]
    assert fmt == "pcm"
    assert len(data) % 2 == 0
    return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0, rate


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x)))


# -- 1. every format at the model rate and at requested rates --------------------------------------------------

FORMAT_FRAMES = 5  # 0.4 s
FORMAT_CASES = [
    pytest.param(fmt, rate, id=f"{fmt}-{rate or 'model'}-rate")
    for fmt in ("wav", "flac", "pcm", "mp3", "opus", "aac")
    for rate in (None, 16000, 48000)
] + [
    pytest.param("mp3", 22050, id="mp3-22050"),
    pytest.param("aac", 44100, id="aac-44100"),
    pytest.param("wav", 8000, id="wav-8000"),
]


@pytest.mark.parametrize(("fmt", "rate"), FORMAT_CASES)
def test_every_format_decodes_at_the_asked_rate_and_length(worker, fmt, rate):
    job = speech_job(FORMAT_FRAMES, output_format=fmt)
    if rate is not None:
        job["sample_rate"] = rate
    result = run(worker, job)
    data = audio_bytes(result)
    want_rate = rate or MODEL_RATE
    want_samples = round(FORMAT_FRAMES * FRAME * want_rate / MODEL_RATE)
    want_s = FORMAT_FRAMES * FRAME / MODEL_RATE

    samples, declared_rate = decode(fmt, data, want_rate)
    assert declared_rate == want_rate
    meta = result["metadata"]
    assert (meta["sample_rate"], meta["format"], meta["size_bytes"]) == (want_rate, fmt, len(data))
    assert meta["duration_seconds"] == pytest.approx(want_s, abs=0.001)
    decoded_s = len(samples) / declared_rate
    if fmt == "aac":
        # ADTS has no field for the encoder's priming (1024 samples) or the last frame's padding, so a decoder
        # returns both: up to two 1024-sample AAC frames more (128 ms at 16 kHz), never less.
        slack = 2 * 1024 / want_rate
        assert want_s <= decoded_s <= want_s + slack
        assert meta["duration_seconds"] <= decoded_s <= meta["duration_seconds"] + slack
    else:
        assert decoded_s == pytest.approx(meta["duration_seconds"], abs=FRAME_S)
        assert decoded_s == pytest.approx(want_s, abs=FRAME_S)
    if fmt in ("wav", "flac", "pcm"):
        assert len(samples) == want_samples
    if fmt == "pcm":
        assert meta["size_bytes"] == 2 * want_samples
    # Not silence, not clipped garbage: the tiny model's noise sits around -20 dBFS RMS.
    assert -40 < rms_db(samples) < -6
    assert np.max(np.abs(samples)) < 1.0


@pytest.mark.parametrize("rate", [None, 16000], ids=["model-rate", "16000"])
def test_lossless_formats_carry_the_same_samples(worker, rate):
    extra = {} if rate is None else {"sample_rate": rate}
    decoded = {}
    for fmt in ("wav", "flac", "pcm"):
        result = run(worker, speech_job(3, output_format=fmt, **extra))
        decoded[fmt] = decode(fmt, audio_bytes(result), rate or MODEL_RATE)[0]
    np.testing.assert_array_equal(decoded["flac"], decoded["wav"])
    np.testing.assert_array_equal(decoded["pcm"], decoded["wav"])


def test_lossy_formats_keep_the_level_of_the_wav(worker):
    reference = rms_db(decode("wav", audio_bytes(run(worker, speech_job(FORMAT_FRAMES))), MODEL_RATE)[0])
    for fmt in ("mp3", "opus", "aac"):
        samples, _ = decode(fmt, audio_bytes(run(worker, speech_job(FORMAT_FRAMES, output_format=fmt))), MODEL_RATE)
        assert rms_db(samples) == pytest.approx(reference, abs=3), fmt


def test_opus_at_a_rate_opus_lacks_is_carried_at_the_next_opus_rate(worker):
    result = run(worker, speech_job(FORMAT_FRAMES, output_format="opus", sample_rate=22050))
    samples, declared_rate = decode("opus", audio_bytes(result), 22050)
    assert declared_rate == 24000  # 22050 resampled up (encoders._encode_opus)
    assert len(samples) / declared_rate == pytest.approx(FORMAT_FRAMES * FRAME / MODEL_RATE, abs=FRAME_S)


@pytest.mark.parametrize("rate", [pytest.param(24000, id="24000"), pytest.param(48000, id="48000")])
def test_opus_stream_ends_cleanly(worker, rate):
    """No burst at the end: libsndfile leaves the encoder's look-ahead undrained when audio ends on a 20 ms
    frame boundary (the model's always does), so the encoder pads 10-30 ms of silence to end mid-frame."""
    wav, _ = sf_decode(audio_bytes(run(worker, speech_job(5, sample_rate=rate))))
    opus, _ = decode("opus", audio_bytes(run(worker, speech_job(5, sample_rate=rate, output_format="opus"))), rate)
    assert rate // 100 <= len(opus) - len(wav) <= 3 * rate // 100
    tail = rate // 100
    assert np.max(np.abs(opus[len(wav) - tail : len(wav)])) <= 1.25 * np.max(np.abs(wav))
    assert np.max(np.abs(opus[-tail:])) <= 0.25 * np.max(np.abs(wav))


def no_model(name: str):
    raise AssertionError(f"model {name} was asked for: the job should have been refused first")


@pytest.mark.parametrize("fmt", ["mp3", "aac"])
def test_a_rate_the_codec_lacks_is_invalid_input_naming_the_rates(make_worker, fmt):
    result = run(make_worker(get_model=no_model), speech_job(2, output_format=fmt, sample_rate=22000))
    assert result["error"]["code"] == "invalid_input"
    message = result["error"]["message"]
    assert f"{fmt} supports sample rates" in message
    assert "22050" in message and "not 22000" in message


# -- 2. resampling through the worker ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "rate"),
    [pytest.param(8, 16000, id="8-frames-16k"), pytest.param(7, 22050, id="7-frames-22050"),
     pytest.param(7, 44100, id="7-frames-44100"), pytest.param(8, 8000, id="8-frames-8k")],
)  # fmt: skip
def test_wav_resampled_to_the_asked_rate(worker, frames, rate):
    result = run(worker, speech_job(frames, sample_rate=rate))
    data = audio_bytes(result)
    assert int.from_bytes(data[24:28], "little") == rate  # the fmt chunk's nSamplesPerSec
    samples, declared = sf_decode(data)
    n = frames * FRAME
    assert declared == rate
    assert abs(len(samples) - round(n * rate / MODEL_RATE)) <= 1
    assert result["metadata"]["sample_rate"] == rate
    assert result["metadata"]["duration_seconds"] == pytest.approx(len(samples) / rate, abs=0.001)


def test_resampling_keeps_the_signal_below_the_new_nyquist(worker):
    """Band-limited: 24 kHz noise taken to 16 kHz keeps its 0-7 kHz content, the same as at the model rate."""
    native, _ = sf_decode(audio_bytes(run(worker, speech_job(8))))
    low, _ = sf_decode(audio_bytes(run(worker, speech_job(8, sample_rate=16000))))

    def band_power(x, rate):  # mean power spectral density (per Hz) in 1-6 kHz
        spectrum = np.abs(np.fft.rfft(x)) ** 2 / (len(x) * rate)
        freqs = np.fft.rfftfreq(len(x), 1 / rate)
        return spectrum[(freqs > 1000) & (freqs < 6000)].mean()

    assert 10 * np.log10(band_power(low, 16000) / band_power(native, MODEL_RATE)) == pytest.approx(0, abs=1.5)


# -- 3. loudness through the worker -----------------------------------------------------------------------------

LOUD_FRAMES = 13  # 1.04 s: seven overlapping 400 ms BS.1770 gating blocks


@pytest.mark.parametrize(
    ("target", "rate"),
    [pytest.param(-16, None, id="podcast-16"), pytest.param(-30, None, id="quiet-30"),
     pytest.param(-10, None, id="loud-10-limited"), pytest.param(-23, 48000, id="broadcast-23-at-48k")],
)  # fmt: skip
def test_loudness_target_is_met_under_the_true_peak_ceiling(worker, target, rate):
    extra = {} if rate is None else {"sample_rate": rate}
    result = run(worker, speech_job(LOUD_FRAMES, loudness_lufs=target, **extra))
    samples, declared = sf_decode(audio_bytes(result))
    assert declared == (rate or MODEL_RATE)
    assert len(samples) == round(LOUD_FRAMES * FRAME * declared / MODEL_RATE)  # levelling keeps the length
    assert postprocess.measure_loudness(samples, declared) == pytest.approx(target, abs=1.0)
    assert postprocess.true_peak_dbtp(samples, declared) <= -1.0


@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param("mp3", id="mp3"),
        pytest.param("opus", id="opus"),
        pytest.param("aac", id="aac"),
    ],
)
def test_lossy_output_meets_the_target_under_the_true_peak_ceiling(worker, fmt):
    """The contract's ceiling is on what the caller decodes, so a lossy codec's overshoot must fit under it too.

    -14 LUFS (a streaming target) makes the limiter work on this noise, and the codec overshoot on top."""
    result = run(worker, speech_job(LOUD_FRAMES, output_format=fmt, loudness_lufs=-14))
    samples, rate = decode(fmt, audio_bytes(result), MODEL_RATE)
    assert postprocess.measure_loudness(samples, rate) == pytest.approx(-14, abs=1.0)
    assert postprocess.true_peak_dbtp(samples, rate) <= -1.0


def test_without_a_target_the_level_is_left_alone(worker):
    """The baseline the loudness tests move away from: -30 and -10 are far from the raw level."""
    samples, rate = sf_decode(audio_bytes(run(worker, speech_job(LOUD_FRAMES))))
    raw = postprocess.measure_loudness(samples, rate)
    assert abs(raw - -30) > 5 and abs(raw - -10) > 3


def test_podcast_segments_are_each_levelled_to_the_target(worker):
    target, pause_ms, frames = -24, 500, LOUD_FRAMES
    job = {
        "model": MODEL,
        "seed": 9,
        "loudness_lufs": target,
        "params": {"max_new_tokens": frames + 1},
        "segments": [
            {"text": "Welcome to the show.", "voice": "Ryan"},
            {"text": "Thanks for having me.", "voice": "Vivian", "pause_ms": pause_ms},
        ],
    }
    result = run(worker, job)
    samples, rate = sf_decode(audio_bytes(result))
    seg = frames * FRAME
    pause = MODEL_RATE * pause_ms // 1000
    assert len(samples) == 2 * seg + pause
    assert result["metadata"]["num_segments"] == 2
    assert result["metadata"]["duration_seconds"] == pytest.approx((2 * seg + pause) / rate, abs=0.001)
    first, gap, second = samples[:seg], samples[seg : seg + pause], samples[seg + pause :]
    assert not gap.any()
    for part in (first, second):
        assert postprocess.measure_loudness(part, rate) == pytest.approx(target, abs=1.0)
        assert postprocess.true_peak_dbtp(part, rate) <= -1.0


def test_podcast_of_short_segments_still_meets_the_target(worker):
    """Two 0.32 s lines, each shorter than one 400 ms BS.1770 block: each is levelled as if looped to a block
    (the whole job, pause included, measures lower: its blocks straddle the silence)."""
    job = {
        "model": MODEL,
        "seed": 9,
        "loudness_lufs": -30,
        "pause_ms": 200,
        "params": {"max_new_tokens": 5},
        "segments": [{"text": "Yes.", "voice": "Ryan"}, {"text": "No.", "voice": "Vivian"}],
    }
    result = run(worker, job)
    samples, rate = sf_decode(audio_bytes(result))
    line = 4 * FRAME
    assert len(samples) == 2 * line + MODEL_RATE * 200 // 1000
    for part in (samples[:line], samples[-line:]):
        looped = np.tile(part, 2)
        assert postprocess.measure_loudness(looped, rate) == pytest.approx(-30, abs=1.0)


# -- 4. delivery -------------------------------------------------------------------------------------------------


def key_of(url: str, bucket: str) -> str:
    path = urlsplit(url).path
    prefix = f"/{bucket}/"
    assert path.startswith(prefix), url
    return path[len(prefix) :]


@pytest.mark.parametrize(
    ("fmt", "ext", "content_type"),
    [
        pytest.param("wav", "wav", "audio/wav", id="wav"),
        pytest.param("mp3", "mp3", "audio/mpeg", id="mp3"),
        pytest.param("opus", "ogg", "audio/ogg", id="opus-as-ogg"),
        pytest.param("pcm", "pcm", "application/octet-stream", id="pcm"),
    ],
)
def test_s3_delivery_uploads_the_same_bytes_as_base64(make_worker, s3_server, fmt, ext, content_type):
    worker = make_worker(s3_server.env())
    job_id = f"s3-job-{fmt}"
    job = speech_job(4, output_format=fmt, seed=21)
    inline = audio_bytes(run(worker, {**job, "delivery": "base64"}, job_id="inline-" + job_id))

    result = run(worker, {**job, "delivery": "s3"}, job_id=job_id)
    assert "audio_base64" not in result and "error" not in result
    url = result["audio_url"]
    assert key_of(url, s3_server.bucket) == f"tts-output/{job_id}.{ext}"
    assert "X-Amz-Signature=" in url  # presigned, fetchable without credentials
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert s3_server.path_of(f"tts-output/{job_id}.{ext}").read_bytes() == response.content
    assert result["metadata"]["size_bytes"] == len(response.content)
    if fmt == "opus":
        # Each Ogg stream gets a random serial number (and so other page CRCs): same audio, other bytes.
        assert response.content[:4] == b"OggS" and len(response.content) == len(inline)
        np.testing.assert_array_equal(sf_decode(response.content)[0], sf_decode(inline)[0])
    else:
        assert response.content == inline
    assert result["metadata"]["format"] == fmt


def test_auto_delivery_with_s3_configured_returns_a_url(make_worker, s3_server):
    result = run(make_worker(s3_server.env()), speech_job(3, delivery="auto"), job_id="auto-job")
    assert "audio_base64" not in result
    assert key_of(result["audio_url"], s3_server.bucket) == "tts-output/auto-job.wav"
    data = requests.get(result["audio_url"], timeout=10).content
    assert data[:4] == b"RIFF" and len(data) == result["metadata"]["size_bytes"]


def test_default_delivery_without_s3_is_base64(worker):
    result = run(worker, speech_job(3))
    assert "audio_url" not in result
    assert len(audio_bytes(result)) == result["metadata"]["size_bytes"]


@pytest.mark.parametrize(
    ("variable", "s3_code"),
    [
        pytest.param("BUCKET_SECRET_ACCESS_KEY", "SignatureDoesNotMatch", id="wrong-secret"),
        pytest.param("BUCKET_ACCESS_KEY_ID", "InvalidAccessKeyId", id="wrong-access-key"),
    ],
)
def test_wrong_credentials_are_delivery_failed_without_credentials(make_worker, s3_server, caplog, variable, s3_code):
    env = s3_server.env()
    wrong = "WR0NG" + env[variable][5:]
    worker = make_worker({**env, variable: wrong})
    job_id = f"bad-{s3_code}-job"
    result = run(worker, speech_job(3, delivery="s3"), job_id=job_id)
    assert set(result) == {"error"}
    assert result["error"]["code"] == "delivery_failed"
    message = result["error"]["message"]
    assert f'S3 bucket "{s3_server.bucket}" failed: {s3_code}' in message
    assert "HTTP 403" in message
    logged = caplog.text
    for credential in (wrong, s3_server.secret_access_key, s3_server.access_key_id):
        assert credential not in message
        assert credential not in logged
    assert not s3_server.path_of(f"tts-output/{job_id}.wav").exists()


def test_unreachable_s3_is_delivery_failed(make_worker, s3_server):
    env = {**s3_server.env(), "BUCKET_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}/{s3_server.bucket}"}
    result = run(make_worker(env), speech_job(2, delivery="auto"), job_id="down-job")
    assert set(result) == {"error"}  # no silent fallback to base64
    assert result["error"]["code"] == "delivery_failed"
    message = result["error"]["message"]
    assert f'"{s3_server.bucket}"' in message and "EndpointConnectionError" in message
    assert s3_server.secret_access_key not in message and s3_server.access_key_id not in message


SMALL_INLINE = {"QWEN_TTS_MAX_INLINE_BYTES": "1000"}


def test_oversized_result_goes_to_s3_under_auto(make_worker, s3_server):
    result = run(make_worker({**s3_server.env(), **SMALL_INLINE}), speech_job(3), job_id="big-auto-job")
    assert "audio_base64" not in result
    assert key_of(result["audio_url"], s3_server.bucket) == "tts-output/big-auto-job.wav"
    assert result["metadata"]["size_bytes"] > 1000
    assert len(requests.get(result["audio_url"], timeout=10).content) == result["metadata"]["size_bytes"]


def test_oversized_result_without_s3_is_payload_too_large(make_worker):
    result = run(make_worker(SMALL_INLINE), speech_job(3))
    assert set(result) == {"error"}
    assert result["error"]["code"] == "payload_too_large"
    message = result["error"]["message"]
    assert "1000 bytes" in message
    assert "S3" in message and "BUCKET_ENDPOINT_URL" in message
    assert '"mp3"' in message and '"opus"' in message


def test_oversized_base64_with_s3_configured_says_use_s3(make_worker, s3_server):
    result = run(make_worker({**s3_server.env(), **SMALL_INLINE}), speech_job(3, delivery="base64"))
    assert result["error"]["code"] == "payload_too_large"
    assert 'Use delivery "s3"' in result["error"]["message"]
    assert s3_server.secret_access_key not in result["error"]["message"]


def test_a_result_under_the_inline_limit_is_base64(make_worker):
    # A 2-frame pcm result is 7680 bytes, 10240 as base64: just under a 10240-byte limit.
    result = run(make_worker({"QWEN_TTS_MAX_INLINE_BYTES": "10240"}), speech_job(2, output_format="pcm"))
    assert len(audio_bytes(result)) == 2 * FRAME * 2


def test_s3_delivery_without_s3_configured_is_invalid_input(worker):
    result = run(worker, speech_job(2, delivery="s3"))
    assert result["error"]["code"] == "invalid_input"
    message = result["error"]["message"]
    assert "BUCKET_ENDPOINT_URL" in message and '"base64"' in message


# -- 5. aac without ffmpeg ---------------------------------------------------------------------------------------

# Run in a worker process whose PATH has no ffmpeg, over an empty model directory: reaching for the model would be
# model_unavailable and generating would trip the stub, so invalid_input proves the job was refused up front.
# (Without sample_rate the worker first loads the model to learn its rate; that path needs the model on disk.)
NO_FFMPEG_SCRIPT = """
import json, sys
from audio.settings import Settings
from audio.worker import Worker
from audio.serving.service import make_handler

worker = Worker(Settings.from_env({"QWEN_TTS_MODEL_DIR": sys.argv[1], "QWEN_TTS_PRELOAD": "none"}))

def generated(*args, **kwargs):
    raise AssertionError("audio was generated")

worker.generator.run = generated
handle = make_handler(worker)
job = {"text": "Hello.", "output_format": "aac", "model": "0.6B-CustomVoice", "sample_rate": 24000}
print(json.dumps({
    "aac": handle({"id": "aac-job", "input": job}),
    "formats": handle({"id": "health", "input": {"action": "health"}})["output_formats"],
}))
"""


@pytest.mark.slow
def test_aac_without_ffmpeg_is_invalid_input_before_any_model_work(tmp_path):
    bin_dir = tmp_path / "bin"  # the whole PATH: an empty directory
    bin_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "PYTHONPATH")}
    env.update(PATH=str(bin_dir), HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    assert shutil.which("ffmpeg", path=env["PATH"]) is None
    proc = subprocess.run(
        [sys.executable, "-c", NO_FFMPEG_SCRIPT, str(tmp_path / "no-models")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["aac"] == {
        "error": {
            "code": "invalid_input",
            "message": "aac needs ffmpeg, which this worker image lacks; use mp3/opus/flac/wav",
        }
    }
    assert out["formats"] == ["wav", "mp3", "flac", "opus", "pcm", "ulaw", "alaw"]
