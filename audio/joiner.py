"""Joining chunk audio into one track: edge-silence trim, equal-power crossfades within a segment, pauses
between segments. Pure functions on numpy arrays; the output is built once, so cost is linear in length.
"""

from __future__ import annotations

import itertools
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


def joined_length(segments: Sequence[Sequence[int]], pauses: Sequence[int], crossfade: int) -> int:
    """The length `join` will produce for chunks of these lengths: sum - crossfades + pauses."""
    total = 0
    for i, lengths in enumerate(segments):
        if i > 0:
            total += pauses[i]
        total += sum(lengths)
        total -= sum(crossfade_len(a, b, crossfade) for a, b in itertools.pairwise(lengths))
    return total


def join(segments: Sequence[Sequence[np.ndarray]], pauses: Sequence[int], crossfade: int) -> np.ndarray:
    """One track: chunks of a segment crossfaded (equal power), `pauses[i]` zeros before segment i > 0.

    Never crossfades across segments: a new speaker starts after silence, not on top of the last one.
    """
    lengths = [[len(c) for c in seg] for seg in segments]
    out = np.zeros(joined_length(lengths, pauses, crossfade), dtype=np.float32)
    pos = 0
    for i, seg in enumerate(segments):
        if i > 0:
            pos += pauses[i]
        prev_len = 0
        for chunk in seg:
            fade = crossfade_len(prev_len, len(chunk), crossfade)
            if fade:
                t = (np.arange(fade, dtype=np.float64) + 0.5) / fade
                pos -= fade
                out[pos : pos + fade] *= np.cos(t * np.pi / 2).astype(np.float32)
                out[pos : pos + fade] += chunk[:fade] * np.sin(t * np.pi / 2).astype(np.float32)
                out[pos + fade : pos + len(chunk)] = chunk[fade:]
            else:
                out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            prev_len = len(chunk)
    return out
