#!/usr/bin/env python3
"""Synthesise one text to an audio file through the worker's own handler, the way a RunPod job would.

    python scripts/speak.py "Hello from Qwen3-TTS." --out hello.wav [--model 0.6B-CustomVoice] [--voice Ryan]

Uses the real weights when they are in QWEN_TTS_MODEL_DIR (default ./models) or can be downloaded from the
Hugging Face hub; otherwise it says so loudly and uses the tiny random checkpoint, whose "speech" is noise.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio.catalog import MODELS, find_model  # noqa: E402
from audio.model_loader import find_model_path  # noqa: E402
from audio.settings import DEFAULT_MODEL_DIR, Settings  # noqa: E402

TINY_DIR = ROOT / ".cache" / "tiny-models"
# Random weights never end on their own: cap every chunk below its text-derived budget (>= 25 frames).
TINY_MAX_NEW_TOKENS = 20


def real_weights(model: str, env: Mapping[str, str], download: Callable[..., object] | None = None) -> Path | None:
    """The real model's directory: already present, or downloaded now (with `download`, default the Hugging
    Face hub's snapshot_download); None when neither works."""
    settings = Settings.from_env(env)
    variant = MODELS[model]
    found = find_model_path(variant, settings)
    if found is not None and not (found.parent / "tiny-checkpoint.json").exists():
        return settings.model_dir
    from scripts.download_models import DownloadError, download_models

    print(f"downloading {variant.repo_id} to {settings.model_dir} ...", file=sys.stderr)
    try:
        log = lambda message: print(message, file=sys.stderr)  # noqa: E731 - stdout carries the result
        download_models([model], settings.model_dir, *([download] if download else []), log=log)
    except DownloadError as exc:
        print(f"download failed: {exc}", file=sys.stderr)
        return None
    return settings.model_dir if find_model_path(variant, settings) else None


def model_dir_for(
    models: Iterable[str],
    env: Mapping[str, str],
    *,
    tiny: bool = False,
    download: Callable[..., object] | None = None,
) -> tuple[Path, bool]:
    """(directory to load `models` from, whether it is the tiny checkpoint): the real weights when every model
    is present or can be downloaded, else, said loudly on stderr, the tiny random checkpoint."""
    models = list(dict.fromkeys(models))
    missing = models if tiny else [m for m in models if real_weights(m, env, download) is None]
    if not missing:
        return Settings.from_env(env).model_dir, False
    from scripts.build_tiny_checkpoint import build

    banner = "!" * 100
    print(
        f"{banner}\n!! REAL WEIGHTS UNAVAILABLE: using the TINY RANDOM checkpoint. "
        "The output is NOISE, not speech.\n"
        f"!! Put the real model in {env.get('QWEN_TTS_MODEL_DIR') or DEFAULT_MODEL_DIR} "
        f"(python scripts/download_models.py {' '.join(missing)}) for real audio.\n{banner}",
        file=sys.stderr,
    )
    return build(TINY_DIR), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", nargs="?", default="Hello from Qwen3-TTS, running as a RunPod worker.")
    parser.add_argument("--out", type=Path, default=Path("hello.wav"))
    parser.add_argument("--model", default="0.6B-CustomVoice")
    parser.add_argument("--voice", default="Ryan")
    parser.add_argument("--language", default="Auto")
    parser.add_argument("--format", default=None, help="output format (default: from --out's extension)")
    parser.add_argument("--tiny", action="store_true", help="skip the real weights, use the tiny checkpoint")
    args = parser.parse_args(argv)

    variant = find_model(args.model)
    if variant is None:
        parser.error(f"unknown model {args.model!r}; choose from {', '.join(MODELS)}")
    job: dict = {"text": args.text, "model": variant.name, "language": args.language}
    if variant.kind == "custom_voice":
        job["voice"] = args.voice
    elif variant.kind == "voice_design":
        job["instruct"] = "A clear, friendly narrator."
    else:
        parser.error("Base (clone) models need reference audio: use the worker's job input for those")
    env = dict(os.environ)
    env.setdefault("QWEN_TTS_MODEL_DIR", str(ROOT / "models"))
    model_dir, tiny = model_dir_for([variant.name], env, tiny=args.tiny)
    if tiny:
        job["params"] = {"max_new_tokens": TINY_MAX_NEW_TOKENS}
    env.update(QWEN_TTS_MODEL_DIR=str(model_dir), QWEN_TTS_PRELOAD="none", QWEN_TTS_DEFAULT_MODEL=variant.name)
    job["output_format"] = args.format or (args.out.suffix.lstrip(".").lower() or "wav").replace("ogg", "opus")

    from audio.serving.service import configure_logging
    from handler import build as build_handler

    configure_logging(env)
    _, handle = build_handler(env)
    result = handle({"id": "speak", "input": job})
    if "error" in result:
        print(f"error: {result['error']['code']}: {result['error']['message']}", file=sys.stderr)
        return 1
    args.out.write_bytes(base64.b64decode(result["audio_base64"]))
    print(json.dumps({"out": str(args.out), **result["metadata"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
