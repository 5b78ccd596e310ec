"""One model call at a time per model, whatever the number of concurrent jobs (QWEN_TTS_CONCURRENCY).

qwen_tts keeps per-call state on its modules and the reference engine seeds torch's global RNG, so calls on one
model must not overlap. `GatedModel` wraps an engine object: `generate`, `stream` (for the whole iteration) and
`clone_prompt` hold the model's lock; everything else (sample_rate, capabilities, ...) passes through. Jobs
interleave batch by batch: each batch is one call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any


class GatedModel:
    def __init__(self, model: Any, lock: threading.Lock):
        self._model = model
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._model.generate(*args, **kwargs)

    def clone_prompt(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._model.clone_prompt(*args, **kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._lock:
            yield from self._model.stream(*args, **kwargs)


def gated(get_model: Callable[[str], Any]) -> Callable[[str], Any]:
    """`get_model` whose models serialise their calls (one lock per model name)."""
    locks: dict[str, threading.Lock] = {}
    guard = threading.Lock()

    def get(name: str) -> Any:
        with guard:
            lock = locks.setdefault(name, threading.Lock())
        return GatedModel(get_model(name), lock)

    return get
