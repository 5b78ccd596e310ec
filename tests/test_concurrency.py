"""Concurrent jobs on one worker: the async handler runs jobs together on threads, model calls serialised per
model (audio/model_gate.py); two jobs never mix audio, seeds or settings."""

from __future__ import annotations

import asyncio
import base64

JOBS = [
    {
        "text": "First job speaks here. It has two sentences.",
        "voice": "Ryan",
        "seed": 1,
        "params": {"max_new_tokens": 9},
    },
    {"text": "The second job is another voice.", "voice": "Vivian", "seed": 2, "params": {"max_new_tokens": 7}},
]


def test_two_concurrent_jobs_each_match_their_solo_run(make_worker):
    from handler import make_async_handler

    worker = make_worker({"QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice", "QWEN_TTS_CHUNK_TARGET_CHARS": "20"})
    handle = make_async_handler(worker)
    solo = [asyncio.run(handle({"id": f"s{i}", "input": job})) for i, job in enumerate(JOBS)]

    async def together():
        return await asyncio.gather(*(handle({"id": f"c{i}", "input": job}) for i, job in enumerate(JOBS)))

    both = asyncio.run(together())
    for alone, beside in zip(solo, both, strict=True):
        assert base64.b64decode(alone["audio_base64"]) == base64.b64decode(beside["audio_base64"])
        assert alone["metadata"]["seed"] == beside["metadata"]["seed"]
    assert solo[0]["audio_base64"] != solo[1]["audio_base64"]


def test_module_handler_is_awaitable_from_fresh_event_loops(monkeypatch, tiny_model_dir):
    import handler
    from audio.serving import service

    monkeypatch.setenv("QWEN_TTS_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("QWEN_TTS_PRELOAD", "none")
    monkeypatch.setenv("QWEN_TTS_DEFAULT_MODEL", "0.6B-CustomVoice")
    monkeypatch.setattr(service, "_process", None)  # this process's worker, built anew from this environment
    job = {"id": "j", "input": {"text": "Hi.", "params": {"max_new_tokens": 3}, "seed": 1}}
    first = asyncio.run(handler.handler(job))
    second = asyncio.run(handler.handler(job))  # another loop, the same worker
    assert first["audio_base64"] == second["audio_base64"]


def test_concurrent_jobs_waiting_on_one_model_run_as_one_batch(make_worker, model_cache):
    """Chunks of jobs that wait on the same model at the same moment go into one fast-engine batch, each job's
    audio the same as alone (per-row voices, sampling and seeds)."""
    import threading
    import time

    from audio.serving.service import make_handler

    worker = make_worker({"QWEN_TTS_DEFAULT_MODEL": "0.6B-CustomVoice"})
    handle = make_handler(worker)
    loop = model_cache.get("0.6B-CustomVoice").loop
    batches = []
    real_run = loop.run

    def run(prompts, *args, **kwargs):
        batches.append(len(prompts))
        return real_run(prompts, *args, **kwargs)

    jobs = [{**JOBS[0], "text": "First job speaks here."}, JOBS[1]]  # one chunk each
    solo = [handle({"id": f"s{i}", "input": job}) for i, job in enumerate(jobs)]
    queue = worker.generator.get_model.queues["0.6B-CustomVoice"]
    results = [None, None]
    loop.run = run
    try:
        with queue.lock:  # the model is busy: both jobs queue up behind it
            threads = [
                threading.Thread(target=lambda i=i: results.__setitem__(i, handle({"id": f"c{i}", "input": jobs[i]})))
                for i in range(2)
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while len(queue.waiting) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(queue.waiting) == 2
        for t in threads:
            t.join(60)
    finally:
        del loop.run
    assert batches == [2]
    for alone, beside in zip(solo, results, strict=True):
        assert beside["audio_base64"] == alone["audio_base64"]
