#!/usr/bin/env python3
"""Download Qwen3-TTS models from the Hugging Face Hub into the layout the worker loads from.

Each model goes to `<model-dir>/Qwen3-TTS-12Hz-<name>/` (its speech tokenizer is inside, in `speech_tokenizer/`).
A model whose files are already there is skipped; `--force` asks the Hub again, which fetches only missing or
changed files. `HF_TOKEN` is used when set (the Qwen repos are public, so it is not needed).

    python scripts/download_models.py                          # QWEN_TTS_DEFAULT_MODEL, else 1.7B-CustomVoice
    python scripts/download_models.py 0.6B-Base 1.7B-VoiceDesign --model-dir /runpod-volume/models
    python scripts/download_models.py Qwen/Qwen3-TTS-12Hz-1.7B-Base
    python scripts/download_models.py --all

The model dir defaults to QWEN_TTS_MODEL_DIR, else /runpod-volume/models (the network volume on RunPod).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from huggingface_hub import snapshot_download  # noqa: E402

from audio.catalog import DEFAULT_MODEL, MODELS, ModelVariant, find_model  # noqa: E402

# The same default as audio.settings.DEFAULT_MODEL_DIR (a test keeps them equal). Not imported from there so
# this script needs only the catalog: the Dockerfile runs it before the rest of the worker code is copied.
DEFAULT_MODEL_DIR = "/runpod-volume/models"

Download = Callable[..., object]


class UnknownModelError(ValueError):
    """A name that is neither a short model name nor a full `Qwen/...` id."""


class DownloadError(RuntimeError):
    """The Hub could not be reached, or refused the download."""


def is_present(path: Path) -> bool:
    """Whether a model dir holds what the worker loads: config, weights and the speech tokenizer."""
    has_weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    return (path / "config.json").is_file() and has_weights and (path / "speech_tokenizer" / "config.json").is_file()


def resolve(names: Iterable[str]) -> list[ModelVariant]:
    """The variants for short names or full ids, in order, without duplicates; all checked before any download."""
    variants: list[ModelVariant] = []
    unknown: list[str] = []
    for name in names:
        variant = find_model(name)
        if variant is None:
            unknown.append(name)
        elif variant not in variants:
            variants.append(variant)
    if unknown:
        raise UnknownModelError(
            f"unknown model(s): {', '.join(unknown)}. Valid models: {', '.join(MODELS)} "
            "(or their full ids, e.g. Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice)"
        )
    return variants


def download_models(
    names: Iterable[str],
    model_dir: Path | str,
    download: Download = snapshot_download,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Download each named model to `model_dir/<dir_name>`, skipping ones already present; returns their dirs.

    `download` is called as `download(repo_id=..., local_dir=...)` (huggingface_hub's `snapshot_download`).
    Raises UnknownModelError before downloading anything, and DownloadError when the Hub fails.
    """
    variants = resolve(names)
    model_dir = Path(model_dir)
    paths = []
    for variant in variants:
        dest = model_dir / variant.dir_name
        paths.append(dest)
        if not force and is_present(dest):
            log(f"{variant.name}: already in {dest}, skipping")
            continue
        log(f"{variant.name}: downloading {variant.repo_id} to {dest} ...")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            download(repo_id=variant.repo_id, local_dir=str(dest))
        except OSError as exc:  # requests' and huggingface_hub's errors (offline, 404, 401) are OSErrors too
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise DownloadError(
                f"could not download {variant.repo_id} to {dest} ({type(exc).__name__}: {first_line}). "
                "Check the network (the Hugging Face Hub must be reachable), HF_TOKEN, and free disk space."
            ) from None
        if not is_present(dest):
            raise DownloadError(
                f"{variant.repo_id} downloaded to {dest} but config.json, the weights or "
                "speech_tokenizer/config.json are missing: run again with --force"
            )
        log(f"{variant.name}: ready in {dest}")
    return paths


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"Models: {', '.join(MODELS)}",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="short name or full Qwen/... id")
    parser.add_argument("--all", action="store_true", help="download all five models")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(env.get("QWEN_TTS_MODEL_DIR") or DEFAULT_MODEL_DIR),
        help="where the model dirs go (default: QWEN_TTS_MODEL_DIR, else %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="ask the Hub even for models already present")
    args = parser.parse_args(argv)
    if args.all and args.names:
        parser.error("give model names or --all, not both")
    return args


def main(
    argv: list[str] | None = None, *, download: Download = snapshot_download, env: Mapping[str, str] | None = None
) -> int:
    env = os.environ if env is None else env
    args = parse_args(argv, env)
    default_names = [env.get("QWEN_TTS_DEFAULT_MODEL") or DEFAULT_MODEL]
    names = list(MODELS) if args.all else args.names or default_names
    try:
        download_models(names, args.model_dir, download, force=args.force)
    except UnknownModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run again to resume the download", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
