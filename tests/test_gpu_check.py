"""scripts/gpu_check.py's report: the JSON and Markdown it writes from the steps' exit codes and the measured parts.
(The script itself runs in CI as `scripts/gpu_check.sh OUT --cpu-smoke`, from .ci/run.)"""

from __future__ import annotations

import json

from scripts import gpu_check

ROW = {
    "model": "0.6B-CustomVoice",
    "engine": "fast",
    "frames": 40,
    "batches": {"1": {"seconds": 0.2, "ms_per_frame": 5.0}, "8": {"seconds": 0.4, "ms_per_frame": 10.0}},
    "rtf_b1": 0.0625,
    "first_audio_s": 0.012,
    "aggregate": {"1": {"seconds": 0.2, "audio_s": 3.2, "audio_s_per_s": 16.0}},
}


def _write(tmp_path, device: str, rc: int = 0) -> dict:
    (tmp_path / "steps.tsv").write_text(f"tiny checkpoints\t0\t3\nbenchmark\t{rc}\t20\n")
    bench = {"device": device, "dtype": "bfloat16", "gpu": None, "batches": [1, 8], "concurrency": [1]}
    skipped = {"model": "0.6B-CustomVoice", "engine": "fast-graphs", "skipped": "no CUDA graphs here"}
    (tmp_path / "bench.json").write_text(json.dumps({**bench, "rows": [ROW, skipped]}))
    attention = {"device": device, "dtype": "bfloat16", "models": {"0.6B-CustomVoice": {
        "math": {"ran": True, "codes_equal": True},
        "flash": {"ran": False, "error": "No available kernel."},
        "efficient": {"ran": True, "codes_equal": False},
        "cudnn": {"ran": False, "error": "No available kernel."},
    }}}  # fmt: skip
    (tmp_path / "attention.json").write_text(json.dumps(attention))
    return gpu_check.report(tmp_path)


def test_the_report_holds_the_steps_and_the_tables(tmp_path):
    result = _write(tmp_path, "cuda")
    assert result["passed"] and result["measured_on_gpu"]
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == result
    md = (tmp_path / "gpu_check.md").read_text().splitlines()
    assert "Not measured on a GPU" not in "\n".join(md)
    assert "| benchmark | 0 | 20 |" in md
    assert "| 0.6B-CustomVoice | ran, codes equal | refused | ran, codes differ | refused | - |" in md
    assert "| 0.6B-CustomVoice | fast | 40 | 5.0 | 10.0 | 0.012 s | 0.062 | 16.00 |" in md
    assert "| 0.6B-CustomVoice | fast-graphs | no CUDA graphs here |" in md


def test_a_cpu_run_is_marked_unmeasured_and_a_failed_step_fails(tmp_path):
    result = _write(tmp_path, "cpu", rc=1)
    assert not result["passed"] and not result["measured_on_gpu"]
    assert (tmp_path / "gpu_check.md").read_text().splitlines()[2].startswith("**Not measured on a GPU**")
