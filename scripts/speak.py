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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio.catalog import MODELS, find_model  # noqa: E402
from audio.model_loader import find_model_path  # noqa: E402
from audio.settings import Settings  # noqa: E402

TINY_DIR = ROOT / ".cache" / "tiny-models"


def real_weights(model: str, env: dict[str, str]) -> Path | None:
    """The real model's directory: already present, or downloaded now; None when neither works."""
    settings = Settings.from_env(env)
    variant = MODELS[model]
    found = find_model_path(variant, settings)
    if found is not None and not (found.parent / "tiny-checkpoint.json").exists():
        return settings.model_dir
    from scripts.download_models import DownloadError, download_models

    print(f"downloading {variant.repo_id} to {settings.model_dir} ...", file=sys.stderr)
    try:
        download_models([model], settings.model_dir)
    except DownloadError as exc:
        print(f"download failed: {exc}", file=sys.stderr)
        return None
    return settings.model_dir if find_model_path(variant, settings) else None


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
    env = dict(os.environ)
    env.setdefault("QWEN_TTS_MODEL_DIR", str(ROOT / "models"))
    model_dir = None if args.tiny else real_weights(variant.name, env)
    job: dict = {"text": args.text, "model": variant.name, "language": args.language}
    if variant.kind == "custom_voice":
        job["voice"] = args.voice
    elif variant.kind == "voice_design":
        job["instruct"] = "A clear, friendly narrator."
    else:
        parser.error("Base (clone) models need reference audio: use the worker's job input for those")
    if model_dir is None:
        from scripts.build_tiny_checkpoint import build

        banner = "!" * 100
        print(
            f"{banner}\n!! REAL WEIGHTS UNAVAILABLE: using the TINY RANDOM checkpoint. "
            "The output is NOISE, not speech.\n"
            f"!! Put the real model in {env['QWEN_TTS_MODEL_DIR']} (python scripts/download_models.py "
            f"{variant.name}) for real audio.\n{banner}",
            file=sys.stderr,
        )
        model_dir = build(TINY_DIR)
        # Random weights never end on their own: cap every chunk below its text-derived budget (>= 25 frames).
        job["params"] = {"max_new_tokens": 20}
    env.update(QWEN_TTS_MODEL_DIR=str(model_dir), QWEN_TTS_PRELOAD="none", QWEN_TTS_DEFAULT_MODEL=variant.name)
    job["output_format"] = args.format or (args.out.suffix.lstrip(".").lower() or "wav").replace("ogg", "opus")

    from handler import build as build_handler
    from handler import configure_logging

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
