"""End to end through `handler`: the real qwen_tts generation code on tiny checkpoints, for every model kind."""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
import pytest
import soundfile as sf

from audio.schema import parse_job, plan_job
from audio.serving.service import make_handler
from audio.settings import Settings
from audio.worker import Worker
from tests.conftest import NO_DURATION_BAND

FRAME = 1920  # samples per 12.5 Hz codec frame at 24 kHz


def wav_b64(seconds: float = 2.0, rate: int = 16000, freq: float = 220.0) -> str:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * freq * t), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


REF = wav_b64()

KINDS = [
    pytest.param({"model": "1.7B-CustomVoice", "voice": "Vivian", "instruct": "cheerful"}, id="custom-voice-1.7B"),
    pytest.param({"model": "0.6B-CustomVoice", "voice": "sohee", "language": "ko"}, id="custom-voice-0.6B"),
    pytest.param({"model": "1.7B-VoiceDesign", "instruct": "A warm, low voice."}, id="voice-design"),
    pytest.param({"model": "1.7B-Base", "ref_audio": REF, "ref_text": "A reference sentence."}, id="base-icl-clone"),
    pytest.param({"model": "0.6B-Base", "ref_audio": REF, "x_vector_only": True}, id="base-xvector-clone"),
    pytest.param(
        {"model": "Qwen/Qwen3-TTS-12Hz-1.7B-Base", "ref_audio": "data:audio/wav;base64," + REF, "ref_text": "Hi."},
        id="base-data-uri-full-id",
    ),
]


def run(worker, job_input: dict, job_id: str = "job-1") -> dict:
    return make_handler(worker)({"id": job_id, "input": job_input})


def decode(result: dict) -> tuple[bytes, np.ndarray, sf._SoundFileInfo]:
    data = base64.b64decode(result["audio_base64"])
    info = sf.info(io.BytesIO(data))
    samples, _ = sf.read(io.BytesIO(data), dtype="int16")
    return data, samples, info


@pytest.mark.parametrize("fields", KINDS)
def test_every_kind_speaks_exact_length_wav(worker, fields):
    result = run(worker, {"text": "Hello there, world.", "seed": 7, "params": {"max_new_tokens": 9}, **fields})
    data, samples, info = decode(result)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert len(samples) == 8 * FRAME  # qwen_tts keeps max_new_tokens - 1 frames
    meta = result["metadata"]
    assert meta["duration_seconds"] == pytest.approx(8 * FRAME / 24000)
    assert (meta["sample_rate"], meta["format"], meta["num_segments"], meta["num_chunks"], meta["retries"]) == (
        24000,
        "wav",
        1,
        1,
        0,
    )
    assert meta["size_bytes"] == len(data)
    assert meta["seed"] == 7
    assert meta["model"] == fields["model"].removeprefix("Qwen/Qwen3-TTS-12Hz-")


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"model": "0.6B-CustomVoice"}, id="custom-voice"),
        pytest.param({"model": "0.6B-Base", "ref_audio": REF, "ref_text": "A reference."}, id="base-clone"),
    ],
)
def test_same_seed_same_bytes_other_seed_other_bytes(worker, fields):
    job = {"text": "Reproducible speech.", "params": {"max_new_tokens": 6}, **fields}
    first = run(worker, {**job, "seed": 11})["audio_base64"]
    again = run(worker, {**job, "seed": 11})["audio_base64"]
    other = run(worker, {**job, "seed": 12})["audio_base64"]
    assert first == again
    assert other != first


