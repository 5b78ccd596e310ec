"""Tests for scripts/benchmark.py: the join-cost measurement's output length and the results table's rows.

No timings are asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import copy

import pytest

from audio.output.joiner import joined_length
from scripts import benchmark as bm

CANNED = {
    "tiny_model": True,
    "environment": {
        "model": "0.6B-CustomVoice",
        "model_dir": "/x/.cache/tiny-models",
        "device": "cpu",
        "dtype": "float32",
        "attention": "sdpa",
        "torch_threads": "1 (OMP_NUM_THREADS=1)",
        "torch": "2.9.1",
        "qwen_tts": "0.1.1",
        "host": "x86_64, 2 CPUs, Python 3.11.7",
    },
    "load_s": 5.0,
    "batching": {
        "chunks": 16,
        "max_new_tokens": 13,
        "batched": {
            "max_batch": 8,
            "wall_s": 2.0,
            "model_s": 1.99,
            "calls": 2,
            "frames": 192,
            "retries": 0,
            "s_per_call": 0.995,
            "ms_per_step": 82.9,
            "ms_per_chunk_frame": 10.36,
        },
        "per_chunk": {
            "max_batch": 1,
            "wall_s": 9.0,
            "model_s": 8.98,
            "calls": 16,
            "frames": 192,
            "retries": 0,
            "s_per_call": 0.561,
            "ms_per_step": 46.8,
            "ms_per_chunk_frame": 46.8,
        },
        "speedup": 4.5,
    },
    "overhead": {
        "total_s": 2.0,
        "model_s": 1.9,
        "outside_s": 0.1,
        "outside_share": 0.05,
        "audio_s": 14.76,
        "chunks": 16,
        "retries": 0,
        "parts": {"split": 0.0004, "encode wav": 0.0025},
    },
    "join_repeats": 3,
    "join": [
        {
            "minutes": 10,
            "segments": 10,
            "chunks": 60,
            "seconds": 0.15,
            "length": 14416800,
            "expected_length": 14416800,
            "length_ok": True,
        },
        {
            "minutes": 60,
            "segments": 60,
            "chunks": 360,
            "seconds": 0.7,
            "length": 86536800,
            "expected_length": 86536800,
            "length_ok": True,
        },
    ],
    "join_cold": {
        "minutes": 60,
        "segments": 60,
        "chunks": 360,
        "seconds": 2.25,
        "length": 86536800,
        "expected_length": 86536800,
        "length_ok": True,
    },
    "join_worker_path": {
        "minutes": 60,
        "segments": 60,
        "chunks": 360,
        "seconds": 1.5,
        "length": 86536800,
        "expected_length": 86536800,
        "length_ok": True,
    },
}


@pytest.mark.parametrize("worker_path", [False, True], ids=["one-join", "worker-path"])
def test_join_cost_output_has_joined_length(worker_path):
    # 2 minutes of 10-s chunks: 12 chunks in 2 segments of 6, so both a crossfade and a pause are counted.
    result = bm.join_cost(
        2,
        sample_rate=24000,
        chunk_s=10.0,
        chunks_per_segment=6,
        crossfade_ms=40.0,
        pause_ms=300,
        worker_path=worker_path,
    )
    chunk = 240_000
    assert (result["segments"], result["chunks"]) == (2, 12)
    assert result["length"] == joined_length([[chunk] * 6, [chunk] * 6], [0, 7_200], 960)
    assert result["length"] == result["expected_length"] == 12 * chunk - 10 * 960 + 7_200
    assert result["length_ok"] is True


def test_format_table_rows():
    lines = bm.format_table(CANNED).splitlines()
    assert lines[1].startswith("!! TINY RANDOM MODEL")
    assert "device        cpu" in lines
    assert "torch_threads 1 (OMP_NUM_THREADS=1)" in lines
    expected = [
        "measurement                                          value  target    result  note",
        "[1] batched vs per-chunk: 16 chunks, max_new_tokens=13 (12 frames/chunk)",
        "  batched (max_batch=8)                            2.000 s                    "
        "2 calls, 192 frames, model 1.990 s, 0 retries",
        "  per-chunk (max_batch=1)                          9.000 s                    "
        "16 calls, 192 frames, model 8.980 s, 0 retries",
        "  speed-up (per-chunk / batched)                     4.50x  >= 3x     PASS",
        "  time per call B=8 / B=1                          0.995 s                    0.561 s",
        "  time per decode step B=8 / B=1                   82.9 ms                    46.8 ms",
        "  time per chunk-frame B=8 / B=1                   10.4 ms                    46.8 ms",
        "[2] Worker.handle job: 16 chunks, 14.76 s of audio, wav",
        "  job total                                        2.000 s                    0 retries",
        "  inside the model                                 1.900 s                    generate calls",
        "  outside the model                                0.100 s",
        "  outside share                                       5.0%  <= 10%    PASS",
        "    split                                           0.4 ms                    re-timed on the job's data",
        "    encode wav                                      2.5 ms                    re-timed on the job's data",
        "    rest (python, logging, seeds, ...)             97.1 ms",
        "[3] join at 24000 Hz: 10-s chunks, 6 per segment, crossfade 40 ms, pause 300 ms, median of 3",
        "  join 10 min (10 segments, 60 chunks)             0.150 s                    "
        "length 14,416,800 == joined_length",
        "  join 60 min (60 segments, 360 chunks)            0.700 s  <= 2 s    PASS    "
        "length 86,536,800 == joined_length",
        "  join 60 min, first in process (cold)             2.250 s                    page faults",
        "  worker path 60 min (segments, then finish)       1.500 s                    "
        "length 86,536,800 == joined_length",
        "-" * 82,
        "checks: 6/6 passed",
    ]
    start = lines.index(expected[0])
    assert lines[start + 2 :] == expected[1:]


def test_format_table_reports_missed_targets():
    result = copy.deepcopy(CANNED)
    result["tiny_model"] = False
    result["batching"]["speedup"] = 2.5
    result["join"][1].update(seconds=2.5, length=86536799, length_ok=False)
    lines = bm.format_table(result).splitlines()
    assert not any(line.startswith("!!") for line in lines)
    assert "  speed-up (per-chunk / batched)                     2.50x  >= 3x     MISS" in lines
    assert (
        "  join 60 min (60 segments, 360 chunks)            2.500 s  <= 2 s    MISS    length 86,536,799 != 86,536,800"
    ) in lines
    assert lines[-1] == "checks: 3/6 passed; failed: batched speed-up, join 60 min length, join 60 min time"


@pytest.mark.slow
def test_engines_side_by_side_on_the_tiny_model(tiny_model_dir):
    from scripts.bench_engines import bench_engines, checks, format_rows, speedups

    env = {"QWEN_TTS_MODEL_DIR": str(tiny_model_dir), "QWEN_TTS_PRELOAD": "none", "HF_HOME": str(tiny_model_dir)}
    result = bench_engines(env, "0.6B-CustomVoice", ["reference", "fast"], batches=[1, 2], frames=3, repeats=1, seed=1)
    rows = {r["engine"]: r for r in result["rows"]}
    for row in rows.values():
        assert [row["b1"]["frames"], row["b2"]["frames"]] == [3, 3]  # EOS is dead: every chunk is its budget
        assert row["job"]["chunks"] == 8
        assert row["cuda_graphs"] is False
        assert row["guard"]["batch"] == 2
    # The fast engine streams: its first second comes before the whole chunk; the reference has it only at the end.
    assert rows["fast"]["first_audio"]["first_s"] < rows["fast"]["first_audio"]["whole_s"]
    assert rows["fast"]["first_audio"]["first_piece_s"] <= rows["fast"]["first_audio"]["first_s"]
    assert rows["fast"]["first_audio"]["first_piece_audio_s"] == 1 / 12.5  # one frame
    assert rows["reference"]["first_audio"]["first_s"] == rows["reference"]["first_audio"]["whole_s"]
    assert speedups(result)["reference"] == {1: 1.0, 2: 1.0}
    assert [c["name"] for c in checks(result, on_gpu=False)] == ["fast >= 3x reference at B=1"]
    lines = format_rows(result)
    assert lines[1].split() == [
        "engine",
        "B=1",
        "B=2",
        "8-chunk",
        "job",
        "first",
        "piece",
        "first",
        "1",
        "s",
        "whole",
        "5",
        "s",
        "cold",
        "start",
        "graphs",
    ]
    assert [line.split()[0] for line in lines[2:4]] == ["reference", "fast"]
    assert [line.split()[:3] for line in lines[4:]] == [["guard", "on", "reference"], ["guard", "on", "fast"]]
