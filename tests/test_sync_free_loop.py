"""The decode loop without a sync per frame: rows' EOS frames stay on the device and the host reads them every few
frames (`audio.engine.host_reads`); here a reader whose reads land only after a few polls stands in for a GPU that
runs ahead of the host. Whatever the lag and the read interval, the frames handed out equal, row by row, those of a
loop that reads after every frame (the old loop's order: an ended row never shows a frame past its end); rows
past their EOS leave the batch once the host knows, and a guard's stop still ends its row at the same frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from audio.engine.decode_loop import MAX_READS_IN_FLIGHT, EagerSteps, RowPrompt
from audio.engine.graphs import GraphSteps
from audio.engine.host_reads import HostRead, HostReader
from audio.engine.sampling import RowSampling
from audio.model_loader import ModelCache
from tests.test_engine import engine_settings


@dataclass
class StubEvent:
    """A CUDA event's `query`/`synchronize` on CPU: the copy 'lands' after `lag` polls."""

    lag: int

    def query(self) -> bool:
        self.lag -= 1
        return self.lag < 0

    def synchronize(self) -> None:
        self.lag = -1


class LaggingReader(HostReader):
    """Reads that land only after `lag` polls, as on a GPU the host has run ahead of."""

    lag = 3

    def read(self, tensor: torch.Tensor) -> HostRead:
        return HostRead(tensor.cpu().clone(), StubEvent(self.lag))


class CountingSteps(EagerSteps):
    """Eager steps that record the batch size of every code-predictor pass."""

    def __init__(self, loop):
        super().__init__(loop)
        self.batches: list[int] = []

    def frame(self, live, step, prompt_len, *, need_next):
        self.batches.append(live.hidden.shape[0])
        return super().frame(live, step, prompt_len, need_next=need_next)


class CountingGraphSteps(GraphSteps):
    """One graph per frame in "simulate" mode (capture order, bodies as replays), over 16-, 32- and 64-slot spans;
    records batch sizes like `CountingSteps`."""

    min_length_bucket = 16

    def __init__(self, loop):
        super().__init__(loop, max_batch=8, max_len=64)
        self.use_mode("simulate")
        self.batches: list[int] = []

    def frame(self, live, step, prompt_len, *, need_next):
        self.batches.append(live.hidden.shape[0])
        return super().frame(live, step, prompt_len, need_next=need_next)


@pytest.fixture(scope="module")
def loop(live_eos_model_dir):
    return ModelCache(engine_settings(live_eos_model_dir, QWEN_TTS_CUDA_GRAPHS="off")).get("0.6B-CustomVoice").loop


def _run(
    loop, *, reader=HostReader, every=1, sampled=False, stop_at=None, batch=6, budget=40, steps_type=CountingSteps
):
    """Codes per row of a fixed generation; the code-predictor batch sizes; `stop_at` {row: frames}: a guard that
    stops the row once it has seen that many of its frames."""
    embedding, device = loop.talker.model.codec_embedding, loop.device
    prompts = [
        RowPrompt(
            embedding(torch.arange(5 + i, 12 + 2 * i, device=device)), embedding(torch.arange(20, 24, device=device))
        )
        for i in range(batch)
    ]
    pad = embedding(torch.tensor([0], device=device)).reshape(1, 1, -1)
    sampling = RowSampling() if sampled else RowSampling(do_sample=False, sub_do_sample=False)
    steps = steps_type(loop)
    previous = (loop.steps, loop.reader_factory, loop.read_every_frames)
    loop.steps, loop.reader_factory, loop.read_every_frames = steps, reader, every
    rows: list[list[list[int]]] = [[] for _ in range(batch)]
    try:
        with torch.inference_mode():
            frames = loop.run(prompts, pad, [budget - i for i in range(batch)], [sampling] * batch, list(range(batch)))
            stop = None
            while True:
                try:
                    step = frames.send(stop)
                except StopIteration:
                    break
                assert np.array_equal(step.first_codes_host, step.codes[:, 0].cpu().numpy())
                # The read's event rides with the frame (the codec's stream waits on it); a CPU read has none.
                assert (step.made is None) == (reader is HostReader and device.type == "cpu")
                for row, codes in zip(step.rows, step.codes.tolist(), strict=True):
                    rows[row].append(codes)
                stop = {r for r in step.rows if stop_at and len(rows[r]) == stop_at.get(r)} or None
    finally:
        loop.steps, loop.reader_factory, loop.read_every_frames = previous
    assert not getattr(steps, "_missing_logged", False)  # graph steps: every frame replayed a graph
    return rows, steps.batches


