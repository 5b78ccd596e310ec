"""Saved voices on a shared voice dir: create (reference and designed) -> speak -> list -> get -> delete, in one
worker and across two worker processes; names, ids, atomic writes, limits and read-only endpoints."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from audio.errors import InputError
from audio.serving.service import make_handler
from audio.voices.reference import prepare
from audio.voices.store import VoiceStore, check_name
from tests.conftest import ROOT, SPEECH_TEXT


def run(worker, job_input):
    return make_handler(worker)({"id": "voices", "input": job_input})


@pytest.fixture
def voice_env(tmp_path):
    return {"QWEN_TTS_VOICE_DIR": str(tmp_path / "voices")}


@pytest.fixture
def create_job(speech_wav):
    return {
        "action": "create_voice",
        "name": "Narrator 2",
        "ref_audio": base64.b64encode(speech_wav).decode(),
        "ref_text": SPEECH_TEXT,
        "language": "en",
    }


SPEAK = {"text": "Saved voices speak.", "seed": 9, "params": {"max_new_tokens": 4}}


def test_create_speak_list_get_delete_in_one_worker(make_worker, voice_env, create_job, tmp_path):
    worker = make_worker(voice_env)
    created = run(worker, create_job)
    voice_id = created["voice_id"]
    assert created["name"] == "Narrator 2" and created["source"] == "reference"
    assert created["ref_text"] == SPEECH_TEXT and created["language"] == "English"
    assert created["prompts"] == []  # built on first use
    first = run(worker, {**SPEAK, "model": "0.6B-Base", "voice": voice_id})
    assert first["metadata"]["voice_cache"] == "miss"
    assert run(worker, {"action": "get_voice", "voice_id": voice_id})["prompts"] == ["0.6B-Base.icl"]
    # any model: the saved voice runs on the Base model of the requested size
    on_custom = run(worker, {**SPEAK, "model": "0.6B-CustomVoice", "voice": voice_id})
    assert on_custom["metadata"]["model"] == "0.6B-Base"
    assert on_custom["metadata"]["voice_cache"] == "hit"
    assert on_custom["audio_base64"] == first["audio_base64"]
    listed = run(worker, {"action": "list_voices"})["voices"]
    assert [v["voice_id"] for v in listed] == [voice_id]
    files = sorted(p.relative_to(tmp_path / "voices").as_posix() for p in (tmp_path / "voices").rglob("*"))
    assert f"{voice_id}/voice.json" in files and f"{voice_id}/reference.wav" in files
    assert f"{voice_id}/prompts/0.6B-Base.icl.safetensors" in files and not any(".tmp-" in f for f in files)
    assert run(worker, {"action": "delete_voice", "voice_id": voice_id}) == {
        "deleted": True,
        "voice_id": voice_id,
        "name": "Narrator 2",
    }
    assert run(worker, {"action": "list_voices"}) == {"voices": []}
    gone = run(worker, {**SPEAK, "model": "0.6B-Base", "voice": voice_id})
    assert gone["error"] == {
        "code": "invalid_input",
        "message": f"voice {voice_id} does not exist (list_voices shows the saved ones)",
    }
    # the name is free again
    assert "voice_id" in run(worker, create_job)


def test_a_saved_voice_in_segments(make_worker, voice_env, create_job):
    worker = make_worker(voice_env)
    voice_id = run(worker, create_job)["voice_id"]
    result = run(
        worker,
        {
            "segments": [
                {"text": "Preset speaker.", "model": "0.6B-CustomVoice", "voice": "Ryan"},
                {"text": "Saved voice.", "model": "0.6B-Base", "voice": voice_id},
            ],
            "params": {"max_new_tokens": 3},
        },
    )
    assert result["metadata"]["model"] == "0.6B-CustomVoice, 0.6B-Base"


def test_create_voice_with_model_builds_its_prompt_now(make_worker, voice_env, create_job):
    worker = make_worker(voice_env)
    created = run(worker, {**create_job, "model": "1.7B-Base"})
    assert created["prompts"] == ["1.7B-Base.icl"]
    assert worker.prompts.builds == 1


def test_a_designed_voice_is_saved_as_a_clone_reference(make_worker, voice_env):
    worker = make_worker(voice_env)
    created = run(
        worker,
        {"action": "create_voice", "name": "Calm", "instruct": "A calm, low voice.", "sample_text": "Hello there, "
         "this is how I sound when I read.", "seed": 1, "params": {"max_new_tokens": 20}},
    )  # fmt: skip
    assert created["source"] == "design" and created["instruct"] == "A calm, low voice."
    assert created["ref_text"] == "Hello there, this is how I sound when I read."
    assert created["duration_seconds"] >= 1.0
    result = run(worker, {**SPEAK, "model": "1.7B-Base", "voice": created["voice_id"]})
    assert result["metadata"]["model"] == "1.7B-Base"


def test_a_designed_voice_needs_a_base_model(tmp_path):
    from scripts.build_tiny_checkpoint import build
    from tests.conftest import CACHE

    only_design = build(CACHE / "tiny-design-only", seed=0, names=["1.7B-VoiceDesign"])
    from audio.settings import Settings
    from audio.worker import Worker

    settings = Settings.from_env(
        {"QWEN_TTS_MODEL_DIR": str(only_design), "QWEN_TTS_VOICE_DIR": str(tmp_path), "HF_HOME": str(tmp_path)}
    )
    result = run(Worker(settings), {"action": "create_voice", "name": "X", "instruct": "A calm voice."})
    assert result["error"]["code"] == "model_unavailable"
    assert "need a Base model (1.7B-Base or 0.6B-Base)" in result["error"]["message"]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        pytest.param({"name": ""}, "name must be 1-100 characters", id="empty-name"),
        pytest.param({"name": "x" * 101}, "name must be 1-100 characters, got 101", id="long-name"),
        pytest.param({"name": "../etc"}, "must not contain path separators", id="path-name"),
        pytest.param({"name": "a\nb"}, "must not contain control characters", id="control-name"),
        pytest.param({"ref_text": None}, "needs ref_text", id="no-ref-text"),
        pytest.param({"instruct": "calm"}, "needs one of ref_audio", id="both-sources"),
        pytest.param({"model": "1.7B-CustomVoice"}, "must be a Base model", id="not-base"),
        pytest.param({"colour": "red"}, "unknown field(s): colour", id="unknown-field"),
    ],
)
def test_create_voice_refusals(make_worker, voice_env, create_job, job, message):
    request = {k: v for k, v in {**create_job, **job}.items() if v is not None}
    result = run(make_worker(voice_env), request)
    assert result["error"]["code"] == "invalid_input"
    assert message in result["error"]["message"]


@pytest.mark.parametrize(
    "voice_id",
    ["../../etc/passwd", "v_0123", "V_0123456789ABCDEF", "v_0123456789abcdef/../x"],
)
def test_bad_voice_ids_are_refused_without_touching_the_disk(make_worker, voice_env, voice_id):
    result = run(make_worker(voice_env), {"action": "get_voice", "voice_id": voice_id})
    assert result["error"]["code"] == "invalid_input"
    assert "is not a saved voice's id" in result["error"]["message"]


def test_a_missing_or_corrupt_voice_is_named(make_worker, voice_env, create_job, tmp_path):
    worker = make_worker(voice_env)
    voice_id = run(worker, create_job)["voice_id"]
    (tmp_path / "voices" / voice_id / "voice.json").write_text("{not json")
    result = run(worker, {**SPEAK, "model": "0.6B-Base", "voice": voice_id})
    assert result["error"] == {
        "code": "invalid_input",
        "message": f"voice {voice_id} is corrupt on the volume; delete it and create it again",
    }
    missing = run(worker, {**SPEAK, "model": "0.6B-Base", "voice": "v_0000000000000000"})
    assert "voice v_0000000000000000 does not exist" in missing["error"]["message"]


def test_names_are_unique_case_insensitively(make_worker, voice_env, create_job):
    worker = make_worker(voice_env)
    voice_id = run(worker, create_job)["voice_id"]
    again = run(worker, {**create_job, "name": "narrator 2"})
    assert again["error"]["message"] == f"a voice named 'narrator 2' already exists (voice_id {voice_id})"


def test_the_saved_voice_limit(make_worker, voice_env, create_job):
    worker = make_worker({**voice_env, "QWEN_TTS_MAX_SAVED_VOICES": "1"})
    run(worker, create_job)
    result = run(worker, {**create_job, "name": "Another"})
    assert "already has 1 saved voices (QWEN_TTS_MAX_SAVED_VOICES)" in result["error"]["message"]


def test_a_readonly_endpoint_refuses_create_and_delete_but_speaks(make_worker, voice_env, create_job):
    voice_id = run(make_worker(voice_env), create_job)["voice_id"]
    readonly = make_worker({**voice_env, "QWEN_TTS_VOICES_READONLY": "true"})
    for job in (create_job, {"action": "delete_voice", "voice_id": voice_id}):
        assert "read-only (QWEN_TTS_VOICES_READONLY)" in run(readonly, job)["error"]["message"]
    assert "audio_base64" in run(readonly, {**SPEAK, "model": "0.6B-Base", "voice": voice_id})
    assert run(readonly, {"action": "get_voice", "voice_id": voice_id})["prompts"] == []  # nothing written


def test_voice_and_ref_audio_together_are_refused(make_worker, voice_env, create_job):
    result = run(
        make_worker(voice_env),
        {**SPEAK, "model": "0.6B-Base", "voice": "v_0123456789abcdef", "ref_audio": create_job["ref_audio"]},
    )
    assert "give a saved voice (voice v_0123456789abcdef) or ref_audio, not both" in result["error"]["message"]


@pytest.mark.parametrize("name", ["Narrator 2", "Émile — voix grave", "声音 1", "x" * 100])
def test_free_text_names_are_fine(name):
    assert check_name(f"  {name} ") == name


# -- two processes ------------------------------------------------------------------------------------------
def in_process(env: dict, jobs: list[dict]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tests.voice_process"],
        input=json.dumps(jobs),
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_worker_processes_share_a_voice_dir(tiny_model_dir, tmp_path, create_job):
    env = {
        "QWEN_TTS_MODEL_DIR": str(tiny_model_dir),
        "QWEN_TTS_PRELOAD": "none",
        "HF_HOME": str(tmp_path / "hf"),
        "QWEN_TTS_VOICE_DIR": str(tmp_path / "voices"),
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "OMP_NUM_THREADS": "1",
    }
    design = {"action": "create_voice", "name": "Designed", "instruct": "A bright voice.", "seed": 2,
              "sample_text": "This is the sample I speak.", "params": {"max_new_tokens": 20}}  # fmt: skip
    a = in_process(env, [create_job, design])
    cloned, designed = a["results"]
    speak = [{**SPEAK, "model": "0.6B-Base", "voice": cloned["voice_id"]}]
    first = in_process(env, speak)
    assert first["results"][0]["metadata"]["voice_cache"] == "miss" and first["builds"] == 1
    b = in_process(
        env,
        [
            *speak,  # another process: the prompt comes from the volume, none is built
            {**SPEAK, "model": "1.7B-Base", "voice": designed["voice_id"]},
            {"action": "list_voices"},
            {"action": "get_voice", "voice_id": designed["voice_id"]},
            {"action": "delete_voice", "voice_id": cloned["voice_id"]},
            {"action": "list_voices"},
        ],
    )
    again, on_design, listed, got, deleted, after = b["results"]
    assert again["metadata"]["voice_cache"] == "hit"
    assert again["audio_sha256"] == first["results"][0]["audio_sha256"]  # the stored prompt conditions the same
    assert on_design["metadata"]["voice_cache"] == "miss" and b["builds"] == 1
    assert [v["name"] for v in listed["voices"]] == ["Narrator 2", "Designed"]
    assert got["source"] == "design" and got["prompts"] == ["1.7B-Base.icl"]
    assert deleted["deleted"] is True
    assert [v["name"] for v in after["voices"]] == ["Designed"]


def _create_same_name(root: str, index: int, queue) -> None:
    store = VoiceStore(root)
    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * (200 + index) * np.arange(2 * rate) / rate)
    try:
        voice = store.create("Same Name", prepare(tone, rate), source="reference", ref_text="x",
                             x_vector_only=False, language="English")  # fmt: skip
        queue.put(("ok", voice.voice_id))
    except InputError as exc:
        queue.put(("refused", exc.message))


def test_concurrent_creates_of_one_name_leave_exactly_one_whole_voice(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create_same_name, args=(str(tmp_path), i, queue)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = [queue.get(timeout=5) for _ in procs]
    winners = [v for kind, v in outcomes if kind == "ok"]
    assert len(winners) == 1
    assert all("a voice named 'Same Name'" in v for kind, v in outcomes if kind == "refused")
    store = VoiceStore(tmp_path)
    assert [v.voice_id for v in store.list()] == winners
    assert store.reference(winners[0], 16000).sample_rate == 16000
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert leftovers == []


@pytest.mark.parametrize(
    "again",
    ["Cafe\u0301", "CAFE\u0301", "caf\u00c9", " Caf\u00e9 "],
    ids=["decomposed", "decomposed-upper", "precomposed-upper", "padded"],
)
def test_names_are_one_name_whatever_their_unicode_normalization(make_worker, voice_env, create_job, again):
    worker = make_worker(voice_env)
    created = run(worker, {**create_job, "name": "Caf\u00e9"})
    assert created["name"] == "Caf\u00e9"
    result = run(worker, {**create_job, "name": again})
    as_stored = unicodedata.normalize("NFC", again.strip())
    assert result["error"]["message"] == f"a voice named {as_stored!r} already exists (voice_id {created['voice_id']})"


def test_a_decomposed_name_saved_before_normalization_still_blocks_its_precomposed_twin(
    make_worker, voice_env, create_job, tmp_path
):
    worker = make_worker(voice_env)
    created = run(worker, {**create_job, "name": "Caf\u00e9"})
    # as an older worker stored it: the name as sent (decomposed), its claim under that spelling's hash
    record_path = tmp_path / "voices" / created["voice_id"] / "voice.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "name": "Cafe\u0301"}))
    for claim in (tmp_path / "voices" / ".names").iterdir():
        claim.unlink()
    assert run(worker, {"action": "get_voice", "voice_id": created["voice_id"]})["name"] == "Cafe\u0301"
    result = run(worker, {**create_job, "name": "CAF\u00c9"})
    assert result["error"]["message"] == f"a voice named 'CAF\u00c9' already exists (voice_id {created['voice_id']})"
