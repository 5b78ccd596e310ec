"""Finding, loading and caching the Qwen3-TTS models, each behind the configured engine (`audio/engine/`).

The model boundary: this module and `audio/engine/` are the only ones that import torch and qwen_tts, both
lazily, so validation, info actions and tests of pure code never pay for them.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audio.catalog import MODELS, TOKENIZER_DIR_NAME, ModelVariant
from audio.errors import ModelError
from audio.settings import Settings
from audio.text.splitter import CJK_WEIGHT

if TYPE_CHECKING:
    from audio.engine.base import QwenSpeech

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype: str
    attention: str


def _latest_snapshot(settings: Settings, dir_name: str) -> Path | None:
    """The newest complete snapshot of `Qwen/<dir_name>` in the Hugging Face caches, if any."""
    for hub in settings.hf_cache_dirs:
        snapshots = hub / f"models--Qwen--{dir_name}" / "snapshots"
        if not snapshots.is_dir():
            continue
        candidates = [p for p in snapshots.iterdir() if (p / "config.json").is_file()]
        if candidates:
            return max(candidates, key=lambda p: p.stat().st_mtime)
    return None


def find_model_path(variant: ModelVariant, settings: Settings) -> Path | None:
    """The directory holding a variant's weights: the model dir first, then Hugging Face cache snapshots."""
    direct = settings.model_dir / variant.dir_name
    if (direct / "config.json").is_file():
        return direct
    return _latest_snapshot(settings, variant.dir_name)


def find_tokenizer_path(model_path: Path, settings: Settings) -> Path | None:
    """The speech tokenizer: inside the model dir, else a sibling `Qwen3-TTS-Tokenizer-12Hz/` download."""
    if (model_path / "speech_tokenizer" / "config.json").is_file():
        return model_path / "speech_tokenizer"
    for base in (model_path.parent, settings.model_dir):
        if (base / TOKENIZER_DIR_NAME / "config.json").is_file():
            return base / TOKENIZER_DIR_NAME
    return _latest_snapshot(settings, TOKENIZER_DIR_NAME)


def download_hint(variant: ModelVariant, settings: Settings) -> str:
    return (
        f"huggingface-cli download {variant.repo_id} --local-dir {settings.model_dir}/{variant.dir_name} "
        f"(or: python scripts/download_models.py {variant.name} --force)"
    )


def pick_runtime(settings: Settings) -> Runtime:
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"QWEN_TTS_DEVICE={settings.device} but no CUDA device is visible to this worker")
    dtype = settings.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ModelError(f"QWEN_TTS_DTYPE={settings.dtype} is not one of auto, bfloat16, float16, float32")
    return Runtime(
        device=device,
        dtype=dtype,
        attention=choose_attention(device, dtype, device.startswith("cuda") and _flash_attn_installed()),
    )


def choose_attention(device: str, dtype: str, flash_attn_installed: bool) -> str:
    """flash_attention_2 runs only on CUDA in half precision (it refuses fp32); everything else uses sdpa."""
    if flash_attn_installed and device.startswith("cuda") and dtype in ("bfloat16", "float16"):
        return "flash_attention_2"
    return "sdpa"


def _flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:  # absent, or built against another torch/CUDA
        return False
    return True


