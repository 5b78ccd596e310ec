"""scripts/local_runpod_test.py: the README's "Try it locally" commands run as written, in process, on the tiny
checkpoint (the download of the missing real weights is an injected failing function, so nothing reaches the
network); the job-building rules; the same job to a loopback stand-in for the local API and for a deployed
endpoint (through the runpod client). The run against a real `--rp_serve_api` worker is in test_runpod_local.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import soundfile as sf

from scripts import local_runpod_test as client

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TEST_INPUT = json.loads((ROOT / "test_input.json").read_text())
SCRIPT = "python scripts/local_runpod_test.py"
RATE = 24000
FRAME = 1920
TINY_CHUNK_S = 19 * FRAME / RATE  # the tiny-model cap: max_new_tokens 20, EOS dead -> 19 frames
PAUSE_S = 0.3
SF_FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "opus": "OGG"}
BANNER = "REAL WEIGHTS UNAVAILABLE: using the TINY RANDOM checkpoint"


class OfflineHub:
    """The download function: records each call and fails as an unreachable Hugging Face hub does."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, *, repo_id: str, local_dir: str) -> str:
        self.calls.append(repo_id)
        raise requests.ConnectionError(f"Failed to resolve 'huggingface.co' for {repo_id}")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    """A machine without real weights (tiny_model_dir: the fallback's checkpoint, built once for the session)."""
    empty = tmp_path_factory.mktemp("no-weights")
    return {"QWEN_TTS_MODEL_DIR": str(empty / "models"), "HF_HOME": str(empty / "hf"), "OMP_NUM_THREADS": "1"}


def run_cli(argv: list[str], env: dict[str, str], capsys, hub: OfflineHub | None = None) -> tuple[int, str, str]:
    code = client.main(argv, env=env, download=hub or OfflineHub())
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_metadata(out: str) -> dict[str, Any]:
    """The metadata object the script prints after its status line."""
    return json.JSONDecoder().raw_decode(out[out.index("{") :])[0]


def check_audio(path: Path, fmt: str, metadata: dict[str, Any]) -> float:
    """The file decodes as `fmt` at the model's rate, as long as its metadata says; its duration in seconds."""
    data = path.read_bytes()
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.samplerate, info.channels) == (SF_FORMATS[fmt], RATE, 1)
    assert (metadata["format"], metadata["size_bytes"]) == (fmt, len(data))
    samples, _ = sf.read(io.BytesIO(data), dtype="float32")
    decoded_s = len(samples) / RATE
    if fmt in ("wav", "flac"):
        assert len(samples) == round(metadata["duration_seconds"] * RATE)
    else:  # lossy codecs: encoder delay and frame padding, within one model frame
        assert decoded_s == pytest.approx(metadata["duration_seconds"], abs=FRAME / RATE)
    return decoded_s


# -- the README's commands ------------------------------------------------------------------------------------


