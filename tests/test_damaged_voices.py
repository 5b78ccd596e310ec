"""Saved voices damaged on the volume (issue #23, class 4), repaired through the API: delete works on any voice id,
list_voices and get_voice show a damaged voice as damaged, a damaged prompt is rebuilt from a sound reference, and a
damaged reference is `invalid_input` naming the voice. Every job goes through `make_handler(worker)`; a fresh
worker on the same voice dir stands for another worker of the endpoint (no prompt in its memory)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import load_file, save_file

from audio.serving.service import make_handler
from tests.conftest import SPEECH_TEXT

SPEAK = {"text": "Saved voices speak.", "seed": 9, "model": "0.6B-Base", "params": {"max_new_tokens": 4}}


def run(worker, job_input):
    return make_handler(worker)({"id": "damaged", "input": job_input})


@pytest.fixture
def voice_env(tmp_path):
    return {"QWEN_TTS_VOICE_DIR": str(tmp_path / "voices")}


@pytest.fixture
def saved(make_worker, voice_env, speech_wav, tmp_path):
    """A voice with its 0.6B-Base prompt on the volume: (voice_id, its folder, the audio an intact voice speaks)."""
    created = run(
        make_worker(voice_env),
        {
            "action": "create_voice",
            "name": "Narrator",
            "ref_audio": base64.b64encode(speech_wav).decode(),
            "ref_text": SPEECH_TEXT,
            "model": "0.6B-Base",
        },
    )
    voice_id = created["voice_id"]
    intact = run(make_worker(voice_env), {**SPEAK, "voice": voice_id})
    assert intact["metadata"]["voice_cache"] == "hit"  # loaded from the volume
    return voice_id, tmp_path / "voices" / voice_id, intact["audio_base64"]


def _corrupt_message(voice_id: str, detail: str) -> str:
    return f"voice {voice_id} is corrupt on the volume ({detail}); delete it and create it again"


def test_a_voice_with_unreadable_metadata_is_listed_damaged_deleted_and_its_name_freed(make_worker, voice_env, saved):
    voice_id, folder, _ = saved
    (folder / "voice.json").write_text("{not json")
    worker = make_worker(voice_env)
    damaged = {"voice_id": voice_id, "name": None, "damaged": True, "problem": "its voice.json is unreadable"}
    assert run(worker, {"action": "list_voices"}) == {"voices": [damaged]}
    assert run(worker, {"action": "get_voice", "voice_id": voice_id}) == damaged
    assert run(worker, {"action": "delete_voice", "voice_id": voice_id}) == {
        "deleted": True,
        "voice_id": voice_id,
        "name": None,
    }
    assert run(worker, {"action": "list_voices"}) == {"voices": []}
    assert not folder.exists() and list((folder.parent / ".names").iterdir()) == []


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_samples(path: Path) -> None:
    samples, rate = sf.read(path, dtype="float32")
    samples[100] = np.nan
    sf.write(path, samples, rate, subtype="FLOAT")


@pytest.mark.parametrize(
    ("damage", "detail", "listed"),
    [
        pytest.param(_truncate, "its reference clip is truncated", True, id="truncated"),
        pytest.param(
            lambda p: p.write_bytes(p.read_bytes()[:30]),
            "its reference clip is missing or unreadable",
            True,
            id="header-cut",
        ),
        pytest.param(Path.unlink, "its reference clip is missing or unreadable", True, id="missing"),
        pytest.param(_nan_samples, "its reference clip holds samples that are not numbers", False, id="nan"),
    ],
)
def test_a_damaged_reference_is_invalid_input_naming_the_voice(make_worker, voice_env, saved, damage, detail, listed):
    voice_id, folder, _ = saved
    damage(folder / "reference.wav")
    worker = make_worker(voice_env)
    result = run(worker, {**SPEAK, "voice": voice_id})
    assert result == {"error": {"code": "invalid_input", "message": _corrupt_message(voice_id, detail)}}
    # the same with the stored prompt damaged too: nothing to rebuild it from
    for prompt in (folder / "prompts").glob("*.safetensors"):
        _truncate(prompt)
    assert run(make_worker(voice_env), {**SPEAK, "voice": voice_id}) == result
    voices = run(worker, {"action": "list_voices"})["voices"]
    if listed:  # seen from the file's header (a listing reads no samples)
        assert voices == [{"voice_id": voice_id, "name": "Narrator", "damaged": True, "problem": detail}]
    assert run(worker, {"action": "delete_voice", "voice_id": voice_id})["deleted"] is True


def _arrays(folder: Path, change) -> None:
    (path,) = (folder / "prompts").glob("*.safetensors")
    arrays = load_file(str(path))
    change(arrays)
    save_file(arrays, str(path))


def _meta(folder: Path, change) -> None:
    (path,) = (folder / "prompts").glob("*.json")
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(change(meta)))


PROMPT_DAMAGE = {
    "truncated": lambda f: _truncate(next((f / "prompts").glob("*.safetensors"))),
    "zeros": lambda f: next((f / "prompts").glob("*.safetensors")).write_bytes(bytes(100)),
    "json-not-an-object": lambda f: _meta(f, lambda m: [m]),
    "json-prompt-not-an-object": lambda f: _meta(f, lambda m: {**m, "prompt": 5}),
    "json-unknown-dtype": lambda f: _meta(f, lambda m: {**m, "prompt": {**m["prompt"], "embedding_dtype": "int8"}}),
    "codes-outside-the-codebook": lambda f: _arrays(f, lambda a: a.update(ref_code=a["ref_code"] * 0 + 99999)),
    "codes-negative": lambda f: _arrays(f, lambda a: a.update(ref_code=a["ref_code"] * 0 - 1)),
    "codes-wrong-shape": lambda f: _arrays(f, lambda a: a.update(ref_code=a["ref_code"][:, :3])),
    "embedding-wrong-shape": lambda f: _arrays(f, lambda a: a.update(ref_spk_embedding=a["ref_spk_embedding"][:3])),
    "embedding-nan": lambda f: _arrays(f, lambda a: a.update(ref_spk_embedding=a["ref_spk_embedding"] * np.nan)),
    "codes-missing": lambda f: _arrays(f, lambda a: a.pop("ref_code")),
}


@pytest.mark.parametrize("damage", list(PROMPT_DAMAGE))
def test_a_damaged_prompt_is_rebuilt_from_a_sound_reference(make_worker, voice_env, saved, damage):
    voice_id, folder, intact_audio = saved
    PROMPT_DAMAGE[damage](folder)
    rebuilt = run(make_worker(voice_env), {**SPEAK, "voice": voice_id})
    assert rebuilt["metadata"]["voice_cache"] == "miss"
    assert rebuilt["audio_base64"] == intact_audio
    again = run(make_worker(voice_env), {**SPEAK, "voice": voice_id})  # the rebuilt prompt was stored
    assert again["metadata"]["voice_cache"] == "hit" and again["audio_base64"] == intact_audio


def test_delete_of_a_voice_that_does_not_exist_still_says_so(make_worker, voice_env):
    result = run(make_worker(voice_env), {"action": "delete_voice", "voice_id": "v_0000000000000000"})
    assert result["error"]["message"] == "voice v_0000000000000000 does not exist (list_voices shows the saved ones)"
