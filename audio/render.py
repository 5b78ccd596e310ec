"""One finished track from a synthesis: each segment's chunks joined with their pauses and crossfades, segments
levelled and joined, resampled to the output rate, the tempo changed, then encoded; and where each chunk lies in
it. Pure functions of a `Synthesis` and its `JobPlan`.
"""

from __future__ import annotations

import numpy as np

from audio.generator import Synthesis
from audio.output import encoders, joiner, postprocess
from audio.schema import JobPlan

TRUE_PEAK_DBTP = -1.0  # the ceiling under a loudness target (EBU R128 / streaming practice)


def gap_samples(synthesis: Synthesis) -> list[list[int]] | None:
    """`joiner` gaps between chunks of each segment: zeros at the model's rate, or joiner.CROSSFADE."""
    if synthesis.gaps_ms is None:
        return None
    rate = synthesis.sample_rate
    return [[joiner.CROSSFADE if ms is None else round(rate * ms / 1000.0) for ms in seg] for seg in synthesis.gaps_ms]


def finish(synthesis: Synthesis, plan: JobPlan, *, true_peak_dbtp: float = TRUE_PEAK_DBTP) -> tuple[np.ndarray, int]:
    """One track at the output rate (see `finish_timed`)."""
    samples, rate, _ = finish_timed(synthesis, plan, true_peak_dbtp=true_peak_dbtp)
    return samples, rate


def finish_timed(
    synthesis: Synthesis, plan: JobPlan, *, true_peak_dbtp: float = TRUE_PEAK_DBTP
) -> tuple[np.ndarray, int, list[list[tuple[float, float]]]]:
    """One track at the output rate: chunks of a segment joined with their pauses (a crossfade at a forced
    cut), segments levelled (so speakers match) and joined with their pauses, then the tempo change. Built
    in one pass when nothing per segment is needed. Also where each chunk lies in it: (start_s, end_s) per
    chunk per segment, in the delivered track's time."""
    model_rate = synthesis.sample_rate
    rate = plan.sample_rate or model_rate
    pauses = [int(rate * ms / 1000.0) for ms in synthesis.pauses_ms]
    gaps = gap_samples(synthesis)
    lengths = [[len(c) for c in seg] for seg in synthesis.chunks]
    if rate == model_rate and plan.loudness_lufs is None:
        joined = joiner.join(synthesis.chunks, pauses, synthesis.crossfade, gaps)
        spans_s = [
            [(a / rate, b / rate) for a, b in seg] for seg in joiner.layout(lengths, pauses, synthesis.crossfade, gaps)
        ]
    else:
        segments = []
        inner = []
        for i, chunks in enumerate(synthesis.chunks):
            seg_gaps = [gaps[i]] if gaps is not None else None
            audio = joiner.join([chunks], [0], synthesis.crossfade, seg_gaps)
            inner.append(joiner.layout([lengths[i]], [0], synthesis.crossfade, seg_gaps)[0])
            audio = postprocess.resample(audio, model_rate, rate)
            if plan.loudness_lufs is not None:
                audio = postprocess.normalize_loudness(audio, rate, plan.loudness_lufs, true_peak_dbtp=true_peak_dbtp)
            segments.append([audio])
        joined = joiner.join(segments, pauses, crossfade=0)
        starts = [seg[0][0] / rate for seg in joiner.layout([[len(s[0])] for s in segments], pauses, 0)]
        spans_s = [
            [(start + a / model_rate, start + b / model_rate) for a, b in seg]
            for start, seg in zip(starts, inner, strict=True)
        ]
    stretched = postprocess.time_stretch(joined, rate, plan.speed)
    # Times scale with the tempo change; measured on the lengths, so the last chunk ends with the track.
    scale = len(stretched) / len(joined) if len(joined) else 1.0
    end_s = len(stretched) / rate
    timed = [[(min(a * scale, end_s), min(b * scale, end_s)) for a, b in seg] for seg in spans_s]
    return stretched, rate, timed


def track(synthesis: Synthesis, plan: JobPlan) -> tuple[np.ndarray, int, bytes, list[list[tuple[float, float]]]]:
    """Finished samples, their rate, the encoded bytes and each chunk's place in time.

    Under a loudness target the true-peak ceiling holds for what a listener decodes: a lossy codec
    overshoots the peaks it is given (about 1 dB for aac and opus), so the decoded stream is measured and
    the levelling redone under a ceiling lowered by the overshoot (the limiter keeps the loudness)."""
    ceiling = TRUE_PEAK_DBTP
    for _ in range(3):
        samples, rate, timed = finish_timed(synthesis, plan, true_peak_dbtp=ceiling)
        audio = encoders.encode(samples, rate, plan.output_format, wav_header=plan.wav_header)
        if plan.loudness_lufs is None or plan.output_format not in encoders.LOSSY_FORMATS:
            break
        decoded, decoded_rate = encoders.decode(audio, plan.output_format)
        over_db = postprocess.true_peak_dbtp(decoded, decoded_rate) - TRUE_PEAK_DBTP
        if over_db <= 0:
            break
        ceiling -= over_db + 0.1
    return samples, rate, audio, timed


def content_type(plan: JobPlan) -> str:
    return encoders.WAV_CONTENT_TYPE if plan.wav_header else encoders.CONTENT_TYPES[plan.output_format]