def readme_lines() -> list[str]:
    section = README.split("\n## Try it locally\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README's Try it locally section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


README_COMMANDS = [line for line in readme_lines() if line.startswith(SCRIPT)]
README_SETUP = [line for line in readme_lines() if not line.startswith(SCRIPT)]


def test_readme_shows_the_seeds_command_forms():
    forms = [shlex.split(line, comments=True)[2:] for line in README_COMMANDS]
    assert [] in forms
    assert ["--text", "Custom text here", "--voice", "male_1"] in forms
    assert ["--segments"] in forms
    assert ["--save", "my_audio.wav"] in forms
    assert ["--payload", "my_job.json"] in forms
    assert ["--format", "mp3"] in forms
    assert ["--captions", "srt"] in forms
    assert ["--stream"] in forms


@pytest.mark.parametrize("line", README_COMMANDS, ids=lambda line: line.removeprefix(SCRIPT).split("#")[0].strip())
def test_readme_command_works_as_written(line, cli_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for setup in README_SETUP:  # e.g. writing my_job.json
        subprocess.run(["bash", "-c", setup], cwd=tmp_path, check=True, timeout=30)
    argv = shlex.split(line, comments=True)[2:]
    code, out, err = run_cli(argv, cli_env, capsys)
    assert code == 0, err[-2000:]
    assert BANNER in err
    metadata = printed_metadata(out)
    fmt = metadata["format"]
    streamed = "--stream" in argv
    default = "wav" if streamed and fmt == "pcm" else fmt  # a stream's pcm items are saved as one WAV
    saved = Path(argv[argv.index("--save") + 1]) if "--save" in argv else Path(f"output.{default}")
    assert f"wrote {saved.stat().st_size} bytes to {saved}" in out
    files = [saved.name]
    if "--captions" in argv:
        files.append(saved.with_suffix(f".{argv[argv.index('--captions') + 1]}").name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".json") == sorted(files)
    chunks = metadata["num_chunks"]
    assert metadata["duration_seconds"] == pytest.approx(
        chunks * TINY_CHUNK_S + (metadata["num_segments"] - 1) * PAUSE_S
    )
    if streamed:
        assert len(ITEM_RE.findall(out)) == metadata["stream_items"]
        samples, rate = sf.read(saved, dtype="int16")
        assert (rate, len(samples) * 2) == (RATE, metadata["size_bytes"])
        assert len(samples) == round(metadata["duration_seconds"] * RATE)
    else:
        check_audio(saved, fmt, metadata)


# -- each form's specifics, in process ------------------------------------------------------------------------


def test_default_job_is_test_input_and_says_loudly_it_is_the_tiny_model(cli_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    hub = OfflineHub()
    code, out, err = run_cli([], cli_env, capsys, hub)
    assert code == 0, err[-2000:]
    assert hub.calls == ["Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"]  # the default model was looked for, then fetched
    assert BANNER in err
    assert "python scripts/download_models.py 1.7B-CustomVoice" in err
    assert "progress:" not in err  # one batch: no progress lines
    assert re.match(r"COMPLETED in \d+\.\d s \(job local\): 1\.52 s of audio\n", out)
    metadata = printed_metadata(out)
    assert (metadata["model"], metadata["num_segments"], metadata["num_chunks"]) == ("1.7B-CustomVoice", 1, 1)
    assert metadata["duration_seconds"] == TINY_CHUNK_S
    assert check_audio(tmp_path / "output.wav", "wav", metadata) == TINY_CHUNK_S


def test_segments_as_mp3(cli_env, tmp_path, capsys):
    out_path = tmp_path / "pod.mp3"
    code, out, err = run_cli(["--segments", "--format", "mp3", "--save", str(out_path)], cli_env, capsys)
    assert code == 0, err[-2000:]
    metadata = printed_metadata(out)
    n = len(client.SAMPLE_SEGMENTS)
    assert (metadata["num_segments"], metadata["num_chunks"]) == (n, n)
    assert metadata["duration_seconds"] == pytest.approx(n * TINY_CHUNK_S + (n - 1) * PAUSE_S)
    decoded_s = check_audio(out_path, "mp3", metadata)
    assert decoded_s == pytest.approx(6.98, abs=FRAME / RATE)


@pytest.mark.parametrize("wrapped", [True, False], ids=["input-wrapper", "bare-input"])
def test_payload_file_with_flags_winning(cli_env, tmp_path, monkeypatch, capsys, wrapped):
    monkeypatch.chdir(tmp_path)
    job = {"text": "From a file.", "voice": "Vivian", "output_format": "wav", "model": "0.6B-CustomVoice"}
    (tmp_path / "job.json").write_text(json.dumps({"input": job} if wrapped else job))
    code, out, err = run_cli(["--payload", "job.json", "--format", "flac", "--seed", "7"], cli_env, capsys)
    assert code == 0, err[-2000:]
    metadata = printed_metadata(out)
    assert (metadata["model"], metadata["format"], metadata["seed"]) == ("0.6B-CustomVoice", "flac", 7)
    check_audio(tmp_path / "output.flac", "flac", metadata)


def test_failed_job_exits_1_with_the_code(cli_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["--text", "Hi.", "--voice", "nobody", "--tiny"], cli_env, capsys)
    assert code == 1
    assert err.splitlines()[-1].startswith("error: job local FAILED: invalid_input: unknown voice 'nobody'")
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_long_job_shows_progress(cli_env, tmp_path, capsys):
    text = " ".join(["This sentence is here to make a few chunks of text for the worker."] * 6)
    env = {**cli_env, "QWEN_TTS_MAX_BATCH": "2"}
    code, out, err = run_cli(["--text", text, "--tiny", "--save", str(tmp_path / "long.wav")], env, capsys)
    assert code == 0, err[-2000:]
    chunks = printed_metadata(out)["num_chunks"]
    assert chunks > 2
    progress = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert progress[0] == f"progress: 2/{chunks} chunks"
    assert progress[-1] == f"progress: {chunks}/{chunks} chunks"


def test_info_action_in_process_prints_it_and_fetches_no_model(cli_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    hub = OfflineHub()
    code, out, err = run_cli(["--input", '{"action": "voices"}'], cli_env, capsys, hub)
    assert code == 0, err[-2000:]
    assert hub.calls == [] and BANNER not in err
    assert '"male_1"' in out
    assert list(tmp_path.iterdir()) == []


def test_bad_worker_configuration_is_a_usage_error(cli_env, capsys):
    code, _, err = run_cli(["--tiny"], {**cli_env, "QWEN_TTS_DEFAULT_MODEL": "2B-Turbo"}, capsys)
    assert code == 2
    assert "QWEN_TTS_DEFAULT_MODEL='2B-Turbo' is not a known model" in err


# -- building the job -----------------------------------------------------------------------------------------


def job_for(argv: list[str]) -> dict[str, Any]:
    return client.build_job(client.parse_args(argv))


def test_no_flags_is_test_input_json():
    assert job_for([]) == TEST_INPUT["input"]


def test_flags_change_the_default_job():
    assert job_for(["--format", "mp3", "--voice", "Aiden"]) == {
        **TEST_INPUT["input"],
        "output_format": "mp3",
        "voice": "Aiden",
    }


@pytest.mark.parametrize(
    "argv, job",
    [
        pytest.param(
            ["--text", "Custom text here", "--voice", "male_1"],
            {"text": "Custom text here", "voice": "male_1"},
            id="text",
        ),
        pytest.param(["--segments"], {"segments": client.SAMPLE_SEGMENTS}, id="segments"),
        pytest.param(
            [
                "--text",
                "Hi.",
                "--model",
                "1.7B-VoiceDesign",
                "--instruct",
                "A calm voice.",
                "--language",
                "en",
                "--seed",
                "3",
            ],
            {"text": "Hi.", "model": "1.7B-VoiceDesign", "instruct": "A calm voice.", "language": "en", "seed": 3},
            id="voice-fields",
        ),
        pytest.param(["--text", "Hi.", "--captions", "vtt"], {"text": "Hi.", "captions": "vtt"}, id="captions"),
    ],
)
def test_text_or_segments_start_a_new_job(argv, job):
    assert job_for(argv) == job


def test_flags_win_over_the_payload(tmp_path):
    payload = tmp_path / "job.json"
    payload.write_text(json.dumps({"input": {"segments": [{"text": "A."}], "voice": "Ryan", "pause_ms": 100}}))
    assert job_for(["--payload", str(payload), "--text", "B.", "--voice", "Aiden"]) == {
        "text": "B.",
        "voice": "Aiden",
        "pause_ms": 100,
    }
    assert job_for(["--input", '{"text": "A.", "seed": 1}', "--segments"]) == {
        "segments": client.SAMPLE_SEGMENTS,
        "seed": 1,
    }


def test_ref_audio_file_makes_a_clone_job(tmp_path):
    ref = tmp_path / "me.wav"
    ref.write_bytes(b"RIFF....WAVEfmt fake")
    job = job_for(["--ref-audio", str(ref), "--ref-text", "What I said."])
    assert job == {
        "text": TEST_INPUT["input"]["text"],
        "language": "English",
        "model": "1.7B-Base",  # the default job's voice (Ryan) is dropped: a Base model takes none
        "ref_audio": base64.b64encode(ref.read_bytes()).decode(),
        "ref_text": "What I said.",
    }


def test_ref_audio_url_is_sent_as_is_and_a_named_base_model_is_kept():
    job = job_for(["--text", "Hi.", "--model", "0.6B-Base", "--ref-audio", "https://example.com/me.wav"])
    assert job == {"text": "Hi.", "model": "0.6B-Base", "ref_audio": "https://example.com/me.wav"}


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["--payload", "/nonexistent/job.json"], "cannot read the input file", id="missing-payload"),
        pytest.param(["--ref-audio", "/nonexistent/me.wav"], "cannot read --ref-audio", id="missing-ref-audio"),
    ],
)
def test_unreadable_files_exit_2(capsys, argv, message):
    assert client.main(argv, env={}) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--text", "Hi.", "--segments"], id="text-and-segments"),
        pytest.param(["--payload", "a.json", "--input", "{}"], id="payload-and-input"),
        pytest.param(["--url", "http://127.0.0.1:9", "--endpoint-id", "abc"], id="url-and-endpoint"),
        pytest.param(["--url", "http://127.0.0.1:9", "--tiny"], id="tiny-remote"),
        pytest.param(["--captions", "txt"], id="unknown-captions"),
    ],
)
def test_conflicting_flags_are_usage_errors(argv):
    with pytest.raises(SystemExit) as exc:
        client.parse_args(argv)
    assert exc.value.code == 2


