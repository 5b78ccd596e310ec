"""The streamed codec decode overlapped with the generation (`FastEngine.stream`, `IncrementalDecoder.push`).

On CUDA a piece's decode is issued on the engine's decode stream and its audio read back through pinned memory and
an event; the stream hands a piece out once its read has landed, in the order the pieces were made, and keeps taking
frames from the loop meanwhile. Here reads that land only after a few polls (`StubEvent`) stand in for a GPU whose
decodes run behind the host: the pieces handed out are exactly those of decoding in line (rows, order, samples
byte for byte, frame spans, finals), the loop is not held up by a pending piece, and closing the stream stops it.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch

from audio.engine.codec import IncrementalDecoder
from audio.engine.host_reads import HostRead, HostReader
from audio.model_loader import ModelCache
from audio.speech import ChunkRequest, GenerateCall, Voice
from tests.test_engine import engine_settings
from tests.test_sync_free_loop import StubEvent

GREEDY = {"do_sample": False, "subtalker_dosample": False}
SAMPLED: dict[str, Any] = {}
# Row budgets (the tiny model's EOS is dead: a row is exactly its budget long). With pieces of 1, 2, 4 frames a row
# of 7 frames ends on a piece boundary: its final piece is empty.
BUDGETS = {1: [7], 3: [7, 12, 5]}
TEXTS = ["Overlapped decoding, piece by piece.", "A second row, a little longer than that.", "A third."]


class LateReader(HostReader):
    """Reads whose values land only after `lag` polls, as a decode running behind the host on a GPU."""

    def __init__(self, device: torch.device, *, lag: int):
        super().__init__(device)
        self.lag = lag

    def read(self, tensor: torch.Tensor) -> HostRead:
        return HostRead(tensor.cpu().clone(), StubEvent(self.lag))


class CountedFrames:
    """The engine's frame iterator, counting the `Step`s it hands the stream and noting when it is closed."""

    def __init__(self, frames: Iterator[Any]):
        self.frames = frames
        self.steps = 0
        self.closed = False

    def __iter__(self) -> CountedFrames:
        return self

    def __next__(self) -> Any:
        step = next(self.frames)
        self.steps += 1
        return step

    def close(self) -> None:
        self.closed = True
        self.frames.close()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ModelCache(engine_settings(tiny_model_dir, QWEN_TTS_CUDA_GRAPHS="off")).get("0.6B-CustomVoice")


def _requests(batch: int) -> list[ChunkRequest]:
    return [ChunkRequest(TEXTS[i], budget, seed=20 + i) for i, budget in enumerate(BUDGETS[batch])]


def _call(params: dict[str, Any]) -> dict[str, Any]:
    return {"language": "Auto", "voice": Voice(speaker="Ryan"), "params": params}


def _key(piece) -> tuple:
    return (piece.row, piece.samples.dtype.str, piece.samples.tobytes(), piece.first_frame, piece.frames, piece.final)


def landed(read: HostRead | None) -> np.ndarray | None:
    """A piece's audio, waited for (None: no piece was issued)."""
    if read is None:
        return None
    read.wait()
    return read.values.numpy()


def _inline(model, requests, params, pieces) -> list[tuple]:
    """The pieces of decoding in line, as `stream` did before the overlap: each piece decoded (and waited for) the
    moment its frames are in; a row's final piece (possibly empty) at the step after its last frame."""
    decoders = [IncrementalDecoder(model.tts, piece_frames=pieces) for _ in requests]
    out = []

    def last(row):
        first = decoders[row].frames_out
        audio = landed(decoders[row].flush())
        audio = np.zeros(0, dtype=np.float32) if audio is None else audio
        return (row, audio.dtype.str, audio.tobytes(), first, decoders[row].frames_out - first, True)

    open_rows = set(range(len(requests)))
    for step in model.frames_many([GenerateCall(requests, **_call(params))]):
        out += [last(row) for row in sorted(open_rows - set(step.rows))]
        open_rows &= set(step.rows)
        for row, codes in zip(step.rows, step.codes, strict=True):
            first = decoders[row].frames_out
            audio = landed(decoders[row].push(codes))
            if audio is not None:
                out.append((row, audio.dtype.str, audio.tobytes(), first, decoders[row].frames_out - first, False))
    return out + [last(row) for row in sorted(open_rows)]


