#!/usr/bin/env bash
# Build the worker's image with podman from a Debian base made on this machine, then run it twice on a tiny
# checkpoint: as a queue worker (one /runsync job) and in HTTP mode (/ping, one /v1/audio/speech request).
#
#   scripts/test_image.sh [--keep]
#
# Needs root, 32 GB of free disk (use rose ~30 GB at the peak) and 6.5-10 minutes on 2 cores.
# Exits 77 with "image test skipped: <reason>" when this machine can't run it (.ci/run reports that line).
# Everything goes under $QWEN_TTS_IMAGE_WORK (default /var/tmp/qwen3-tts-image): the engine's settings and
# storage, the base's rootfs, the volume with the checkpoint. All of it is removed at the end unless --keep.
# Containers use --network=host and every request goes to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
[[ "${1:-}" == "--keep" ]] && keep=1
work="${QWEN_TTS_IMAGE_WORK:-/var/tmp/qwen3-tts-image}"
image="${QWEN_TTS_IMAGE_TAG:-localhost/qwen3-tts-worker:test}"
base="${QWEN_TTS_IMAGE_BASE:-localhost/debian-bookworm-base}"
min_free_gb="${QWEN_TTS_IMAGE_MIN_FREE_GB:-32}"
queue_port="${QWEN_TTS_IMAGE_QUEUE_PORT:-$((20000 + RANDOM % 10000))}"
http_port="${QWEN_TTS_IMAGE_HTTP_PORT:-$((30000 + RANDOM % 10000))}"
run_id="qwen3-tts-image-test-$$"
started=$(date +%s)

skip() { echo "image test skipped: $*"; exit 77; }
say() { echo "[image test $(($(date +%s) - started))s] $*"; }
step() {  # step NAME COMMAND...: run it and print how long it took
  local name="$1" t0
  shift
  t0=$(date +%s)
  say "$name ..."
  "$@"
  say "$name took $(($(date +%s) - t0))s"
}

[[ -n "${QWEN_TTS_SKIP_IMAGE_TEST:-}" ]] && skip "QWEN_TTS_SKIP_IMAGE_TEST is set"
[[ $(id -u) -eq 0 ]] || skip "it needs root (debootstrap, podman's root storage)"

# -- tools ----------------------------------------------------------------------------------------------------
install_tools() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman buildah runc \
    fuse-overlayfs debootstrap slirp4netns uidmap netavark aardvark-dns containernetworking-plugins >/dev/null
}
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  command -v apt-get >/dev/null || skip "podman/debootstrap are missing and there is no apt-get to install them"
  step "installing podman and debootstrap" install_tools || skip "podman could not be installed from Debian packages"
fi

mkdir -p "$work"
free_gb=$(($(df --output=avail -k "$work" | tail -1) / 1024 / 1024))
((free_gb >= min_free_gb)) || skip "$free_gb GB free under $work, the build needs ${min_free_gb} GB"

# Engine settings of our own (/etc untouched). Gotchas on CI's machines: root lacks CAP_SYS_RESOURCE, so podman's
# default ulimits (above the hard open-files limit, 20000 there) fail: ask for the hard limit we have; crun
# refuses their hybrid cgroups, runc works.
nofile=$(ulimit -Hn)
[[ "$nofile" == unlimited ]] && nofile=1048576
runtime=""
command -v runc >/dev/null && runtime='runtime = "runc"'
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
$runtime
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$work/storage.conf" <<EOF
[storage]
driver = "overlay"
runroot = "$work/run"
graphroot = "$work/storage"
EOF
export CONTAINERS_CONF="$work/containers.conf" CONTAINERS_STORAGE_CONF="$work/storage.conf"

cleanup() {
  local rc=$?
  podman rm -f -t 5 "$run_id-queue" "$run_id-http" >/dev/null 2>&1 || true
  if [[ $keep -eq 1 ]]; then
    say "kept: image $image, base $base, storage and volume under $work"
  else
    podman rmi -f "$image" "$base" >/dev/null 2>&1 || true
    rm -rf "$work"
    say "removed the image, the base and $work"
  fi
  say "total $(($(date +%s) - started))s"
  exit $rc
}
trap cleanup EXIT

# -- the base: Debian bookworm from debootstrap, imported (no registry needed) -----------------------------------
make_base() {
  local rootfs="$work/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; return 1; }
  local main
  main=$(grep -m1 '^deb ' "$rootfs/etc/apt/sources.list")
  {
    echo "${main/ bookworm / bookworm-updates }"
    echo "${main/ bookworm / bookworm-security }" | sed 's#/debian #/debian-security #'
  } >>"$rootfs/etc/apt/sources.list"
  # Where egress passes a TLS-intercepting proxy, pip inside the build needs the host's extra CAs. Only this
  # locally made base trusts them; the Dockerfile users build never does.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$rootfs"
}
if ! podman image exists "$base"; then step "making the Debian bookworm base ($base)" make_base; fi
podman run --rm --network=host "$base" true 2>"$work/run-check.log" \
  || skip "this machine can't run containers: $(tail -1 "$work/run-check.log")"