def test_bare_url_flag_is_the_default_local_api():
    assert client.parse_args(["--url"]).url == "http://localhost:8000"


def test_captions_are_saved_beside_the_audio(tmp_path, capsys):
    body = {
        "id": "j",
        "status": "COMPLETED",
        "output": {"audio_base64": base64.b64encode(WAV).decode(), "metadata": METADATA, "captions": "WEBVTT\n"},
    }
    args = client.parse_args(["--save", str(tmp_path / "talk.wav"), "--captions", "vtt"])
    client.report(body, {"text": "Hi.", "captions": "vtt"}, args, 1.0)
    assert (tmp_path / "talk.vtt").read_text() == "WEBVTT\n"
    assert f"wrote captions to {tmp_path / 'talk.vtt'}" in capsys.readouterr().out


# -- over HTTP: a loopback stand-in for the local API and for a deployed endpoint ------------------------------

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "
METADATA = {"duration_seconds": 1.5, "sample_rate": 24000, "format": "wav", "model": "1.7B-CustomVoice"}


class FakeWorker:
    """A loopback HTTP server answering like RunPod's /runsync and /status; records every request."""

    def __init__(self) -> None:
        self.responses: dict[str, list[Any]] = {}  # path -> answers, the last one repeated
        self.requests: list[dict[str, Any]] = []
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                worker.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "json": json.loads(body) if body else None,
                    }
                )
                answers = worker.responses.get(self.path)
                if not answers:
                    self.send_response(404)
                    self.end_headers()
                    return
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(answer, bytes) else "json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, *answers: Any) -> None:
        self.responses[path] = list(answers)