def _streamed(model, requests, params, pieces, *, lag: int | None, stop_after: int | None = None):
    """The stream's pieces, each with the number of frame steps the stream had taken when it was handed out; reads
    land after `lag` polls (None: the engine's own reader). `stop_after`: close the stream after that many pieces."""
    counted: list[CountedFrames] = []
    frames_many, reader_factory = model.frames_many, model.decode_reader_factory

    def counting(calls):
        counted.append(CountedFrames(frames_many(calls)))
        return counted[0]

    model.frames_many = counting
    if lag is not None:
        model.decode_reader_factory = partial(LateReader, lag=lag)
    out = []
    try:
        stream = model.stream(requests, piece_frames=pieces, **_call(params))
        for piece in stream:
            out.append((_key(piece), counted[0].steps))
            if stop_after is not None and len(out) == stop_after:
                stream.close()
                break
    finally:
        del model.frames_many
        model.decode_reader_factory = reader_factory
    return out, counted[0]


SCHEDULES = {"pieces-1-2-4": (1, 2, 4), "pieces-3": 3, "pieces-1-2-4-8-12": (1, 2, 4, 8, 12)}


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
@pytest.mark.parametrize("batch", [1, 3], ids=["batch1", "batch3"])
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_late_decodes_hand_out_the_pieces_of_decoding_in_line(model, params, batch, schedule):
    requests = _requests(batch)
    want = _inline(model, requests, params, schedule)
    assert sorted(p[0] for p in want if p[5]) == list(range(batch))  # one final piece per row
    if schedule == (1, 2, 4):  # the 7-frame row ends on a piece boundary: its final piece is empty
        assert (0, "<f4", b"", 7, 0, True) in want
    for lag in (None, 0, 2, 5):
        got, frames = _streamed(model, requests, params, schedule, lag=lag)
        assert [key for key, _ in got] == want, f"lag {lag}"
        assert frames.steps == max(BUDGETS[batch])


@pytest.mark.parametrize("lag", [0, 1, 3, 6], ids=lambda lag: f"lag{lag}")
def test_the_loop_goes_on_while_a_piece_is_decoded(model, lag):
    """A piece is polled once per frame step while it heads the queue and lands at its `lag + 1`-th poll: the piece
    of frame 0, issued at step 0, is handed out after step `lag`, with `lag + 1` frames made. No piece is handed
    out before `lag` steps after its last frame (issued at step `first_frame + frames - 1`) unless the frames ran
    out."""
    requests = [ChunkRequest(TEXTS[0], 20, seed=3)]
    got, frames = _streamed(model, requests, GREEDY, (1, 2, 4), lag=lag)
    spans = [(0, 1), (1, 2), (3, 4), (7, 4), (11, 4), (15, 4), (19, 1)]  # pieces of 1, 2, 4, 4, ... of 20 frames
    assert [(key[3], key[4], key[5]) for key, _ in got] == [(*span, span[0] == 19) for span in spans]
    assert got[0][1] == lag + 1
    for key, steps in got:
        assert steps >= min(key[3] + key[4] + lag, frames.steps), key[3:]
    assert frames.steps == 20


@pytest.mark.parametrize("lag", [0, 3], ids=lambda lag: f"lag{lag}")
def test_closing_the_stream_after_the_first_piece_stops_the_loop(model, lag):
    requests = _requests(3)
    got, frames = _streamed(model, requests, SAMPLED, (1, 2, 4), lag=lag, stop_after=1)
    assert [steps for _, steps in got] == [lag + 1]
    assert frames.closed and frames.steps == lag + 1
    assert frames.frames.gi_frame is None  # the loop's generator is finished: no frame after the close
    with pytest.raises(StopIteration):
        next(frames.frames)