@pytest.mark.slow
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("every,lag", [(1, 0), (4, 0), (4, 3), (3, 9)])
def test_frames_equal_the_loop_that_reads_every_frame(loop, sampled, every, lag, monkeypatch):
    want, want_batches = _run(loop, sampled=sampled)
    lengths = [len(r) for r in want]
    assert len(set(lengths)) > 1 and min(lengths) < 34, lengths  # rows end at EOS, at different frames
    monkeypatch.setattr(LaggingReader, "lag", lag)
    got, batches = _run(loop, reader=LaggingReader, every=every, sampled=sampled)
    assert [len(r) for r in got] == lengths
    for row, (a, b) in enumerate(zip(want, got, strict=True)):
        assert a == b, f"row {row}"
    # Rows past their EOS keep computing until the host knows, then the batch shrinks: at most the frames of
    # the reads in flight, plus one read interval, past the loop that reads every frame.
    assert batches[0] == 6 and batches[-1] < 6
    slack = every * (MAX_READS_IN_FLIGHT + 1)
    assert len(want_batches) <= len(batches) <= len(want_batches) + slack
    for frame, size in enumerate(batches):
        assert size >= (want_batches[frame] if frame < len(want_batches) else 1)
        assert size <= want_batches[max(0, frame - slack)]


@pytest.mark.slow
@pytest.mark.parametrize("every,lag", [(1, 0), (4, 3)])
def test_a_guard_still_stops_its_row_at_the_frame_it_saw(loop, every, lag, monkeypatch):
    plain, _ = _run(loop, sampled=True)
    monkeypatch.setattr(LaggingReader, "lag", lag)
    stopped, _ = _run(loop, reader=LaggingReader, every=every, sampled=True, stop_at={1: 5, 3: 9})
    assert [len(r) for r in stopped] == [len(plain[0]), 5, len(plain[2]), 9, len(plain[4]), len(plain[5])]
    for row in range(6):
        assert stopped[row] == plain[row][: len(stopped[row])]


@pytest.mark.slow
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("every,lag", [(1, 0), (4, 3)], ids=["read-every-frame", "read-every-4-landing-late"])
def test_one_graph_per_frame_equals_the_eager_loop(loop, sampled, every, lag, monkeypatch):
    """Rows ending at EOS at different frames, a guard stopping two, the batch shrinking through every bucket and
    the frames crossing the 16- and 32-slot spans: the frame graphs' codes equal the eager loop's, row by row."""
    monkeypatch.setattr(LaggingReader, "lag", lag)
    stop_at = {1: 5, 3: 9}
    want, want_batches = _run(loop, reader=LaggingReader, every=every, sampled=sampled, stop_at=stop_at)
    got, batches = _run(
        loop, reader=LaggingReader, every=every, sampled=sampled, stop_at=stop_at, steps_type=CountingGraphSteps
    )
    assert len(set(map(len, want))) > 2
    assert got == want
    assert batches == want_batches and batches[0] == 6 and batches[-1] == 1


def test_reads_on_cpu_land_at_once_and_uploads_stay_on_the_device():
    reader = HostReader(torch.device("cpu"))
    read = reader.read(torch.tensor([3, 1 << 62]))
    assert read.ready() and read.values.tolist() == [3, 1 << 62]
    read.wait()
    assert reader.upload([2, 0]).tolist() == [2, 0]
    lagging = LaggingReader(torch.device("cpu")).read(torch.tensor([7]))
    assert [lagging.ready() for _ in range(LaggingReader.lag + 1)] == [False] * LaggingReader.lag + [True]