@pytest.fixture
def fake_worker() -> Iterator[FakeWorker]:
    worker = FakeWorker()
    thread = threading.Thread(target=worker.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield worker
    worker.server.shutdown()
    worker.server.server_close()


def completed(output: dict[str, Any]) -> dict[str, Any]:
    return {"id": "job-1", "status": "COMPLETED", "output": output}


def test_completed_job_writes_the_decoded_audio(fake_worker, tmp_path, capsys):
    fake_worker.answer("/runsync", completed({"audio_base64": base64.b64encode(WAV).decode(), "metadata": METADATA}))
    out = tmp_path / "hello.wav"
    code = client.main(["--url", fake_worker.url, "--input", '{"text": "Hi.", "voice": "Aiden"}', "--out", str(out)])
    assert code == 0
    assert out.read_bytes() == WAV
    (request,) = fake_worker.requests
    assert (request["method"], request["path"], request["json"]) == (
        "POST",
        "/runsync",
        {"input": {"text": "Hi.", "voice": "Aiden"}},
    )
    printed = capsys.readouterr().out
    assert "COMPLETED" in printed
    assert '"duration_seconds": 1.5' in printed
    assert f"wrote {len(WAV)} bytes to {out}" in printed


def test_default_input_is_test_input_json_and_default_out_is_by_format(fake_worker, tmp_path, monkeypatch):
    mp3 = b"ID3\x04\x00fake"
    meta = {**METADATA, "format": "mp3"}
    fake_worker.answer("/runsync", completed({"audio_base64": base64.b64encode(mp3).decode(), "metadata": meta}))
    monkeypatch.chdir(tmp_path)
    assert client.main(["--url", fake_worker.url + "/"]) == 0
    assert fake_worker.requests[0]["json"] == TEST_INPUT
    assert (tmp_path / "output.mp3").read_bytes() == mp3


def test_input_file_with_an_input_wrapper(fake_worker, tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"input": {"text": "From a file."}}))
    fake_worker.answer("/runsync", completed({"audio_base64": base64.b64encode(WAV).decode(), "metadata": METADATA}))
    assert client.main(["--url", fake_worker.url, "--input", f"@{job}", "--out", str(tmp_path / "o.wav")]) == 0
    assert fake_worker.requests[0]["json"] == {"input": {"text": "From a file."}}


