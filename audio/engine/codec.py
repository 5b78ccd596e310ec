"""Codec frames to audio: the whole-batch decode exactly as qwen_tts does it, and an incremental decoder.

Whole results go through `speech_tokenizer.decode` once per generated batch, a cloned voice's reference codes
prepended and cut off again by proportion, as qwen_tts's `generate_voice_clone` does. The 12 Hz decoder is
deterministic but not bit-stable across batch shapes and lengths, so this is what keeps a whole result
byte-identical to the reference engine's.

`IncrementalDecoder` serves streaming: frames in, audio out in pieces whose sizes follow a schedule (say 1, 2, 4, 8,
12 frames, the last size repeating: first audio after one frame). It decodes with `codec_stream.StatefulDecoder`,
which carries the decoder's state between pieces, so the pieces joined equal one decode of all the frames (no
re-decoded context: a piece costs what its new frames cost). A cloned voice's reference codes are decoded first,
as the whole decode prepends them, and their audio dropped.

A piece is *issued* without waiting for it: `push` / `flush` return a `host_reads.HostRead`. On CUDA the decode
runs on the engine's decode stream (after the frames' work on the current stream), its audio is copied into pinned
host memory and an event recorded, and the read is `ready()` once the audio has landed; the generation goes on
meanwhile. Without a decode stream (CPU) the decode is done at once and the read is ready.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from audio.engine.host_reads import HostRead, HostReader


def decode_whole(tts: Any, codes: Sequence[torch.Tensor], ref_codes: Sequence[torch.Tensor | None]) -> list[np.ndarray]:
    """Audio per row from its frames [n, groups]; rows with `ref_codes` are decoded after them and cut."""
    full = [c if r is None else torch.cat([r.to(c.device), c], dim=0) for c, r in zip(codes, ref_codes, strict=True)]
    wavs, _ = tts.model.speech_tokenizer.decode([{"audio_codes": c} for c in full])
    out = []
    for wav, ref, whole in zip(wavs, ref_codes, full, strict=True):
        if ref is not None:
            wav = wav[int(int(ref.shape[0]) / max(int(whole.shape[0]), 1) * wav.shape[0]) :]
        out.append(np.asarray(wav, dtype=np.float32).reshape(-1))
    return out


def piece_schedule(piece_frames: int | Sequence[int]) -> tuple[int, ...]:
    """Piece sizes in frames: an int is one size; a sequence is the sizes in order, the last one repeating."""
    sizes = (piece_frames,) if isinstance(piece_frames, int) else tuple(piece_frames)
    if not sizes or any(int(n) < 1 for n in sizes):
        raise ValueError(f"piece sizes must be positive frame counts, got {piece_frames!r}")
    return tuple(int(n) for n in sizes)


class IncrementalDecoder:
    """One row's frames in, audio out in pieces as they are ready.

    `stream`: a CUDA stream the decodes run on (None: on the current stream, at once); `reader` copies each piece's
    audio to the host (default a `HostReader` on the codec's device; tests pass one whose reads land late)."""

    def __init__(
        self,
        tts: Any,
        *,
        piece_frames: int | Sequence[int],
        ref_codes: torch.Tensor | None = None,
        stream: Any = None,
        reader: HostReader | None = None,
    ):
        from audio.engine.codec_stream import StatefulDecoder

        tokenizer = tts.model.speech_tokenizer
        self._device = tokenizer.device
        self._stream = stream
        self._reader = reader if reader is not None else HostReader(torch.device(self._device))
        self._state = StatefulDecoder(tokenizer.model.decoder)
        self.schedule = piece_schedule(piece_frames)
        self.pieces_out = 0
        self._frames_out = 0
        self._waiting: list[torch.Tensor] = []
        self._made: Any = None  # the event recorded after the last frame pushed, when the loop gave one
        if ref_codes is not None and len(ref_codes):
            window = _codes_window(list(ref_codes.to(self._device)))
            with self._on_stream([window]):
                self._state.decode(window)  # context only: its audio is dropped

    @property
    def frames_out(self) -> int:
        """Frames of this row's own (generated) audio released (issued) so far."""
        return self._frames_out

    @property
    def next_piece_frames(self) -> int:
        return self.schedule[min(self.pieces_out, len(self.schedule) - 1)]

    def push(self, frame: torch.Tensor, made: Any = None) -> HostRead | None:
        """Add one frame [groups] (`made`: a CUDA event recorded after it was generated, if there is one); when the
        next piece's frames are all here, its decode issued: the audio (float32, host) once the read is `ready()`."""
        self._waiting.append(frame)
        if made is not None:
            self._made = made
        if len(self._waiting) >= self.next_piece_frames:
            return self._issue()
        return None

    def flush(self) -> HostRead | None:
        """The decode of the frames still waiting, issued, if any."""
        return self._issue() if self._waiting else None

    @torch.inference_mode()
    def _issue(self) -> HostRead:
        frames = [f.to(self._device) for f in self._waiting]
        self._frames_out += len(self._waiting)
        self.pieces_out += 1
        self._waiting = []
        with self._on_stream(frames):  # the window, the decode, the copy and its event, after those frames only
            return self._reader.read(self._state.decode(_codes_window(frames)).float())

    @contextlib.contextmanager
    def _on_stream(self, inputs: list[torch.Tensor]) -> Iterator[None]:
        """On the decode stream, if there is one (the decoder's state then lives on that stream only)."""
        if self._stream is None:
            yield
            return
        # Wait for the event recorded after the last frame (the loop runs frames ahead of the host's reads: waiting
        # for the whole current stream would hold the first piece back until those are done), else for everything
        # queued so far; the inputs were made on the current stream, so their memory is kept until this one is done.
        if self._made is not None:
            self._stream.wait_event(self._made)
        else:
            self._stream.wait_stream(torch.cuda.current_stream(self._stream.device))
        for tensor in inputs:
            tensor.record_stream(self._stream)
        with torch.cuda.stream(self._stream):
            yield


def _codes_window(frames: list[torch.Tensor]) -> torch.Tensor:
    """Frames [groups] each as the decoder's input [1, groups, frames] (negative padding codes clamped, as
    qwen_tts's decode does)."""
    return torch.stack(frames).clamp(min=0).T.unsqueeze(0)