class ModelCache:
    """Per-worker cache of loaded models: at most `max_loaded_models`, least recently used evicted first."""

    def __init__(
        self,
        settings: Settings,
        *,
        download: Callable[[str], Any] | None = None,
        load: Callable[[Path, Path, Runtime], Any] | None = None,
    ):
        self.settings = settings
        # Fetches a repo into the Hugging Face cache (HF_HOME) when QWEN_TTS_AUTO_DOWNLOAD is on.
        self._download = download or _snapshot_download
        # Builds the qwen_tts model from its files; tests wrap it to inject load failures.
        self._load_tts = load or _load_qwen_tts
        self._lock = threading.Lock()
        self._models: OrderedDict[str, QwenSpeech] = OrderedDict()
        self._loads: Counter[str] = Counter()  # loads per model since the worker started
        self._runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = pick_runtime(self.settings)
            log.info(
                "runtime: device=%s dtype=%s attention=%s",
                self._runtime.device,
                self._runtime.dtype,
                self._runtime.attention,
            )
        return self._runtime

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def loads(self) -> dict[str, int]:
        with self._lock:
            return dict(self._loads)

    def get(self, name: str) -> QwenSpeech:
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                self._models.move_to_end(name)
                return model
            while len(self._models) >= self.settings.max_loaded_models:
                # No local may keep the evicted model alive: its memory is freed before the next one loads.
                evicted = next(iter(self._models))
                del self._models[evicted]
                log.info("evicting model %s", evicted)
                self._free_memory()
            model = self._load(MODELS[name])
            self._models[name] = model
            self._loads[name] += 1
            return model

    def _free_memory(self) -> None:
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, variant: ModelVariant) -> QwenSpeech:
        path = find_model_path(variant, self.settings)
        if path is None and self.settings.auto_download:
            log.info("downloading %s from the Hugging Face hub", variant.repo_id)
            try:
                self._download(variant.repo_id)
            except Exception as exc:  # hub, network and disk errors all mean the same to the caller
                raise ModelError(
                    f"model {variant.name} is not on this worker and downloading {variant.repo_id} failed "
                    f"({type(exc).__name__}). Put it on the network volume: {download_hint(variant, self.settings)}"
                ) from None
            path = find_model_path(variant, self.settings)
        if path is None:
            raise ModelError(
                f"model {variant.name} is not on this worker: looked in {self.settings.model_dir} and the "
                f"Hugging Face caches. Download it to the network volume: {download_hint(variant, self.settings)}"
            )
        tokenizer = find_tokenizer_path(path, self.settings)
        if tokenizer is None:
            raise ModelError(
                f"model {variant.name} has no speech tokenizer (speech_tokenizer/ or a sibling "
                f"{TOKENIZER_DIR_NAME}/). Download it again: {download_hint(variant, self.settings)}"
            )
        runtime = self.runtime
        started = time.perf_counter()
        try:
            tts = self._load_tts(path, tokenizer, runtime)
        except ImportError as exc:
            # A broken install, not broken files: downloading again would not help.
            log.exception("loading %s failed: a module of the inference stack is missing", variant.name)
            missing = f" ({exc.name})" if exc.name else ""
            raise ModelError(
                f"model {variant.name} could not be loaded: a module of the inference stack could not be "
                f"imported{missing} (ImportError). The worker image is missing a dependency; the model files "
                "are not the problem."
            ) from None
        except Exception as exc:  # the package raises many kinds; the caller needs one code
            log.exception("loading %s failed", variant.name)
            if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
                raise ModelError(
                    f"model {variant.name} could not be loaded: the GPU ran out of memory (OutOfMemoryError). "
                    "Keep fewer models loaded (QWEN_TTS_MAX_LOADED_MODELS, QWEN_TTS_PRELOAD) or use a GPU with "
                    "more memory."
                ) from None
            raise ModelError(
                f"model {variant.name} could not be loaded ({type(exc).__name__}); its files may be incomplete. "
                f"Download it again: {download_hint(variant, self.settings)}"
            ) from None
        model = make_engine(self.settings, variant, tts, runtime)
        log.info("loaded %s (%s engine) in %.1fs", variant.name, model.engine, time.perf_counter() - started)
        return model


def make_engine(settings: Settings, variant: ModelVariant, tts: Any, runtime: Runtime) -> QwenSpeech:
    """The configured engine on a loaded qwen_tts model; `fast` falls back to `reference` where it can't run."""
    from audio.engine.reference import ReferenceEngine

    if settings.engine == "reference":
        return ReferenceEngine(variant, tts, runtime)
    from audio.engine.fast import FastEngine
    from audio.engine.prompts import PINNED_QWEN_TTS

    installed = versions()["qwen-tts"]
    if installed != PINNED_QWEN_TTS:
        log.warning(
            "the fast engine is written against qwen-tts %s, found %s: using the reference engine",
            PINNED_QWEN_TTS,
            installed,
        )
        return ReferenceEngine(variant, tts, runtime)
    graphs = settings.cuda_graphs == "auto" and runtime.device.startswith("cuda")
    # The longest audio a full chunk's budget allows (at CJK weight): what CUDA graphs' static cache is sized for.
    # Longer calls (numbers read aloud weigh more still, or a large params.max_new_tokens) run eagerly.
    longest_s = settings.max_s_per_char * CJK_WEIGHT * settings.chunk_max_chars + settings.duration_slack_s
    try:
        return FastEngine(
            variant, tts, runtime, cuda_graphs=graphs, max_batch=settings.max_batch, graph_longest_s=longest_s
        )
    except ValueError as exc:  # a checkpoint layout the fast loop doesn't implement (e.g. sliding windows)
        log.warning("the fast engine can't run %s (%s): using the reference engine", variant.name, exc)
        return ReferenceEngine(variant, tts, runtime)


def _load_qwen_tts(path: Path, tokenizer: Path, runtime: Runtime, *, scratch: Path | None = None) -> Any:
    import torch
    from qwen_tts import Qwen3TTSModel

    dtype = getattr(torch, runtime.dtype)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": runtime.attention,
        "device_map": runtime.device,
    }
    if tokenizer.parent == path:
        return Qwen3TTSModel.from_pretrained(str(path), **kwargs)
    # A model dir without speech_tokenizer/: load the talker, then the sibling tokenizer, without writing to
    # the (possibly read-only) volume. qwen_tts insists on speech_tokenizer/config.json, so give it a view of
    # symlinks in a temporary dir (under `scratch`, else the system's), removed once the weights are in memory.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qwen-tts-view-", dir=scratch) as tmp:
        view = Path(tmp)
        for item in path.iterdir():
            (view / item.name).symlink_to(item)
        (view / "speech_tokenizer").symlink_to(tokenizer)
        return Qwen3TTSModel.from_pretrained(str(view), **kwargs)


def _snapshot_download(repo_id: str) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("qwen-tts", "torch", "transformers", "runpod"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out
