#!/usr/bin/env bash
# Set up a Python environment for the worker: `scripts/setup.sh [--dev | --image] [VENV_DIR]`.
# Installs ffmpeg/sox/espeak-ng (espeak-ng speaks the tests' reference clips) when apt is available and they are
# missing, the pinned requirements, and qwen-tts from them without its dependency list (see requirements.txt for
# why). Idempotent. --image (the Dockerfile's build): nothing for tests (no espeak-ng), and no apt lists or pip
# cache left behind in the layer.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
image=0
case "${1:-}" in
  --dev) dev=1; shift ;;
  --image) image=1; shift ;;
esac
venv="${1:-.venv}"

apt_packages=(ffmpeg sox)
[[ $image -eq 0 ]] && apt_packages+=(espeak-ng)
missing=()
for package in "${apt_packages[@]}"; do command -v "$package" >/dev/null || missing+=("$package"); done
if command -v apt-get >/dev/null 2>&1 && [[ ${#missing[@]} -gt 0 ]]; then
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  apt_options=()
  [[ $image -eq 1 ]] && apt_options+=(--no-install-recommends)
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${apt_options[@]}" "${missing[@]}" >/dev/null
  if [[ $image -eq 1 ]]; then $sudo_cmd apt-get clean && $sudo_cmd rm -rf /var/lib/apt/lists/*; fi
fi
if [[ $image -eq 1 ]]; then export PIP_NO_CACHE_DIR=1; fi

python3 -m venv "$venv"
pip_install() {
  # Some machines' pip.conf names local index folders that don't exist: drop pip's warning per package.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
qwen_tts=$(grep -E '^qwen-tts==' requirements.txt)
pip_install -r <(grep -vE '^qwen-tts==' requirements.txt)
pip_install --no-deps "$qwen_tts"
if [[ $dev -eq 1 ]]; then pip_install -r requirements-dev.txt; fi
# In the image, the import check runs with a scratch HOME and TMPDIR: onnxruntime's import writes a device id
# (~/.cache/Microsoft) and a session file (/tmp/.ses) that would otherwise be baked into the layer.
scratch=$(mktemp -d)
check_env=()
[[ $image -eq 1 ]] && check_env=(HOME="$scratch" TMPDIR="$scratch")
env ${check_env[@]+"${check_env[@]}"} "$venv/bin/python" -c "import qwen_tts, torch, runpod; print('environment ready: torch', torch.__version__)" 2>/dev/null \
  | grep 'environment ready'
rm -rf "$scratch"
