#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels scripts/gpu_check.sh installs on a bare GPU machine whose image has its
# own python3 (CPython 3.12, x86-64) and torch but not the worker's other needs: `scripts/fetch_gpu_wheels.sh`,
# on any machine with a package index. Each wheel is fetched with --no-deps, so every dependency the image lacks
# is named here (the image's own packages, torch included, are never replaced). Prints the folder's size.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
# What importing the worker, its engine tests and the benchmark needs beyond the image's packages, at the versions
# the project's .venv holds (requirements.txt's pins and what they resolved to). transformers 4.57.3 refuses
# huggingface-hub >= 1 and tokenizers > 0.23.0, which the image has newer, so those travel too, and accelerate at the
# version the worker is tested with (transformers imports it when present).
wheels=(
  qwen-tts==0.1.1 transformers==4.57.3 tokenizers==0.22.2 huggingface_hub==0.36.2 accelerate==1.12.0
  librosa==0.11.0 soundfile==0.14.0 soxr==1.1.0 audioread==3.1.0 decorator==5.3.2 pooch==1.9.0
  platformdirs==4.14.9 cffi==2.1.1 pycparser==3.12 pyloudnorm==0.2.0 pydub==0.25.1
  pydantic==2.14.3 pydantic-core==2.50.4 typing-inspection==0.4.5 annotated-types==0.8.0
  boto3==1.44.5 botocore==1.44.18 s3transfer==0.19.3 jmespath==1.1.0
)
built=(sox==1.5.0)  # pure Python, published as a source archive only: built into a wheel here
rm -rf "$dest" && mkdir -p "$dest"
py="${PYTHON:-}"
[[ -z "$py" && -x .venv/bin/python ]] && py=.venv/bin/python
py="${py:-python3}"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any -d "$dest" "${wheels[@]}"
"$py" -m pip wheel -q --no-deps -w "$dest" "${built[@]}"
ls "$dest"
echo "$(ls "$dest" | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
