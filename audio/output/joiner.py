"""Joining chunk audio into one track: edge-silence trim, equal-power crossfades within a segment, pauses
between segments. Pure functions on numpy arrays; the output is built once, so cost is linear in length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def trim_edges(samples: np.ndarray, sample_rate: int, *, threshold_db: float, pad_ms: float) -> np.ndarray:
    """Cut leading/trailing audio quieter than `threshold_db` (peak, in 10 ms frames), keeping `pad_ms`."""
    frame = max(1, sample_rate // 100)
    if len(samples) == 0:
        return samples
    n_frames = -(-len(samples) // frame)  # the last frame may be partial
    padded = np.zeros(n_frames * frame, dtype=samples.dtype)
    padded[: len(samples)] = np.abs(samples)
    loud = np.flatnonzero(padded.reshape(n_frames, frame).max(axis=1) >= 10.0 ** (threshold_db / 20.0))
    if loud.size == 0:
        return samples
    pad = int(sample_rate * pad_ms / 1000.0)
    start = max(0, int(loud[0]) * frame - pad)
    end = min(len(samples), (int(loud[-1]) + 1) * frame + pad)
    return samples[start:end]


def crossfade_len(a: int, b: int, crossfade: int) -> int:
    return max(0, min(crossfade, a, b))


# A gap between two chunks of a segment: samples of silence between them, or CROSSFADE to overlap them.
CROSSFADE = -1


def layout(
    segments: Sequence[Sequence[int]],
    pauses: Sequence[int],
    crossfade: int,
    gaps: Sequence[Sequence[int]] | None = None,
) -> list[list[tuple[int, int]]]:
    """Where each chunk of these lengths lies in the joined track: (start, end) samples per chunk per segment.

    `pauses[i]` zeros come before segment i > 0. Between chunks j and j+1 of segment i, `gaps[i][j]` zeros, or
    an equal-power crossfade of `crossfade` samples (shortened to the shorter chunk) where it is `CROSSFADE`;
    without `gaps`, every pair crossfades."""
    return _layout(segments, pauses, crossfade, gaps)[0]


def joined_length(
    segments: Sequence[Sequence[int]],
    pauses: Sequence[int],
    crossfade: int,
    gaps: Sequence[Sequence[int]] | None = None,
) -> int:
    """The length `join` will produce for chunks of these lengths: sum - crossfades + gaps + pauses."""
    return _layout(segments, pauses, crossfade, gaps)[1]


def _layout(segments, pauses, crossfade, gaps) -> tuple[list[list[tuple[int, int]]], int]:
    out = []
    pos = 0
    for i, lengths in enumerate(segments):
        if i > 0:
            pos += pauses[i]
        spans = []
        for j, n in enumerate(lengths):
            if j > 0:
                gap = gaps[i][j - 1] if gaps is not None else CROSSFADE
                pos += gap if gap != CROSSFADE else -crossfade_len(lengths[j - 1], n, crossfade)
            spans.append((pos, pos + n))
            pos += n
        out.append(spans)
    return out, pos


def join(
    segments: Sequence[Sequence[np.ndarray]],
    pauses: Sequence[int],
    crossfade: int,
    gaps: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """One track: chunks of a segment separated by their gap of silence or crossfaded (equal power),
    `pauses[i]` zeros before segment i > 0; see `layout`.

    Never crossfades across segments: a new speaker starts after silence, not on top of the last one.
    """
    lengths = [[len(c) for c in seg] for seg in segments]
    spans, total = _layout(lengths, pauses, crossfade, gaps)
    out = np.zeros(total, dtype=np.float32)
    for seg, seg_spans in zip(segments, spans, strict=True):
        prev_end = None
        for chunk, (start, end) in zip(seg, seg_spans, strict=True):
            fade = prev_end - start if prev_end is not None and prev_end > start else 0
            if fade:
                t = (np.arange(fade, dtype=np.float64) + 0.5) / fade
                out[start : start + fade] *= np.cos(t * np.pi / 2).astype(np.float32)
                out[start : start + fade] += chunk[:fade] * np.sin(t * np.pi / 2).astype(np.float32)
                out[start + fade : end] = chunk[fade:]
            else:
                out[start:end] = chunk
            prev_end = end
    return out
