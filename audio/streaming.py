"""Streaming one synthesis job: its audio released in text order while it is generated, for the queue's stream
items and the HTTP mode's streamed bodies.

The job runs through the worker's own generator (`Generator.run` with a listener: first chunk alone, then
batches in text order; with an engine that streams, the first chunk's audio arrives in ~1 s pieces while it is
made). `StreamJoiner` releases exactly what `joiner.join` would build (edge trim, crossfades), as soon as no
later audio can change it; each segment is resampled to the output rate by a streaming resampler, with its pause
in between. `AudioStream` is the whole flow as an iterator of `Released` pieces; `queue_items` turns them into the
queue's stream items. Loudness targets and speed changes need the whole track: a stream job with either is an
`InputError`. Generation runs on a thread of its own; closing the iterator cancels it at the next piece or batch.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from audio import encoders, joiner
from audio.errors import Cancelled, InputError
from audio.generator import Chunk, Synthesis
from audio.schema import JobPlan

log = logging.getLogger(__name__)

PIECE_S = 1.0  # the most audio one stream item carries
DEFAULT_STREAM_FORMAT = "pcm"


@dataclass(frozen=True)
class Released:
    """Audio at the output rate that no later generation can change, from one chunk (the first
    `crossfade` samples may be the previous chunk's faded end)."""

    samples: np.ndarray
    segment: int
    chunk: int
    text_span: tuple[int, int]  # the chunk's character range in its segment's text
    start_s: float  # where it starts in the output track


@dataclass(frozen=True)
class Finished:
    synthesis: Synthesis
    duration_s: float
    sample_rate: int
    elapsed_s: float
    last: Released | None  # the track's last samples


def check_streamable(plan: JobPlan) -> None:
    """Raise the InputError streaming this plan would meet, before any generation."""
    if plan.loudness_lufs is not None:
        raise InputError(
            "loudness_lufs needs the whole track to measure, so it can't be streamed: leave it out, or send the "
            "job without stream"
        )
    if plan.speed != 1.0:
        raise InputError("speed needs the whole track, so it can't be streamed: use speed 1.0 or don't stream")
    if plan.delivery == "s3":
        raise InputError("stream items are inline: delivery s3 can't be streamed (use auto or base64)")
    encoders.check_encodable(plan.output_format, plan.sample_rate)
    if plan.output_format not in encoders.STREAM_FORMATS:
        raise InputError(
            f"{plan.output_format} can't be cut while it is made; stream one of {', '.join(encoders.STREAM_FORMATS)}"
        )


class StreamJoiner:
    """`joiner.join` of one segment's chunks (trimmed as `joiner.trim_edges`), released incrementally: `piece`
    adds live audio to the current chunk, `chunk` completes it, `finish` ends the segment. Each returns the
    samples now final. Holds back only what a later sample could still change: a chunk's possibly-trimmed end
    and the crossfade at its end."""

    def __init__(self, sample_rate: int, crossfade: int, *, threshold_db: float, pad_ms: float):
        self.rate = sample_rate
        self.crossfade = crossfade
        self.threshold = 10.0 ** (threshold_db / 20.0)
        self.pad = int(sample_rate * pad_ms / 1000.0)
        self.frame = max(1, sample_rate // 100)
        self._tail = np.zeros(0, dtype=np.float32)  # the previous chunk's last samples, waiting for a crossfade
        self._prev_len = 0
        self._reset()

    def _reset(self) -> None:
        self._buf: list[np.ndarray] = []
        self._faded = False  # the crossfade with the previous chunk is out
        self._out = 0  # samples of the current trimmed chunk released (after the crossfade's)

    def piece(self, samples: np.ndarray) -> np.ndarray:
        self._buf.append(np.asarray(samples, dtype=np.float32))
        return self._release(final=False)

    def chunk(self, audio: np.ndarray | None = None) -> np.ndarray:
        """The current chunk is complete: `audio` is all of it (None: the pieces given were)."""
        if audio is not None:
            self._buf = [np.asarray(audio, dtype=np.float32)]
        out = self._release(final=True)
        self._reset()
        return out

    def finish(self) -> np.ndarray:
        """End of the segment: the held tail."""
        tail, self._tail, self._prev_len = self._tail, np.zeros(0, dtype=np.float32), 0
        return tail

    def _bounds(self, x: np.ndarray, final: bool) -> tuple[int, int] | None:
        n_frames = -(-len(x) // self.frame)
        padded = np.zeros(n_frames * self.frame, dtype=np.float32)
        padded[: len(x)] = np.abs(x)
        loud = np.flatnonzero(padded.reshape(n_frames, self.frame).max(axis=1) >= self.threshold)
        if loud.size == 0:
            return (0, len(x)) if final else None  # trim_edges keeps an all-quiet chunk whole
        start = max(0, int(loud[0]) * self.frame - self.pad)
        return start, min(len(x), (int(loud[-1]) + 1) * self.frame + self.pad)

    def _release(self, *, final: bool) -> np.ndarray:
        x = np.concatenate(self._buf) if self._buf else np.zeros(0, dtype=np.float32)
        bounds = self._bounds(x, final) if len(x) else ((0, 0) if final else None)
        if bounds is None:
            return np.zeros(0, dtype=np.float32)
        known = x[bounds[0] : bounds[1]]  # final: the trimmed chunk; else a prefix of it
        out = []
        if not self._faded:
            if not final and len(known) < self.crossfade:
                return np.zeros(0, dtype=np.float32)  # the fade length depends on this chunk's length
            fade = joiner.crossfade_len(self._prev_len, len(known), self.crossfade)
            out.append(self._tail[: len(self._tail) - fade])
            if fade:
                t = (np.arange(fade, dtype=np.float64) + 0.5) / fade
                mixed = self._tail[len(self._tail) - fade :] * np.cos(t * np.pi / 2).astype(np.float32)
                mixed += known[:fade] * np.sin(t * np.pi / 2).astype(np.float32)
                out.append(mixed)
            self._faded, self._out = True, fade
        hold = min(self.crossfade, len(known))
        end = len(known) - hold if final else len(known) - self.crossfade
        if end > self._out:
            out.append(known[self._out : end])
            self._out = end
        if final:
            self._tail, self._prev_len = known[len(known) - hold :].copy(), len(known)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class _Listener:
    """The generator's side: what it hands over goes onto a queue for the consumer's thread."""

    def __init__(self, events: queue.Queue, cancel: threading.Event, live_piece_frames: int | None):
        self.events = events
        self.cancel = cancel
        self.live_piece_frames = live_piece_frames

    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def piece(self, chunk: Chunk, samples: np.ndarray) -> None:
        self._check()
        self.events.put(("piece", chunk, samples))

    def chunk(self, chunk: Chunk) -> None:
        self.events.put(("chunk", chunk, chunk.audio))
        self._check()

    def progress(self, done: int, total: int) -> None:
        self._check()


class AudioStream:
    """One plan's audio, in order, as it is made: iterate for `Released` pieces, then one `Finished` (which
    carries the last piece: the end of the last chunk, held back until no chunk follows).

    `piece_frames` asks an engine that streams for live pieces of the first chunk (None: chunk by chunk)."""

    def __init__(
        self,
        worker: Any,
        plan: JobPlan,
        *,
        piece_frames: int | None = 12,
        piece_s: float = PIECE_S,
        cancel: threading.Event | None = None,
    ):
        check_streamable(plan)
        self.worker = worker
        self.plan = plan
        self.piece_frames = piece_frames
        self.piece_s = piece_s
        self.cancel = cancel or threading.Event()
        self._events: queue.Queue = queue.Queue()

    def _generate(self) -> None:
        listener = _Listener(self._events, self.cancel, self.piece_frames)
        try:
            synthesis = self.worker.generator.run(self.plan, on_progress=listener.progress, listener=listener)
            self._events.put(("done", synthesis, None))
        except BaseException as exc:  # handed to the consumer, which raises it (Cancelled: it stopped listening)
            self._events.put(("error", exc, None))

    def close(self) -> None:
        self.cancel.set()

    def __iter__(self) -> Iterator[Released | Finished]:
        started = time.perf_counter()
        threading.Thread(target=self._generate, name="tts-stream", daemon=True).start()
        plan = self.plan
        model_rate = self.worker.generator.get_model(plan.segments[0].model.name).sample_rate
        rate = plan.sample_rate or model_rate
        cfg = self.worker.generator.config
        step = max(1, int(rate * self.piece_s))
        joiner_: StreamJoiner | None = None
        resampler: Any = None
        segment = -1
        live: set[int] = set()
        last: Chunk | None = None
        position = 0  # samples released, at the output rate

        def released(samples: np.ndarray, chunk: Chunk) -> Iterator[Released]:
            nonlocal position
            for i in range(0, len(samples), step):
                yield Released(samples[i : i + step], chunk.segment, chunk.index, chunk.span, (position + i) / rate)
            position += len(samples)

        def resampled(samples: np.ndarray, *, end: bool) -> np.ndarray:
            if resampler is None:
                return samples
            return resampler.resample_chunk(np.asarray(samples, dtype=np.float32), last=end).astype(np.float32)

        try:
            while True:
                kind, item, audio = self._events.get()
                if kind == "error":
                    raise item
                if kind == "done":
                    break
                chunk: Chunk = item
                if chunk.segment != segment:
                    if joiner_ is not None:  # the previous segment's end, then this one's pause
                        yield from released(resampled(joiner_.finish(), end=True), last)
                        pause = int(rate * plan.segments[chunk.segment].pause_ms / 1000.0)
                        yield from released(np.zeros(pause, dtype=np.float32), chunk)
                    segment = chunk.segment
                    joiner_ = StreamJoiner(
                        model_rate,
                        int(model_rate * cfg.crossfade_ms / 1000.0),
                        threshold_db=cfg.limits.silence_threshold_db,
                        pad_ms=cfg.edge_pad_ms,
                    )
                    resampler = None if rate == model_rate else soxr.ResampleStream(model_rate, rate, 1, "float32")
                if kind == "piece":
                    live.add(chunk.index)
                    out = joiner_.piece(audio)
                else:
                    out = joiner_.chunk(None if chunk.index in live else audio)
                yield from released(resampled(out, end=False), chunk)
                last = chunk
            tail = resampled(joiner_.finish(), end=True) if joiner_ is not None else np.zeros(0, np.float32)
            piece = Released(tail, last.segment, last.index, last.span, position / rate) if last else None
            position += len(tail)
            yield Finished(item, position / rate, rate, time.perf_counter() - started, piece)
        finally:
            self.cancel.set()


def queue_items(
    worker: Any,
    plan: JobPlan,
    job_id: str,
    *,
    piece_frames: int | None = 12,
    cancel: threading.Event | None = None,
) -> Iterator[dict]:
    """The queue's stream items for a stream job: audio in order, each at most PIECE_S long (under RunPod's 1 MB
    item limit), the last one with the job's `metadata`. Closing the iterator (or setting `cancel`, from any
    thread) cancels the generation at its next piece or batch."""
    stream = AudioStream(worker, plan, piece_frames=piece_frames, cancel=cancel)
    fmt = plan.output_format
    rate = plan.sample_rate or worker.generator.get_model(plan.segments[0].model.name).sample_rate
    encoder = None if fmt == "wav" else encoders.StreamEncoder(fmt, rate, wav_header=plan.wav_header)
    size = 0
    started = time.perf_counter()
    index = 0

    def encode(samples: np.ndarray) -> bytes:
        if fmt == "wav":  # each item a WAV file of its own
            return encoders.encode(samples, rate, "wav") if len(samples) else b""
        return encoder.push(samples)

    try:
        for event in stream:
            if isinstance(event, Released):
                data = encode(event.samples)
                size += len(data)
                yield _item(index, data, fmt, rate, event, started)
                index += 1
                continue
            data = (encode(event.last.samples) if event.last else b"") + (encoder.finish() if encoder else b"")
            size += len(data)
            item = _item(index, data, fmt, rate, event.last, started)
            metadata = worker.metadata(
                plan, event.synthesis, event.duration_s, event.sample_rate, size, event.elapsed_s
            )
            item["metadata"] = {**metadata, "stream_items": index + 1}
            log.info("job %s: streamed %d item(s), %.1fs audio", job_id, index + 1, event.duration_s)
            yield item
    finally:
        stream.close()
        if encoder is not None:
            encoder.close()


def _item(index: int, data: bytes, fmt: str, rate: int, event: Released | None, started: float) -> dict:
    item: dict[str, Any] = {
        "index": index,
        "audio_base64": base64.b64encode(data).decode(),
        "format": fmt,
        "sample_rate": encoders.encoded_rate(fmt, rate),
    }
    if event is not None:
        item.update(
            segment=event.segment,
            chunk=event.chunk,
            text_span=list(event.text_span),
            start_seconds=round(event.start_s, 4),
            duration_seconds=round(len(event.samples) / rate, 4),
        )
    item["elapsed_seconds"] = round(time.perf_counter() - started, 3)
    return item
