# RunPod serverless worker for Qwen3-TTS.
#
# `Dockerfile` (the name the RunPod Hub builds) and `Dockerfile.serverless` are byte-identical copies, kept so by
# tests/test_scripts.py: edit one, then copy it over the other (`cp Dockerfile.serverless Dockerfile`).
#
#   docker build -f Dockerfile.serverless -t qwen3-tts-worker .
#   docker build -f Dockerfile.serverless --build-arg BAKE_MODEL=1.7B-CustomVoice -t qwen3-tts-worker:baked .
#
# Model weights are NOT in the image: they live on a network volume mounted at /runpod-volume, in
# /runpod-volume/models/Qwen3-TTS-12Hz-<name>/ (python scripts/download_models.py NAME) or in the Hugging Face
# cache layout under /runpod-volume/huggingface-cache/hub (RunPod's cached models). That keeps the image small,
# so workers pull and start faster, and one image serves all five models.

# Base image: Debian 12 (bookworm) slim, with Debian's own Python 3.11, ffmpeg, sox and libsndfile (no PPA, no
# NVIDIA registry). Why that is safe on RunPod's GPUs:
# - The torch 2.9.1 wheels from PyPI bundle their own CUDA 12.8 runtime, cuBLAS and cuDNN (the nvidia-*-cu12
#   wheels), and nothing else in the worker links against system CUDA libraries (onnxruntime is the CPU build).
#   The only thing the GPU needs from the host is the driver (libcuda, nvidia-smi, the /dev/nvidia* devices).
# - RunPod starts containers with the NVIDIA container toolkit, which injects that driver into any image, CUDA
#   based or not, steered by the NVIDIA_* variables of the image (NVIDIA's CUDA images set them; here we do):
#   NVIDIA_VISIBLE_DEVICES unset would make the runtime behave like plain runc (no GPU), and
#   NVIDIA_DRIVER_CAPABILITIES unset means `utility` only (nvidia-smi, no libcuda): `compute` is what CUDA needs.
# - NVIDIA_REQUIRE_CUDA=cuda>=12.8 makes the toolkit refuse a host whose driver is older than the wheels' CUDA
#   runtime, with a clear error instead of a failing `torch.cuda` at the first job; .runpod/hub.json's
#   allowedCudaVersions (12.8 and newer) keeps RunPod from scheduling the worker on such hosts at all.
# The nvidia/cuda "base" image would add only cudart and cuda-compat, which torch does not use (it brings its own
# runtime; the forward-compat libraries matter only for drivers older than 12.8, which allowedCudaVersions
# excludes), on Ubuntu 22.04 whose Python is 3.10 (3.11 meant a PPA). Another BASE_IMAGE (--build-arg
# BASE_IMAGE=...) must be Debian-like with python3.11 in its apt; CI builds on a Debian bookworm base it makes
# itself with debootstrap (scripts/test_image.sh), as no registry is reachable there.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive

ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=12.8"

# ffmpeg: the aac encoder. sox: qwen_tts imports the sox package, which warns at import without the binary.
# libsndfile1: a fallback should soundfile's wheel lack its bundled copy of the library.
# Apt versions are not pinned: the archive keeps only current versions, so pins break later builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
        python3.11 python3.11-venv \
        ffmpeg sox libsndfile1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/bin/python3.11 /usr/local/bin/python3

# Everything Python goes into one venv, first on PATH, so `python`, `pip` and scripts/setup.sh all use it.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: code edits below do not reinstall torch. setup.sh installs
# requirements.txt, then qwen-tts==0.1.1 with --no-deps (its metadata pulls gradio, a demo UI the worker never
# imports, whose pins make pip backtrack for many minutes). No pip cache in the layer (~3 GB of wheels).
COPY requirements.txt ./
COPY scripts/setup.sh scripts/setup.sh
RUN PIP_NO_CACHE_DIR=1 bash scripts/setup.sh --image /opt/venv

# Optional flash-attn (off by default). qwen_tts uses it when importable (attn_implementation=flash_attention_2),
# else PyTorch SDPA, which already has fused attention kernels. Off because: PyPI has no flash-attn wheel, so pip
# compiles it (needs nvcc, i.e. a -cudnn-devel- BASE_IMAGE, and an hour or more) unless a prebuilt wheel for
# exactly torch 2.9 / CUDA 12 / Python 3.11 is given; its binary is tied to the torch version, so a torch bump
# breaks the image; and Qwen3-TTS generation is launch-bound (a nested generate per 80 ms frame), so attention
# kernels are a small share of the time. To try it:
#   --build-arg INSTALL_FLASH_ATTN=1 [--build-arg FLASH_ATTN_SPEC=<wheel URL or flash-attn==VERSION>]
ARG INSTALL_FLASH_ATTN=0
ARG FLASH_ATTN_SPEC=flash-attn
# Its build tools are not pinned (opt-in path); pin flash-attn itself with FLASH_ATTN_SPEC.
# hadolint ignore=DL3013
RUN if [ "$INSTALL_FLASH_ATTN" = "1" ]; then \
        PIP_NO_CACHE_DIR=1 pip install packaging ninja psutil wheel setuptools \
        && MAX_JOBS=4 PIP_NO_CACHE_DIR=1 pip install --no-build-isolation "$FLASH_ATTN_SPEC" \
        && python -c "import flash_attn; print('flash-attn', flash_attn.__version__)"; \
    fi

# Optional: bake one model into the image at /models, for deployments without a network volume (the image grows
# by ~2-4.5 GB and every worker pulls it). Only the downloader and the catalog are copied first, so code edits
# below do not download the model again. With BAKE_MODEL set, QWEN_TTS_MODEL_DIR points at /models; other models
# can still be found in the Hugging Face caches on a volume.
#   --build-arg BAKE_MODEL=1.7B-CustomVoice      (a short name or a full Qwen/... id; HF_TOKEN is not needed)
ARG BAKE_MODEL=""
COPY audio/__init__.py audio/catalog.py audio/
COPY scripts/__init__.py scripts/download_models.py scripts/
# (The Hub client's own cache, e.g. hf_xet's chunk cache, is removed in the same layer.)
RUN if [ -n "$BAKE_MODEL" ]; then \
        python scripts/download_models.py "$BAKE_MODEL" --model-dir /models \
        && rm -rf /root/.cache/huggingface; \
    fi

# Runtime defaults; all QWEN_TTS_* settings are read by audio/settings.py and can be overridden per endpoint.
# HF_HOME on the volume: Hugging Face cache layouts (RunPod cached models, huggingface-cli download) land there.
# HF_HUB_OFFLINE is deliberately not set, so download tools work inside the container.
# RUNPOD_LOG_LEVEL=INFO: the SDK's default, DEBUG, logs every job's whole input and output (base64 audio).
ENV QWEN_TTS_BAKED_MODEL_DIR=${BAKE_MODEL:+/models}
ENV QWEN_TTS_MODEL_DIR=${QWEN_TTS_BAKED_MODEL_DIR:-/runpod-volume/models} \
    HF_HOME=/runpod-volume/huggingface-cache \
    RUNPOD_LOG_LEVEL=INFO

# The worker's code last: it changes most often.
COPY handler.py test_input.json ./
COPY audio/ audio/
COPY scripts/ scripts/

CMD ["python", "-u", "handler.py"]