@pytest.mark.parametrize(
    "error",
    [
        pytest.param({"code": "invalid_input", "message": "unknown voice 'Bob'"}, id="error-object"),
        pytest.param(json.dumps({"code": "invalid_input", "message": "unknown voice 'Bob'"}), id="error-as-json-text"),
    ],
)
def test_failed_job_prints_code_and_message_and_exits_1(fake_worker, tmp_path, capsys, error):
    fake_worker.answer("/runsync", {"id": "job-2", "status": "FAILED", "error": error})
    out = tmp_path / "never.wav"
    code = client.main(["--url", fake_worker.url, "--input", '{"text": "Hi.", "voice": "Bob"}', "--out", str(out)])
    assert code == 1
    assert capsys.readouterr().err == "error: job job-2 FAILED: invalid_input: unknown voice 'Bob'\n"
    assert not out.exists()


def test_running_job_is_polled_until_done(fake_worker, tmp_path, monkeypatch):
    monkeypatch.setattr(client, "POLL_INTERVAL_S", 0.0)
    fake_worker.answer("/runsync", {"id": "job-3", "status": "IN_QUEUE"})
    fake_worker.answer(
        "/status/job-3",
        {"id": "job-3", "status": "IN_PROGRESS"},
        completed({"audio_base64": base64.b64encode(WAV).decode(), "metadata": METADATA}),
    )
    out = tmp_path / "polled.wav"
    assert client.main(["--url", fake_worker.url, "--out", str(out)]) == 0
    assert out.read_bytes() == WAV
    assert [r["path"] for r in fake_worker.requests] == ["/runsync", "/status/job-3", "/status/job-3"]


def test_audio_url_is_downloaded(fake_worker, tmp_path):
    output = {"audio_url": f"{fake_worker.url}/bucket/job-4.wav?X-Amz-Signature=abc", "metadata": METADATA}
    fake_worker.answer("/runsync", completed(output))
    fake_worker.answer("/bucket/job-4.wav?X-Amz-Signature=abc", WAV)
    out = tmp_path / "from-s3.wav"
    assert client.main(["--url", fake_worker.url, "--out", str(out)]) == 0
    assert out.read_bytes() == WAV


