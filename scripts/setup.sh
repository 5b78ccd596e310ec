#!/usr/bin/env bash
# Set up a Python environment for the worker: `scripts/setup.sh [--dev] [VENV_DIR]`.
# Installs ffmpeg/sox/espeak-ng (espeak-ng speaks the tests' reference clips) when apt is available and they are
# missing, the pinned requirements, and qwen-tts from them without its dependency list (see requirements.txt for
# why). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
if [[ "${1:-}" == "--dev" ]]; then dev=1; shift; fi
venv="${1:-.venv}"

if command -v apt-get >/dev/null 2>&1 && { ! command -v ffmpeg >/dev/null || ! command -v sox >/dev/null || ! command -v espeak-ng >/dev/null; }; then
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq ffmpeg sox espeak-ng >/dev/null
fi

python3 -m venv "$venv"
pip_install() {
  # Some machines' pip.conf names local index folders that don't exist: drop pip's warning per package.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
qwen_tts=$(grep -E '^qwen-tts==' requirements.txt)
pip_install -r <(grep -vE '^qwen-tts==' requirements.txt)
pip_install --no-deps "$qwen_tts"
if [[ $dev -eq 1 ]]; then pip_install -r requirements-dev.txt; fi
"$venv/bin/python" -c "import qwen_tts, torch, runpod; print('environment ready: torch', torch.__version__)" 2>/dev/null \
  | grep 'environment ready'
