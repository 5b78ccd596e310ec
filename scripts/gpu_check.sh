#!/usr/bin/env bash
# The fast engine on a CUDA machine, from a bare image: `scripts/gpu_check.sh OUT_DIR [--cpu-smoke]`.
#   1. python: $PYTHON, else .venv/bin/python, else the machine's python3 with the wheels in .whl/
#      (scripts/fetch_gpu_wheels.sh fills it where a package index is reachable) installed with
#      `pip install --no-index --no-deps --target` into a folder put first on PYTHONPATH: the image's torch stays;
#   2. builds the tiny checkpoints (dead-EOS and live-EOS) and full-size random 1.7B-CustomVoice and
#      0.6B-CustomVoice checkpoints, initialised on the GPU (`build_tiny_checkpoint.py --real-shapes --device cuda`);
#   3. the engine tests on CUDA: fp32 with TF32 off (fast == reference, with CUDA graphs; the sync-free loop),
#      then bf16 (graphs == eager);
#   4. the attention-backend check (`scripts/gpu_check.py attention`: which SDPA kernels the fast loop runs on);
#   5. the benchmark on the full-size checkpoints, bf16, EOS off, fixed frame counts (`scripts/gpu_check.py bench`):
#      reference, fast eager and fast with graphs; ms per frame at batch 1/8/32/64, first audio, real-time
#      factor, aggregate audio seconds per second at concurrency 1/8/16/64;
#   6. OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (also printed); each step's exit status and seconds.
# --real-shape-tests: also the real-shape tests at full depth and width (all four real-shape variants, fp32, graphs;
# several minutes more).
# --cpu-smoke: the same steps on CPU in float32 with the tiny checkpoints only, no tests, two frame counts and small
# batches: CI runs it so the script can't rot. Exit 1 if a step failed. Budget on an H100: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out=""
smoke=0
real_tests=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu-smoke) smoke=1; shift ;;
    --real-shape-tests) real_tests=1; shift ;;
    -*) echo "usage: $0 OUT_DIR [--cpu-smoke | --real-shape-tests]" >&2; exit 2 ;;
    *) out="$1"; shift ;;
  esac
done
[[ -n "$out" ]] || { echo "usage: $0 OUT_DIR [--cpu-smoke]" >&2; exit 2; }
mkdir -p "$out" && out="$(cd "$out" && pwd)"
rm -f "$out"/steps.tsv "$out"/bench.json "$out"/attention.json "$out"/gpu_check.json "$out"/gpu_check.md
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true RUNPOD_SKIP_GPU_CHECK=true
export PYTHONUNBUFFERED=1
cache="${QWEN_TTS_TEST_CACHE:-.cache}"
export QWEN_TTS_TEST_CACHE="$cache"
started=$(date +%s)
failed=0
# step NAME COMMAND...: runs it, records "NAME<TAB>exit<TAB>seconds" in OUT_DIR/steps.tsv, goes on after a failure.
step() {
  local name="$1"; shift
  local t0=$(date +%s)
  echo; echo "== $name ($(( t0 - started ))s)"
  "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$out/steps.tsv"
  [[ $rc -eq 0 ]] || { failed=1; echo "!! $name failed (exit $rc)"; }
  return 0
}

py="${PYTHON:-}"
[[ -z "$py" && -x .venv/bin/python ]] && py=.venv/bin/python
if [[ -z "$py" ]]; then
  py=python3
  if compgen -G ".whl/*.whl" > /dev/null; then
    site="${TMPDIR:-/tmp}/qwen-tts-worker-site"
    echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $site (no index, no deps)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
      || { echo "pip install from .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
"$py" - <<'PY' || { echo "the worker can't be imported with $py: run scripts/fetch_gpu_wheels.sh where an index is reachable, bring .whl/" >&2; exit 1; }
import importlib.metadata as md
import torch
import audio.engine.fast, audio.worker, scripts.gpu_check, tests.conftest  # noqa: F401
print("python ok:", ", ".join(f"{n} {md.version(n)}" for n in ("torch", "transformers", "qwen-tts", "tokenizers")),
      "| CUDA:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY

if [[ $smoke -eq 1 ]]; then
  device=cpu; dtype=float32; real="$cache/tiny-models"
  bench_args=(--frames 2,4 --batches 1,2 --concurrency 1,2 --engines reference,fast,fast-graphs)
  step "tiny checkpoints" "$py" scripts/build_tiny_checkpoint.py --model-dir "$real"
else
  device=cuda; dtype=bfloat16; real="$cache/real-shape-models-full-1536-cuda"
  bench_args=(--frames 40 --batches 1,8,32,64 --concurrency 1,8,16,64)
  step "GPU" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  step "tiny checkpoints" bash -c "'$py' scripts/build_tiny_checkpoint.py --model-dir '$cache/tiny-models' &&
    '$py' scripts/build_tiny_checkpoint.py --model-dir '$cache/tiny-models-live-eos' --live-eos \
      --models 1.7B-CustomVoice 0.6B-CustomVoice"
  step "full-size checkpoints, initialised on the GPU" "$py" scripts/build_tiny_checkpoint.py --model-dir "$real" \
    --real-shapes --device cuda --models 1.7B-CustomVoice 0.6B-CustomVoice
  step "engine tests, CUDA fp32 (TF32 off), CUDA graphs" env QWEN_TTS_TEST_DEVICE=cuda QWEN_TTS_TEST_DTYPE=float32 \
    QWEN_TTS_TEST_CUDA_GRAPHS=auto "$py" -m pytest -q -p no:cacheprovider -x \
    tests/test_engine.py tests/test_engine_pin.py tests/test_sync_free_loop.py tests/test_graph_capture.py \
    tests/test_decode_overlap.py
  step "engine tests, CUDA bf16: graphs == eager" env QWEN_TTS_TEST_DEVICE=cuda QWEN_TTS_TEST_DTYPE=bfloat16 \
    QWEN_TTS_TEST_CUDA_GRAPHS=auto "$py" -m pytest -q -p no:cacheprovider tests/test_engine.py \
    -k "cuda_graphs_replay or memory"
  if [[ $real_tests -eq 1 ]]; then
    step "real-shape tests, full depth, CUDA fp32 (TF32 off), CUDA graphs" env QWEN_TTS_TEST_REAL_LAYERS=full \
      QWEN_TTS_TEST_REAL_VOCODER_DIM=1536 QWEN_TTS_TEST_DEVICE=cuda QWEN_TTS_TEST_DTYPE=float32 \
      QWEN_TTS_TEST_CUDA_GRAPHS=auto "$py" -m pytest -q -p no:cacheprovider tests/test_engine_real_shapes.py \
      tests/test_first_audio.py
  fi
fi
step "attention backends" "$py" scripts/gpu_check.py attention --model-dir "$real" --device $device --dtype $dtype \
  --out "$out/attention.json"
step "benchmark" "$py" scripts/gpu_check.py bench --model-dir "$real" --device $device --dtype $dtype \
  --out "$out/bench.json" "${bench_args[@]}"
echo; echo "== report ($(( $(date +%s) - started ))s)"
"$py" scripts/gpu_check.py report "$out" || failed=1
echo "gpu_check took $(( $(date +%s) - started ))s; results in $out/gpu_check.json and $out/gpu_check.md"
exit $failed
