"""CUDA-graph capture's order of operations, replayed on CPU (`GraphSteps` mode "simulate": the warm-up calls on the
same static tensors, then the body in place of replay).

A capture's warm-up runs execute the talker body on the bucket's static inputs, which write K/V into the cache the
live rows share. Captured on first use with rows in flight (as the engine did before), that corrupted them; with
`_scratch` the cache is restored and the rows are untouched. Every bucket is captured at warm-up, the graph set is
bounded whatever the sampling settings, and a failed capture or check logs why and leaves the loop eager.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from audio.engine.decode_loop import RowPrompt
from audio.engine.graphs import GraphSteps, _codes, bucket_for, length_buckets
from audio.engine.sampling import RowSampling
from audio.model_loader import ModelCache
from tests.test_engine import engine_settings


def _loop(model_dir):
    return ModelCache(engine_settings(model_dir, QWEN_TTS_CUDA_GRAPHS="off")).get("0.6B-CustomVoice").loop


@pytest.fixture(scope="module")
def loop(tiny_model_dir):
    return _loop(tiny_model_dir)


@pytest.fixture(scope="module")
def loops(loop, real_shape_model_dir):
    return {"tiny": loop, "real-structure": _loop(real_shape_model_dir)}


class Recorded(GraphSteps):
    """Graph steps that record each frame's talker hidden state; `lazy`: capture a bucket on first use, with the
    rows in flight (the engine's old timing)."""

    def __init__(self, *args, lazy: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy
        self.hidden: list[torch.Tensor] = []

    def frame(self, live, step, prompt_len, *, need_next):
        key = (bucket_for(len(live.rows)), self.length_for(prompt_len + step + 1))
        if self.lazy and key not in self._graphs:
            self.capture_bucket(*key)
        codes = super().frame(live, step, prompt_len, need_next=need_next)
        self.hidden.append(live.hidden.clone())
        return codes


def _max_hidden_diff(a: Recorded, b: Recorded) -> float:
    assert len(a.hidden) == len(b.hidden)
    return max(float((x - y).abs().max()) for x, y in zip(a.hidden, b.hidden, strict=True))


@pytest.mark.parametrize("batch", [1, 3], ids=["batch-1", "batch-3"])
@pytest.mark.parametrize("checkpoint", ["tiny", "real-structure"])
def test_capture_with_rows_in_flight_corrupted_them_and_no_longer_does(loops, checkpoint, batch, monkeypatch):
    loop = loops[checkpoint]
    eager = Recorded(loop, max_batch=4, max_len=64)
    eager.use_mode("bodies")
    want = _codes(loop, eager, batch, sampled=False)

    monkeypatch.setattr(GraphSteps, "protect_live_state", False)  # the old capture: no scratch, no restore
    old = Recorded(loop, max_batch=4, max_len=64, lazy=True)
    old.mode = "simulate"
    old_codes = _codes(loop, old, batch, sampled=False)
    corrupted = _max_hidden_diff(old, eager)
    # Measured (one graph per frame): tiny 3.46 at batch 1, 4.52 at batch 3; real structure (one layer) 4.34 at
    # batch 1, 4.59 at batch 3; the codes diverge in all four.
    assert corrupted > 1e-2, corrupted

    monkeypatch.setattr(GraphSteps, "protect_live_state", True)
    fixed = Recorded(loop, max_batch=4, max_len=64, lazy=True)
    fixed.mode = "simulate"
    assert _codes(loop, fixed, batch, sampled=False) == want
    assert _max_hidden_diff(fixed, eager) == 0.0
    print(
        f"{checkpoint} batch {batch}: hidden max diff from eager {corrupted:.3g} before, 0 after; codes equal before: "
        f"{old_codes == want}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["tiny", "real-structure"])
def test_warm_up_captures_every_bucket_and_requests_capture_nothing(loops, checkpoint, monkeypatch):
    loop = loops[checkpoint]
    monkeypatch.setattr(GraphSteps, "min_length_bucket", 16)
    steps = GraphSteps.try_enable(loop, max_batch=5, max_len=64, mode="simulate")
    assert steps is not None
    every = [(size, length) for size in (1, 2, 4, 8) for length in (16, 32, 64)]
    assert sorted(steps._graphs) == every
    # Captured without autograd (the loaded model's norms require grad): no buffer carries a graph of its own.
    assert not any(t.requires_grad for inputs in steps._inputs.values() for t in inputs.values())
    used = []
    run_frame = GraphSteps.frame
    monkeypatch.setattr(
        steps,
        "frame",
        lambda live, step, prompt_len, need_next: (
            used.append((len(live.rows), prompt_len + step))
            or run_frame(steps, live, step, prompt_len, need_next=need_next)
        ),
    )
    captures = []
    monkeypatch.setattr(steps, "_capture", lambda *a: captures.append(a))
    # Requests with every kind of sampling setting: tensor inputs, not graph keys.
    embedding = loop.talker.model.codec_embedding
    prompts = [RowPrompt(embedding(torch.arange(5, 12 + i)), embedding(torch.arange(20, 24))) for i in range(5)]
    pad = embedding(torch.tensor([0])).reshape(1, 1, -1)
    settings = [
        RowSampling(do_sample=False, sub_do_sample=False),
        RowSampling(),
        RowSampling(top_k=0, sub_top_k=7, sub_top_p=0.8),
        RowSampling(temperature=0.5, sub_temperature=1.3, sub_top_k=0),
        RowSampling(top_p=0.9, sub_top_k=1),
    ]
    previous, loop.steps = loop.steps, steps
    try:
        with torch.inference_mode():
            graphed = [s.codes.clone() for s in loop.run(prompts, pad, [3, 4, 5, 6, 7], settings, [1, 2, 3, 4, 5])]
    finally:
        loop.steps = previous
    with torch.inference_mode():
        eager = [s.codes.clone() for s in loop.run(prompts, pad, [3, 4, 5, 6, 7], settings, [1, 2, 3, 4, 5])]
    assert captures == []
    assert not steps._missing_logged  # every frame replayed a graph, none fell back to eager
    assert sorted(steps._graphs) == every
    # Frames 0-6 at slots 11-17: the 16-slot graphs, then the 32-slot ones; the batch shrinking 5, 4, 3, 2, 1.
    assert used == [(5, 11), (5, 12), (5, 13), (4, 14), (3, 15), (2, 16), (1, 17)]
    assert len(graphed) == len(eager) == 7
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(graphed, eager, strict=True))


def test_a_replay_that_differs_from_eager_is_logged_and_stays_eager(loop, monkeypatch, caplog):
    real = GraphSteps._frame_graph

    def skewed(self, size, length):
        run = real(self, size, length)
        if self.mode == "bodies" or length < 32:
            return run
        return lambda: run() + 1  # the 32-slot graphs' codes are off by one

    monkeypatch.setattr(GraphSteps, "min_length_bucket", 16)
    monkeypatch.setattr(GraphSteps, "_frame_graph", skewed)
    with caplog.at_level(logging.WARNING, logger="audio.engine.graphs"):
        assert GraphSteps.try_enable(loop, max_batch=2, max_len=64, mode="simulate") is None
    assert "replay differs from eager at batch 1, 32 slots (greedy); running eager" in caplog.text


def test_a_capture_that_fails_is_logged_and_stays_eager(loop, monkeypatch, caplog):
    def broken(self, size, length):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphSteps, "_frame_graph", broken)
    with caplog.at_level(logging.WARNING, logger="audio.engine.graphs"):
        assert GraphSteps.try_enable(loop, max_batch=2, max_len=64, mode="simulate") is None
    assert "CUDA graphs disabled (RuntimeError: operation not permitted when stream is capturing)" in caplog.text
    assert GraphSteps.try_enable(loop, max_batch=2, max_len=64) is None  # "graphs" without CUDA: eager, silently


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["tiny", "real-structure"])
def test_the_warm_up_check_replays_every_graph_greedy_and_sampled(loops, checkpoint, monkeypatch):
    hits: list[tuple[int, int, int]] = []

    class Hits(GraphSteps):
        min_length_bucket = 16

        def frame(self, live, step, prompt_len, *, need_next):
            if self.mode == "simulate":
                key = (bucket_for(len(live.rows)), self.length_for(prompt_len + step + 1))
                hits.append((*key, int(live.warp.top_k.max())))
            return super().frame(live, step, prompt_len, need_next=need_next)

    steps = Hits.try_enable(loops[checkpoint], max_batch=3, max_len=64, mode="simulate")
    assert steps is not None and not steps._missing_logged
    greedy, sampled = {h[:2] for h in hits if h[2] == 1}, {h[:2] for h in hits if h[2] > 1}
    assert greedy == sampled == {(size, length) for size in (1, 2, 4) for length in (16, 32, 64)}


@pytest.mark.parametrize(
    "max_len,shortest,want",
    [
        (1774, 256, [256, 512, 1024, 1774]),  # the worker's default: 1024 prompt slots + 60 s at 12.5 Hz
        (1030, 256, [256, 512, 1030]),  # 1024 is within 16 slots of the end: no room to check it apart
        (64, 16, [16, 32, 64]),
        (64, 256, [64]),
    ],
    ids=["default", "close-to-a-power", "tests", "shorter-than-one-bucket"],
)
def test_length_buckets(max_len, shortest, want):
    assert length_buckets(max_len, shortest) == want