def test_no_seed_reports_the_seed_that_reproduces_it(worker):
    job = {"text": "Which seed?", "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 4}}
    first = run(worker, job)
    again = run(worker, {**job, "seed": first["metadata"]["seed"]})
    assert again["audio_base64"] == first["audio_base64"]


def test_default_job_uses_ryan_on_the_default_model(make_worker):
    worker = make_worker({"QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice"})
    result = run(worker, {"text": "Default voice.", "params": {"max_new_tokens": 3}})
    assert result["metadata"]["model"] == "0.6B-CustomVoice"
    assert len(decode(result)[1]) == 2 * FRAME


def test_small_customvoice_says_it_ignores_instruct(worker):
    result = run(
        worker, {"text": "Hi.", "model": "0.6B-CustomVoice", "instruct": "whisper", "params": {"max_new_tokens": 3}}
    )
    assert result["metadata"]["warnings"] == [
        "model 0.6B-CustomVoice ignores instruct (only 1.7B-CustomVoice follows style instructions); it was not applied"
    ]


@pytest.mark.parametrize(
    ("ref_audio", "fragment"),
    [
        pytest.param("not base64 at all!", "neither valid base64", id="garbage"),
        pytest.param(base64.b64encode(b"RIFF0000WAVEjunk").decode(), "could not be decoded", id="not-audio"),
        pytest.param(wav_b64(seconds=0.3), "0.3 s long", id="too-short"),
        pytest.param(wav_b64(seconds=2.0, freq=0.0), "silent", id="silent"),
    ],
)
def test_bad_reference_audio_is_invalid_input(worker, ref_audio, fragment):
    result = run(worker, {"text": "Hi.", "model": "0.6B-Base", "ref_audio": ref_audio, "x_vector_only": True})
    assert result["error"]["code"] == "invalid_input"
    assert fragment in result["error"]["message"]


def test_missing_model_is_model_unavailable_with_fetch_command(tmp_path):
    settings = Settings.from_env({"QWEN_TTS_MODEL_DIR": str(tmp_path), "HF_HOME": str(tmp_path / "hf")})
    job = {"text": "Hi.", "model": "0.6B-Base", "ref_audio": REF, "x_vector_only": True}
    result = run(Worker(settings), job)
    assert result["error"]["code"] == "model_unavailable"
    message = result["error"]["message"]
    assert "0.6B-Base" in message
    assert str(tmp_path) in message
    assert "huggingface-cli download Qwen/Qwen3-TTS-12Hz-0.6B-Base" in message


def test_unexpected_error_is_internal_without_traceback(make_worker):
    def broken(name):
        # (a CUDA error would leave the worker unusable: tests/test_lifecycle.py)
        raise RuntimeError("shape mismatch at /secret/path.py")

    result = run(make_worker(get_model=broken), {"text": "Hi.", "model": "0.6B-CustomVoice"})
    assert result == {
        "error": {"code": "internal", "message": "the worker hit an unexpected error; the job can be retried"}
    }


def test_health_reports_runtime_and_loaded_models(worker):
    run(worker, {"text": "Warm.", "model": "0.6B-CustomVoice", "params": {"max_new_tokens": 2}})
    health = run(worker, {"action": "health"})
    assert (health["status"], health["device"], health["dtype"], health["attention"]) == (
        "ok",
        "cpu",
        "float32",
        "sdpa",
    )
    assert "0.6B-CustomVoice" in health["loaded_models"]
    assert health["versions"]["qwen-tts"] == "0.1.1"
    assert {"wav", "flac", "mp3", "opus", "pcm"} <= set(health["output_formats"])


def test_info_actions(worker):
    voices = run(worker, {"action": "voices"})
    assert [v["name"] for v in voices["custom_voice"]] == [
        "Vivian", "Serena", "Uncle_Fu", "Dylan", "Eric", "Ryan", "Aiden", "Ono_Anna", "Sohee"
    ]  # fmt: skip
    assert voices["aliases"]["male_1"] == "Ryan"
    languages = run(worker, {"action": "languages"})
    assert languages["languages"][0] == "Auto" and len(languages["languages"]) == 11
    assert languages["codes"]["pt"] == "Portuguese"
    models = run(worker, {"action": "models"})["models"]
    assert [(m["name"], m["kind"], m["size"], m["present"]) for m in models] == [
        ("1.7B-CustomVoice", "custom_voice", "1.7B", True),
        ("0.6B-CustomVoice", "custom_voice", "0.6B", True),
        ("1.7B-Base", "base", "1.7B", True),
        ("0.6B-Base", "base", "0.6B", True),
        ("1.7B-VoiceDesign", "voice_design", "1.7B", True),
    ]


def test_info_action_rejects_extra_fields(worker):
    result = run(worker, {"action": "voices", "text": "hi"})
    assert result["error"]["code"] == "invalid_input"
    assert "text" in result["error"]["message"]


def test_openai_shaped_request_speaks_through_the_handler(live_eos_model_dir):
    # OpenAI's request carries no seed, and about half of the random model's generations never reach EOS (a
    # runaway, retried): enough retries make a failed job (0.45^11) practically impossible.
    settings = Settings.from_env(
        {
            "QWEN_TTS_MODEL_DIR": str(live_eos_model_dir),
            "QWEN_TTS_PRELOAD": "none",
            "QWEN_TTS_MIN_SECONDS_PER_CHAR": "0",
            **NO_DURATION_BAND,
            "QWEN_TTS_MAX_RETRIES": "10",
            "HF_HOME": str(live_eos_model_dir / "no-hf"),
        }
    )
    job = {
        "openai_route": "/v1/audio/speech",
        "openai_input": {"model": "tts-1", "input": "Hello from the OpenAI shape.", "voice": "alloy", "speed": 1.5},
    }
    result = run(Worker(settings), job)
    data = base64.b64decode(result["audio_base64"])
    assert data[:3] == b"ID3" or data[0] == 0xFF  # mp3, OpenAI's default response_format
    meta = result["metadata"]
    assert (meta["format"], meta["model"], meta["speed"]) == ("mp3", "1.7B-CustomVoice", 1.5)


def test_speed_changes_duration_not_sample_rate(worker):
    job = {"text": "Fast talk.", "model": "0.6B-CustomVoice", "seed": 1, "params": {"max_new_tokens": 11}}
    plan = plan_job(parse_job(job), default_model="1.7B-CustomVoice", max_chars=50_000)
    normal = worker.synthesize(plan, "normal")
    fast = worker.synthesize(dataclasses.replace(plan, speed=2.0), "fast")
    assert len(decode(normal)[1]) == 10 * FRAME
    assert len(decode(fast)[1]) == 5 * FRAME
    assert decode(fast)[2].samplerate == 24000


@pytest.fixture
def wav_server(tmp_path):
    """Serves files from tmp_path over HTTP on loopback."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_reference_audio_by_url_clones_like_the_same_bytes_inline(make_worker, wav_server):
    worker = make_worker({"QWEN_TTS_ALLOW_PRIVATE_URLS": "true"})  # the test server is on loopback
    root, url = wav_server
    (root / "ref.wav").write_bytes(base64.b64decode(REF))
    job = {
        "text": "Cloned.",
        "model": "0.6B-Base",
        "ref_text": "A reference.",
        "seed": 3,
        "params": {"max_new_tokens": 4},
    }
    by_url = run(worker, {**job, "ref_audio": f"{url}/ref.wav"})
    inline = run(worker, {**job, "ref_audio": REF})
    assert by_url["audio_base64"] == inline["audio_base64"]
    missing = run(worker, {**job, "ref_audio": f"{url}/nope.wav"})
    assert missing["error"] == {"code": "invalid_input", "message": f"ref_audio URL {url}/nope.wav answered HTTP 404"}


def test_unknown_action_lists_the_actions(worker):
    assert run(worker, {"action": "dance"})["error"] == {
        "code": "invalid_input",
        "message": "unknown action 'dance': use synthesize, health, voices, languages, models, create_voice, "
        "list_voices, get_voice, delete_voice",
    }


@pytest.mark.parametrize(("voice", "dialect"), [("Dylan", "Beijing"), ("Eric", "Sichuan")])
def test_dialect_by_auto_is_a_warning_and_speaks_as_chinese_does(worker, voice, dialect):
    job = {"text": "Hi there.", "voice": voice, "model": "0.6B-CustomVoice", "seed": 4, "params": {"max_new_tokens": 4}}
    auto = run(worker, job)
    assert auto["metadata"]["warnings"] == [
        f"voice {voice} speaks the {dialect} dialect: with language Auto (or Chinese) qwen_tts uses {voice}'s "
        "dialect for all text; set language for another language, or pick a voice without a dialect for "
        "standard Mandarin"
    ]
    # What the warning says: under Auto the model is given the dialect, exactly as under Chinese.
    chinese = run(worker, {**job, "language": "Chinese"})
    english = run(worker, {**job, "language": "English"})
    assert auto["audio_base64"] == chinese["audio_base64"] != english["audio_base64"]
    assert "warnings" not in english["metadata"]


@pytest.mark.parametrize("name", ["fable", "verse"])
def test_openai_voice_names_get_no_dialect_warning(name):
    from audio.openai_compat import to_job_input

    job, _ = to_job_input({"openai_input": {"input": "Hi.", "voice": name}}, "1.7B-CustomVoice")
    plan = plan_job(parse_job(job), default_model="1.7B-CustomVoice", max_chars=100)
    assert (plan.segments[0].speaker, plan.warnings) == ({"fable": "Aiden", "verse": "Ryan"}[name], [])


def test_a_loopback_reference_url_is_refused_by_default_and_the_server_gets_nothing(worker, tmp_path):
    import http.server
    import threading

    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ref.wav?token=SECRET"
        result = run(worker, {"text": "Hi.", "model": "0.6B-Base", "ref_audio": url, "x_vector_only": True})
    finally:
        server.shutdown()
    assert result["error"]["code"] == "invalid_input"
    assert "resolves to 127.0.0.1 (loopback address)" in result["error"]["message"]
    assert "SECRET" not in result["error"]["message"]
    assert requests == []


def test_a_long_reference_is_cut_and_the_job_says_so(worker, speech_wav):
    samples, rate = sf.read(io.BytesIO(speech_wav), dtype="float32")
    pause = np.zeros(int(0.6 * rate), dtype=np.float32)
    long = np.concatenate([np.concatenate([samples, pause]) for _ in range(6)])  # ~30 s
    buf = io.BytesIO()
    sf.write(buf, long, rate, format="WAV")
    job = {"text": "Hi.", "model": "0.6B-Base", "x_vector_only": True, "params": {"max_new_tokens": 3}}
    result = run(worker, {**job, "ref_audio": base64.b64encode(buf.getvalue()).decode()})
    (warning,) = result["metadata"]["warnings"]
    assert warning.startswith("ref_audio is ") and "were used, cut at a pause" in warning
