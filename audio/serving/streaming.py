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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr

from audio import results
from audio.errors import Cancelled, InputError
from audio.generator import Chunk, Synthesis
from audio.output import encoders, joiner
from audio.render import gap_samples
from audio.schema import JobPlan
from audio.settings import STREAM_PIECE_FRAMES
from audio.text import captions

log = logging.getLogger(__name__)

PIECE_S = 1.0  # the most audio one stream item carries
FROM_SETTINGS = "settings"  # piece_frames default: the worker settings' stream_piece_frames
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
    chunk_times: list[list[tuple[float, float]]]  # (start_s, end_s) per chunk per segment, as finish_timed's


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
    if not plan.join:
        raise InputError(
            "join: false returns one audio item per segment at the end, so it can't be streamed: send it without "
            "stream (a stream already carries each item's segment)"
        )
    encoders.check_encodable(plan.output_format, plan.sample_rate)
    if plan.output_format not in encoders.STREAM_FORMATS:
        raise InputError(
            f"{plan.output_format} can't be cut while it is made; stream one of {', '.join(encoders.STREAM_FORMATS)}"
        )


class StreamJoiner:
    """`joiner.join` of one segment's chunks (trimmed as `joiner.trim_edges`), released incrementally: `piece`
    adds live audio to the current chunk, `chunk` completes it (with what comes before the next chunk: `gap_after`
    zeros, or `joiner.CROSSFADE`), `finish` ends the segment. Each returns the samples now final. Holds back only
    what a later sample could still change: a chunk's possibly-trimmed end and the crossfade at its end."""

    def __init__(self, sample_rate: int, crossfade: int, *, threshold_db: float, pad_ms: float):
        self.rate = sample_rate
        self.crossfade = crossfade
        self.threshold = 10.0 ** (threshold_db / 20.0)
        self.pad = int(sample_rate * pad_ms / 1000.0)
        self.frame = max(1, sample_rate // 100)
        self._tail = np.zeros(0, dtype=np.float32)  # the previous chunk's last samples, waiting for a crossfade
        self._prev_len = 0  # the previous chunk's length when it crossfades into this one, else 0
        self._gap = 0  # zeros owed before the next chunk (a pause after the previous one)
        self._reset()

    def _reset(self) -> None:
        self._buf: list[np.ndarray] = []
        self._faded = False  # what lies between the previous chunk and this one (gap or crossfade) is out
        self._mixed = np.zeros(0, dtype=np.float32)  # the crossfade: the previous tail's end mixed with this start
        self._out = 0  # samples of the current trimmed chunk released

    def piece(self, samples: np.ndarray) -> np.ndarray:
        self._buf.append(np.asarray(samples, dtype=np.float32))
        return self._release(final=False)

    def chunk(self, audio: np.ndarray | None = None, *, gap_after: int = joiner.CROSSFADE) -> np.ndarray:
        """The current chunk is complete: `audio` is all of it (None: the pieces given were)."""
        if audio is not None:
            self._buf = [np.asarray(audio, dtype=np.float32)]
        out = self._release(final=True, gap_after=gap_after)
        self._reset()
        return out

    def finish(self) -> np.ndarray:
        """End of the segment: the held tail (a pause owed after the last chunk is not part of the segment)."""
        tail, self._tail, self._prev_len, self._gap = self._tail, np.zeros(0, dtype=np.float32), 0, 0
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

    def _release(self, *, final: bool, gap_after: int = joiner.CROSSFADE) -> np.ndarray:
        x = np.concatenate(self._buf) if self._buf else np.zeros(0, dtype=np.float32)
        bounds = self._bounds(x, final) if len(x) else ((0, 0) if final else None)
        if bounds is None:
            return np.zeros(0, dtype=np.float32)
        known = x[bounds[0] : bounds[1]]  # final: the trimmed chunk; else a prefix of it
        out = []
        if not self._faded:
            if not final and len(known) < min(self.crossfade, self._prev_len):
                return np.zeros(0, dtype=np.float32)  # the fade length depends on this chunk's length
            out.append(np.zeros(self._gap, dtype=np.float32))
            fade = joiner.crossfade_len(self._prev_len, len(known), self.crossfade)
            out.append(self._tail[: len(self._tail) - fade])
            if fade:
                t = (np.arange(fade, dtype=np.float64) + 0.5) / fade
                self._mixed = self._tail[len(self._tail) - fade :] * np.cos(t * np.pi / 2).astype(np.float32)
                self._mixed += known[:fade] * np.sin(t * np.pi / 2).astype(np.float32)
            self._faded, self._gap = True, 0
        # The chunk as joined so far: its start mixed with the previous chunk's end. A chunk shorter than the
        # crossfade is all mixed, and all of it is in the next crossfade: what is held is the mix, not the chunk.
        joined = np.concatenate([self._mixed, known[len(self._mixed) :]]) if len(self._mixed) else known
        crossfades = gap_after == joiner.CROSSFADE
        hold = min(self.crossfade, len(known)) if crossfades else 0
        end = len(known) - hold if final else len(known) - self.crossfade
        if end > self._out:
            out.append(joined[self._out : end])
            self._out = end
        if final:
            self._tail = joined[len(joined) - hold :].copy()
            self._prev_len = len(known) if crossfades else 0
            self._gap = 0 if crossfades else gap_after
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class _Listener:
    """The generator's side: what it hands over goes onto a queue for the consumer's thread."""

    def __init__(self, events: queue.Queue, cancel: threading.Event, live_piece_frames: int | Sequence[int] | None):
        self.events = events
        self.cancel = cancel
        self.live_piece_frames = live_piece_frames
        self.chunks = 0  # handed over so far

    def _check(self) -> None:
        if self.cancel.is_set():
            log.info("stream cancelled: generation stopped after %d chunk(s)", self.chunks)
            raise Cancelled

    def piece(self, chunk: Chunk, samples: np.ndarray) -> None:
        self._check()
        self.events.put(("piece", chunk, samples))

    def chunk(self, chunk: Chunk) -> None:
        self.events.put(("chunk", chunk, chunk.audio))
        self.chunks += 1
        self._check()

    def progress(self, done: int, total: int) -> None:
        self._check()


class AudioStream:
    """One plan's audio, in text order, as it is made: iterate for `Released` pieces, then one `Finished` (which
    carries the last piece: the end of the last chunk, held back until no chunk follows).

    The generator works model by model (and a designed voice's clones last), so a chunk may be done before an
    earlier one: it is held until every chunk before it is out. A chunk with nothing to say is its pause.

    `piece_frames` asks an engine that streams for live pieces of the first chunk: a size, or sizes in order with
    the last repeating (default: the worker's `stream_piece_frames`, first audio after one frame); None: chunk by
    chunk."""

    def __init__(
        self,
        worker: Any,
        plan: JobPlan,
        *,
        piece_frames: int | Sequence[int] | str | None = FROM_SETTINGS,
        piece_s: float = PIECE_S,
        cancel: threading.Event | None = None,
    ):
        check_streamable(plan)
        worker.check_synthesis(plan)
        self.worker = worker
        self.plan = plan
        if piece_frames == FROM_SETTINGS:
            piece_frames = getattr(getattr(worker, "settings", None), "stream_piece_frames", STREAM_PIECE_FRAMES)
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
        generator = self.worker.generator
        model_rate = generator.get_model(plan.segments[0].model.name).sample_rate
        rate = plan.sample_rate or model_rate
        cfg = generator.config
        step = max(1, int(rate * self.piece_s))
        joiner_: StreamJoiner | None = None
        resampler: Any = None
        segment = -1
        segment_starts: list[float] = []  # where each segment starts in the output track, seconds
        live: set[int] = set()
        last: Chunk | None = None
        position = 0  # samples released, at the output rate
        waiting: dict[int, list[tuple[str, Chunk, Any]]] = {}  # done out of text order, by chunk index
        next_index = 0

        def released(samples: np.ndarray, chunk: Chunk) -> Iterator[Released]:
            nonlocal position
            for i in range(0, len(samples), step):
                yield Released(samples[i : i + step], chunk.segment, chunk.index, chunk.span, (position + i) / rate)
            position += len(samples)

        def resampled(samples: np.ndarray, *, end: bool) -> np.ndarray:
            if resampler is None:
                return samples
            return resampler.resample_chunk(np.asarray(samples, dtype=np.float32), last=end).astype(np.float32)

        def take(kind: str, chunk: Chunk, audio: Any) -> Iterator[Released]:
            nonlocal joiner_, resampler, segment, last
            if chunk.segment != segment:
                if joiner_ is not None:  # the previous segment's end, then this one's pause
                    yield from released(resampled(joiner_.finish(), end=True), last)
                    pause = int(rate * plan.segments[chunk.segment].pause_ms / 1000.0)
                    yield from released(np.zeros(pause, dtype=np.float32), chunk)
                segment = chunk.segment
                segment_starts.append(position / rate)
                joiner_ = StreamJoiner(
                    model_rate,
                    int(model_rate * cfg.crossfade_ms / 1000.0),
                    threshold_db=cfg.limits.silence_threshold_db,
                    pad_ms=cfg.edge_pad_ms,
                )
                resampler = None if rate == model_rate else soxr.ResampleStream(model_rate, rate, 1, "float32", "VHQ")
            if kind == "piece":
                live.add(chunk.index)
                out = joiner_.piece(audio)
            else:
                pause_ms = generator.pause_after(chunk)
                gap = joiner.CROSSFADE if pause_ms is None else round(model_rate * pause_ms / 1000.0)
                out = joiner_.chunk(None if chunk.index in live else audio, gap_after=gap)
            yield from released(resampled(out, end=False), chunk)
            last = chunk

        try:
            while True:
                kind, item, audio = self._events.get()
                if kind == "error":
                    raise item
                if kind == "done":
                    break
                waiting.setdefault(item.index, []).append((kind, item, audio))
                while waiting.get(next_index):
                    events = waiting.pop(next_index)
                    for event in events:
                        yield from take(*event)
                    if events[-1][0] != "chunk":  # live pieces so far: the chunk goes on
                        break
                    next_index += 1
            synthesis: Synthesis = item
            if next_index != synthesis.num_chunks or waiting:  # pragma: no cover - a generator contract break
                raise RuntimeError(f"stream ended after chunk {next_index} of {synthesis.num_chunks}")
            tail = resampled(joiner_.finish(), end=True) if joiner_ is not None else np.zeros(0, np.float32)
            piece = Released(tail, last.segment, last.index, last.span, position / rate) if last else None
            position += len(tail)
            timed = _chunk_times(synthesis, segment_starts)
            yield Finished(synthesis, position / rate, rate, time.perf_counter() - started, piece, timed)
        finally:
            self.cancel.set()


def _chunk_times(synthesis: Synthesis, segment_starts_s: list[float]) -> list[list[tuple[float, float]]]:
    """(start_s, end_s) of each chunk per segment in the streamed track, as `render.finish_timed` times them: the
    segment's start plus the chunk's place in its segment at the model's rate."""
    gaps = gap_samples(synthesis)
    rate = synthesis.sample_rate
    out = []
    for i, (chunks, start_s) in enumerate(zip(synthesis.chunks, segment_starts_s, strict=True)):
        seg_gaps = [gaps[i]] if gaps is not None else None
        inner = joiner.layout([[len(c) for c in chunks]], [0], synthesis.crossfade, seg_gaps)[0]
        out.append([(start_s + a / rate, start_s + b / rate) for a, b in inner])
    return out


def queue_items(
    worker: Any,
    plan: JobPlan,
    job_id: str,
    *,
    piece_frames: int | Sequence[int] | str | None = FROM_SETTINGS,
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
            timeline = results.timeline_of(event.synthesis, plan, event.chunk_times)
            metadata = results.metadata(
                plan, event.synthesis, event.duration_s, event.sample_rate, size, event.elapsed_s, timeline=timeline
            )
            item["metadata"] = {**metadata, "stream_items": index + 1}
            if plan.captions is not None:
                item["captions"] = captions.render(captions.cues([t for t, _ in timeline]), plan.captions)
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
