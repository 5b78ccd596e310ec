#!/usr/bin/env bash
# The fast engine on a CUDA machine: `scripts/gpu_check.sh [--model-dir DIR] [--model NAME]`.
#   1. builds the tiny checkpoints (dead-EOS and live-EOS, under .cache/);
#   2. runs the engine tests on CUDA in fp32 with TF32 off, eager and with CUDA graphs: greedy fast == reference
#      (frames and result bytes), batch independence, retries, incremental decode; then in bf16 graphs vs eager;
#   3. prints the engine benchmark in bf16 for reference / fast (eager) / fast-graphs at batch 1, 8 and 16,
#      with cold start to first audio (graph capture included);
#   4. builds full-depth real-shape checkpoints (random weights, `build_tiny_checkpoint.py --real-shapes`) and runs
#      the real-shape tests on them in fp32 with CUDA graphs (fast == reference, first audio after one frame), and
#      the benchmark on them in bf16;
#   5. with --model-dir, the same benchmark on real weights.
# Uses $PYTHON, else .venv/bin/python, else python3 (with the worker's requirements installed). Exit 1 if a
# test fails. Takes a few minutes with the tiny checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=""
model="0.6B-CustomVoice"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model-dir) model_dir="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    *) echo "usage: $0 [--model-dir DIR] [--model NAME]" >&2; exit 2 ;;
  esac
done
py="${PYTHON:-}"
[[ -z "$py" && -x .venv/bin/python ]] && py=.venv/bin/python
py="${py:-python3}"
export OMP_NUM_THREADS=1 RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true RUNPOD_SKIP_GPU_CHECK=true PYTHONUNBUFFERED=1
started=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - started ))s)"; }

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

step "tiny checkpoints"
"$py" scripts/build_tiny_checkpoint.py --model-dir .cache/tiny-models
"$py" scripts/build_tiny_checkpoint.py --model-dir .cache/tiny-models-live-eos --live-eos --models 1.7B-CustomVoice 0.6B-CustomVoice

tests=(tests/test_engine.py tests/test_engine_pin.py)
step "engine tests, CUDA fp32 (TF32 off), eager"
QWEN_TTS_TEST_DEVICE=cuda QWEN_TTS_TEST_DTYPE=float32 QWEN_TTS_TEST_CUDA_GRAPHS=off "$py" -m pytest -q -p no:cacheprovider "${tests[@]}"
step "engine tests, CUDA fp32 (TF32 off), CUDA graphs"
QWEN_TTS_TEST_DEVICE=cuda QWEN_TTS_TEST_DTYPE=float32 QWEN_TTS_TEST_CUDA_GRAPHS=auto "$py" -m pytest -q -p no:cacheprovider "${tests[@]}"
step "CUDA graphs vs eager, bf16"
QWEN_TTS_TEST_DEVICE=cuda QWEN_TTS_TEST_DTYPE=bfloat16 QWEN_TTS_TEST_CUDA_GRAPHS=auto "$py" -m pytest -q -p no:cacheprovider \
  tests/test_engine.py -k "cuda_graphs_replay or memory"

step "real-shape checkpoints, full depth"
real_env=(QWEN_TTS_TEST_REAL_LAYERS=full QWEN_TTS_TEST_REAL_VOCODER_DIM=1536)
"$py" scripts/build_tiny_checkpoint.py --model-dir .cache/real-shape-models-full-1536 --real-shapes \
  --models 1.7B-CustomVoice 0.6B-CustomVoice 0.6B-Base 1.7B-VoiceDesign
step "real-shape tests, full depth, CUDA fp32 (TF32 off), CUDA graphs"
env "${real_env[@]}" QWEN_TTS_TEST_DEVICE=cuda QWEN_TTS_TEST_DTYPE=float32 QWEN_TTS_TEST_CUDA_GRAPHS=auto \
  "$py" -m pytest -q -p no:cacheprovider -s tests/test_engine_real_shapes.py tests/test_first_audio.py

bench=(scripts/benchmark.py --only-engines --device cuda --dtype bfloat16 --engines reference,fast,fast-graphs
       --engine-batches 1,8,16 --repeats 3 --model "$model")
step "benchmark, tiny checkpoints, bf16"
"$py" "${bench[@]}"
step "benchmark, real-shape checkpoints (random weights, full depth), bf16"
"$py" "${bench[@]}" --model-dir .cache/real-shape-models-full-1536 --engine-frames 120
if [[ -n "$model_dir" ]]; then
  step "benchmark, real weights in $model_dir, bf16"
  "$py" "${bench[@]}" --model-dir "$model_dir" --engine-frames 120
fi
step "done"