def test_info_action_prints_the_output_and_writes_nothing(fake_worker, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_worker.answer("/runsync", completed({"status": "ok", "loaded_models": ["1.7B-CustomVoice"]}))
    assert client.main(["--url", fake_worker.url, "--input", '{"action": "health"}']) == 0
    assert '"loaded_models"' in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_unreachable_worker_is_one_line_and_exit_1(tmp_path, capsys):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as server:
        closed_port = server.server_address[1]  # bound, then closed: nothing listens there
    code = client.main(["--url", f"http://127.0.0.1:{closed_port}", "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"error: request to http://127.0.0.1:{closed_port}/runsync failed: ConnectionError")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["--input", "{not json"], "the input is not valid JSON", id="bad-json"),
        pytest.param(["--input", "[1, 2]"], "the job must be a JSON object", id="not-an-object"),
        pytest.param(["--input", "@/nonexistent/job.json"], "cannot read the input file", id="missing-file"),
    ],
)
def test_usage_errors_exit_2_before_any_request(capsys, argv, message):
    assert client.main(["--url", "http://127.0.0.1:9", *argv], env={}) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8000", "http://localhost:8000/", "http://localhost:8000/runsync"],
)
def test_local_url_forms(url):
    assert client.local_api_url(url) == "http://localhost:8000/runsync"


def endpoint_env(fake_worker: FakeWorker) -> dict[str, str]:
    # RUNPOD_ENDPOINT_BASE_URL is the runpod client's own variable for where endpoints live.
    return {"RUNPOD_API_KEY": "rp_key", "RUNPOD_ENDPOINT_BASE_URL": fake_worker.url}


