"""The one place model calls are entered, whatever the number of concurrent jobs (QWEN_TTS_CONCURRENCY).

qwen_tts keeps per-call state on its modules and the reference engine seeds torch's global RNG, so calls on one
model never overlap: each model name has a lock. With the fast engine, `generate` calls that wait on the same
model at the same moment (chunks of concurrent jobs) run as one batch (`FastEngine.generate_many`, at most
`max_rows` chunks): the first waiter to take the lock runs everything queued, the others wake with their own
results. A chunk's audio is the same whatever it was batched with (per-row seeds, sampling and decoding).
`stream` holds the lock for its whole iteration; `clone_prompt` takes it too. Everything else passes through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from audio.speech import GenerateCall


@dataclass
class _Waiting:
    call: GenerateCall
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Any] | None = None
    error: BaseException | None = None


@dataclass
class _ModelQueue:
    """What concurrent jobs share per model name: the lock and the calls waiting for it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    guard: threading.Lock = field(default_factory=threading.Lock)
    waiting: list[_Waiting] = field(default_factory=list)


class GatedModel:
    """An engine object whose calls go through its model name's queue; other attributes pass through."""

    def __init__(self, model: Any, queue: _ModelQueue, max_rows: int):
        self._model = model
        self._queue = queue
        self._max_rows = max_rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, requests: Sequence[Any], **kwargs: Any) -> list[Any]:
        # Batch only where the engine itself can (not a test wrapper that merely delegates attributes).
        if not callable(getattr(type(self._model), "generate_many", None)):
            with self._queue.lock:
                return self._model.generate(requests, **kwargs)
        me = _Waiting(GenerateCall(list(requests), **kwargs))
        with self._queue.guard:
            self._queue.waiting.append(me)
        while not me.done.is_set():
            with self._queue.lock:
                if not me.done.is_set():
                    self._run(self._take())
        if me.error is not None:
            raise me.error
        return me.result

    def _take(self) -> list[_Waiting]:
        with self._queue.guard:
            taken, rows = [], 0
            waiting = self._queue.waiting
            while waiting and (not taken or rows + len(waiting[0].call.requests) <= self._max_rows):
                taken.append(waiting.pop(0))
                rows += len(taken[-1].call.requests)
            return taken

    def _run(self, batch: list[_Waiting]) -> None:
        try:
            results = self._model.generate_many([w.call for w in batch])
        except BaseException as exc:
            if len(batch) > 1:  # one call's failure (bad prompt input, ...) is that call's alone: rerun each
                for waiting in batch:
                    self._run([waiting])
                return
            batch[0].error = exc
            batch[0].done.set()
            return
        for waiting, result in zip(batch, results, strict=True):
            waiting.result = result
            waiting.done.set()

    def clone_prompt(self, *args: Any, **kwargs: Any) -> Any:
        with self._queue.lock:
            return self._model.clone_prompt(*args, **kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._queue.lock:
            yield from self._model.stream(*args, **kwargs)


def gated(get_model: Callable[[str], Any], *, max_rows: int) -> Callable[[str], Any]:
    """`get_model` whose models serialise their calls per model name, batching concurrent fast-engine calls."""
    queues: dict[str, _ModelQueue] = {}
    guard = threading.Lock()

    def get(name: str) -> Any:
        with guard:
            queue = queues.setdefault(name, _ModelQueue())
        return GatedModel(get_model(name), queue, max_rows)

    get.queues = queues  # type: ignore[attr-defined]  # for tests: hold a model's lock, see who waits
    return get