# -- build ------------------------------------------------------------------------------------------------------
build() {
  podman build --pull=never --network=host -f Dockerfile.serverless --build-arg BASE_IMAGE="$base" -t "$image" . \
    >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; return 1; }
}
step "building $image (log: $work/build.log)" build
say "image size: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=si)B"
podman history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$image" | cut -c1-150 | grep -v '^0 B' || true

# -- the tiny checkpoint, built inside the image onto the volume -------------------------------------------------
# Its EOS never comes (see build_tiny_checkpoint.py), so the requests below cap the frames with max_new_tokens:
# without a cap the chunk fails its runaway check, as a real model's would.
volume="$work/volume"
mkdir -p "$volume"
step "building the tiny checkpoint in the container" podman run --rm --network=host -v "$volume:/runpod-volume" \
  "$image" python scripts/build_tiny_checkpoint.py --model-dir /runpod-volume/models --models 1.7B-CustomVoice

logs_of() { echo "--- logs of $1"; podman logs --tail 40 "$1" 2>&1 || true; }
wait_for() {  # wait_for CONTAINER URL CODE: poll until the URL answers CODE (the container must stay up)
  local container="$1" url="$2" want="$3" code
  for _ in $(seq 1 240); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)
    [[ "$code" == "$want" ]] && return 0
    if [[ "$(podman inspect --format '{{.State.Running}}' "$container" 2>/dev/null)" != "true" ]]; then
      echo "$container exited before $url answered"
      logs_of "$container"
      return 1
    fi
    sleep 1
  done
  echo "$url did not answer $want in 240 s (last: $code)"
  logs_of "$container"
  return 1
}
check() {  # check CONTAINER KIND FILE: the result's audio, inside the container (the image's Python)
  podman exec -i "$1" python - "$2" "$3" <<'EOF'
import base64, json, struct, sys

kind, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
if kind == "queue":
    response = json.loads(data)
    assert response.get("status") == "COMPLETED", response
    output = response["output"]
    assert "audio_base64" in output, output
    data = base64.b64decode(output["audio_base64"])
    meta = output["metadata"]
assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[12:16] == b"fmt ", data[:16]
fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[20:36])
assert (fmt, channels, rate, bits) == (1, 1, 24000, 16), (fmt, channels, rate, bits)
at = 12
while data[at:at + 4] != b"data":
    at += 8 + struct.unpack("<I", data[at + 4:at + 8])[0]
samples = (len(data) - at - 8) // 2
duration = samples / rate
assert duration >= 0.5, duration
if kind == "queue":
    assert abs(duration - meta["duration_seconds"]) < 0.01, (duration, meta)
    print(f"queue job: {len(data)} bytes of WAV, 24000 Hz mono PCM16, {duration:.2f} s "
          f"(metadata {meta['duration_seconds']} s, model {meta['model']}, {meta['generation_time_seconds']} s)")
else:
    print(f"HTTP /v1/audio/speech: {len(data)} bytes of WAV, 24000 Hz mono PCM16, {duration:.2f} s")
EOF
}

# -- queue mode: the RunPod SDK's local API, one /runsync job ----------------------------------------------------
queue_test() {
  local container="$run_id-queue" url="http://127.0.0.1:$queue_port"
  podman run -d --name "$container" --network=host -v "$volume:/runpod-volume" -e QWEN_TTS_DEVICE=cpu \
    "$image" python -u handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port "$queue_port" >/dev/null
  wait_for "$container" "$url/openapi.json" 200
  curl -sf --max-time 300 -H 'Content-Type: application/json' "$url/runsync" \
    -d '{"input": {"text": "Hello from the image test.", "voice": "Ryan", "language": "en", "seed": 1, "params": {"max_new_tokens": 20}}}' \
    -o "$volume/queue.json" || { logs_of "$container"; return 1; }
  check "$container" queue /runpod-volume/queue.json || { head -c 600 "$volume/queue.json"; echo; return 1; }
  podman rm -f -t 5 "$container" >/dev/null
}
step "queue mode (python handler.py --rp_serve_api, port $queue_port)" queue_test

# -- HTTP mode: the worker's own server, /ping then one OpenAI speech request --------------------------------------
http_test() {
  local container="$run_id-http" url="http://127.0.0.1:$http_port"
  podman run -d --name "$container" --network=host -v "$volume:/runpod-volume" -e QWEN_TTS_DEVICE=cpu \
    -e QWEN_TTS_MODE=http -e PORT="$http_port" "$image" >/dev/null
  wait_for "$container" "$url/ping" 200
  say "GET /ping: 200 $(curl -s --max-time 5 "$url/ping")"
  curl -sf --max-time 300 -H 'Content-Type: application/json' "$url/v1/audio/speech" \
    -d '{"model": "tts-1", "input": "Hello from the image test.", "voice": "alloy", "response_format": "wav", "seed": 1, "max_new_tokens": 20}' \
    -o "$volume/http.wav" || { logs_of "$container"; return 1; }
  check "$container" http /runpod-volume/http.wav
  podman rm -f -t 5 "$container" >/dev/null
}
step "HTTP mode (QWEN_TTS_MODE=http, port $http_port)" http_test

say "image test passed"