def test_deployed_endpoint_through_the_runpod_client(fake_worker, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(client, "POLL_INTERVAL_S", 0.0)
    fake_worker.answer("/abc123/run", {"id": "job-9", "status": "IN_QUEUE"})
    fake_worker.answer(
        "/abc123/status/job-9",
        {"id": "job-9", "status": "IN_PROGRESS", "output": "2/4 chunks"},
        completed({"audio_base64": base64.b64encode(WAV).decode(), "metadata": METADATA}),
    )
    out = tmp_path / "deployed.wav"
    code = client.main(
        ["--endpoint-id", "abc123", "--format", "mp3", "--save", str(out)], env=endpoint_env(fake_worker)
    )
    assert code == 0
    assert out.read_bytes() == WAV
    run, *polls = fake_worker.requests
    assert (run["method"], run["path"], run["json"]) == (
        "POST",
        "/abc123/run",
        {"input": {**TEST_INPUT["input"], "output_format": "mp3"}},
    )
    assert run["headers"]["Authorization"] == "Bearer rp_key"
    assert [(p["method"], p["path"]) for p in polls] == [("GET", "/abc123/status/job-9")] * 2
    assert "job job-9: IN_PROGRESS 2/4 chunks" in capsys.readouterr().err


def test_deployed_endpoint_failed_job_exits_1_with_the_code(fake_worker, tmp_path, capsys):
    error = json.dumps({"code": "model_unavailable", "message": "model 1.7B-Base is not on this worker"})
    fake_worker.answer("/abc123/run", {"id": "job-5", "status": "FAILED", "error": error})
    code = client.main(
        ["--endpoint-id", "abc123", "--text", "Hi.", "--save", str(tmp_path / "x.wav")], env=endpoint_env(fake_worker)
    )
    assert code == 1
    assert (
        capsys.readouterr().err == "error: job job-5 FAILED: model_unavailable: model 1.7B-Base is not on this worker\n"
    )


def test_deployed_endpoint_http_error_exits_1(fake_worker, capsys):
    code = client.main(["--endpoint-id", "nowhere", "--api-key", "wrong"], env=endpoint_env(fake_worker))
    assert code == 1  # the stand-in answers 404 for an unknown endpoint
    assert capsys.readouterr().err.startswith("error: endpoint nowhere: HTTPError: 404")


def test_deployed_endpoint_without_a_key_exits_2_before_any_request(fake_worker, capsys):
    env = {"RUNPOD_ENDPOINT_BASE_URL": fake_worker.url}
    assert client.main(["--endpoint-id", "abc123"], env=env) == 2
    assert "needs an API key: --api-key KEY or RUNPOD_API_KEY" in capsys.readouterr().err
    assert fake_worker.requests == []


def test_a_join_false_job_saves_each_item(cli_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    job = {"segments": [{"text": "One."}, {"text": "Two."}], "join": False, "model": "0.6B-CustomVoice"}
    code, out, err = run_cli(["--input", json.dumps(job), "--tiny", "--save", "lines.wav"], cli_env, capsys)
    assert code == 0, err[-2000:]
    assert re.match(r"COMPLETED in \d+\.\d s \(job local\): 2 audio items\n", out)
    assert printed_metadata(out)["num_items"] == 2
    for i in range(2):
        samples, rate = sf.read(tmp_path / f"lines.{i}.wav", dtype="float32")
        assert (rate, len(samples)) == (RATE, 19 * FRAME)
        assert f"wrote {(tmp_path / f'lines.{i}.wav').stat().st_size} bytes to lines.{i}.wav" in out


# -- captions and streams, in process on the tiny checkpoint ---------------------------------------------------

CUE_RE = re.compile(r"(\d+):(\d\d):(\d\d)[.,](\d{3}) --> (\d+):(\d\d):(\d\d)[.,](\d{3})\n(.+?)(?:\n\n|\n?$)", re.S)


def parsed_cues(text: str) -> list[tuple[float, float, str]]:
    """(start_s, end_s, text) of each SRT / WebVTT cue."""
    out = []
    for m in CUE_RE.finditer(text):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, m.groups()[:8])
        out.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, m.group(9)))
    return out


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_captions_are_saved_beside_the_audio_on_the_tiny_model(cli_env, tmp_path, capsys, fmt):
    audio = tmp_path / "talk.wav"
    argv = ["--tiny", "--text", "Hello there. How are you today?", "--captions", fmt, "--save", str(audio)]
    code, out, err = run_cli(argv, cli_env, capsys)
    assert code == 0, err[-2000:]
    saved = tmp_path / f"talk.{fmt}"
    assert f"wrote captions to {saved}" in out
    text = saved.read_text()
    assert text.startswith("WEBVTT\n\n" if fmt == "vtt" else "1\n")
    cues = parsed_cues(text)
    assert [cue[2] for cue in cues] == ["Hello there.", "How are you today?"]
    assert cues[0][0] == 0.0
    decoded_s = check_audio(audio, "wav", printed_metadata(out))
    assert cues[-1][1] == pytest.approx(decoded_s, abs=0.05)


ITEM_RE = re.compile(r"^item (\d+): segment (\d+) chunk (\d+), (\d+\.\d\d) s \+ (\d+\.\d\d) s \((\d+) bytes\)$", re.M)
STREAM_TEXT = "Hello there. How are you today? Fine, thanks."


def test_stream_in_process_prints_each_item_and_saves_the_joined_wav(cli_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["--tiny", "--stream", "--text", STREAM_TEXT, "--captions", "vtt"], cli_env, capsys)
    assert code == 0, err[-2000:]
    items = ITEM_RE.findall(out)
    metadata = printed_metadata(out)
    assert [int(i[0]) for i in items] == list(range(metadata["stream_items"]))
    assert metadata["stream_items"] > 1 and metadata["format"] == "pcm"
    # Each item starts where the one before it ended; their pcm bytes are the stream's whole size.
    assert sum(int(i[5]) for i in items) == metadata["size_bytes"]
    ends = [float(i[3]) + float(i[4]) for i in items]
    assert [float(i[3]) for i in items[1:]] == pytest.approx(ends[:-1], abs=0.011)
    assert re.search(rf"COMPLETED in \d+\.\d s: {len(items)} stream items, 1\.52 s of audio", out)
    saved = tmp_path / "output.wav"  # pcm items, saved as one WAV
    assert f"wrote {saved.stat().st_size} bytes to output.wav" in out
    samples, rate = sf.read(saved, dtype="int16")
    assert (rate, len(samples) * 2) == (RATE, metadata["size_bytes"])
    assert len(samples) / RATE == metadata["duration_seconds"] == TINY_CHUNK_S
    cues = parsed_cues((tmp_path / "output.vtt").read_text())
    assert [c[2] for c in cues] == ["Hello there.", "How are you today?", "Fine, thanks."]
    assert cues[-1][1] == pytest.approx(len(samples) / RATE, abs=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.vtt", "output.wav"]


@pytest.mark.parametrize("fmt, suffix", [("pcm", ".pcm"), ("wav", ".wav")], ids=["raw-pcm", "wav-items"])
def test_stream_formats_save_one_file(cli_env, tmp_path, capsys, fmt, suffix):
    saved = tmp_path / f"stream{suffix}"
    argv = ["--tiny", "--stream", "--text", STREAM_TEXT, "--format", fmt, "--save", str(saved)]
    code, out, err = run_cli(argv, cli_env, capsys)
    assert code == 0, err[-2000:]
    metadata = printed_metadata(out)
    data = saved.read_bytes()
    if fmt == "pcm":
        assert len(data) == metadata["size_bytes"] == round(TINY_CHUNK_S * RATE) * 2
    else:
        samples, rate = sf.read(io.BytesIO(data), dtype="int16")
        assert (rate, len(samples)) == (RATE, round(TINY_CHUNK_S * RATE))


def test_stream_failed_job_exits_1_with_the_code(cli_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["--tiny", "--stream", "--text", "Hi.", "--voice", "nobody"], cli_env, capsys)
    assert code == 1
    assert err.splitlines()[-1].startswith("error: job local FAILED: invalid_input: unknown voice 'nobody'")
    assert list(tmp_path.iterdir()) == []


def pcm_item(index: int, samples: int, start_s: float, **extra: Any) -> dict[str, Any]:
    data = b"\x01\x00" * samples
    return {
        "index": index,
        "audio_base64": base64.b64encode(data).decode(),
        "format": "pcm",
        "sample_rate": RATE,
        "segment": 0,
        "chunk": 0,
        "start_seconds": start_s,
        "duration_seconds": samples / RATE,
        **extra,
    }


def test_deployed_endpoint_stream_through_the_runpod_client(fake_worker, tmp_path, capsys):
    meta = {**METADATA, "format": "pcm", "duration_seconds": 0.75, "stream_items": 2}
    first, last = pcm_item(0, 12000, 0.0), pcm_item(1, 6000, 0.5, metadata=meta)
    fake_worker.answer("/abc123/run", {"id": "job-s", "status": "IN_QUEUE"})
    fake_worker.answer(
        "/abc123/stream/job-s",
        {"status": "IN_PROGRESS", "stream": [{"output": first}]},
        {"status": "COMPLETED", "stream": [{"output": last}]},
        {"status": "COMPLETED", "stream": []},
    )
    out = tmp_path / "streamed.wav"
    code = client.main(["--endpoint-id", "abc123", "--stream", "--save", str(out)], env=endpoint_env(fake_worker))
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "item 0: segment 0 chunk 0, 0.00 s + 0.50 s (24000 bytes)\nitem 1: segment 0 chunk 0, 0.50 s + 0.25 s" in (
        printed
    )
    run, *polls = fake_worker.requests
    assert run["json"] == {"input": {**TEST_INPUT["input"], "stream": True}}
    assert [(p["method"], p["path"]) for p in polls] == [("GET", "/abc123/stream/job-s")] * 3
    samples, rate = sf.read(out, dtype="int16")
    assert (rate, len(samples), int(samples.max())) == (RATE, 18000, 1)
