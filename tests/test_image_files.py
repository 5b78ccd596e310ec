"""The image's build files, statically: a Debian base with Debian's Python, the NVIDIA settings the CUDA images carry
(with a CUDA requirement that every allowedCudaVersions meets), an image install without test tools, and the image
test wired into CI. The image itself is built and run by scripts/test_image.sh (.ci/run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile.serverless").read_text()
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
HUB_TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def test_default_base_is_debian_with_its_own_python():
    assert re.search(r"^ARG BASE_IMAGE=debian:bookworm-slim$", DOCKERFILE, re.M)
    assert "FROM ${BASE_IMAGE}" in DOCKERFILE
    assert "python3.11 python3.11-venv" in DOCKERFILE
    assert "add-apt-repository" not in DOCKERFILE  # no PPA: Debian ships Python 3.11


def test_nvidia_settings_of_the_cuda_images():
    env = dict(re.findall(r"(NVIDIA_[A-Z_]+)=(\S+)", DOCKERFILE))
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) >= {"compute", "utility"}
    assert re.fullmatch(r'"cuda>=\d+\.\d+"', env["NVIDIA_REQUIRE_CUDA"])


@pytest.mark.parametrize("config", [HUB["config"], HUB_TESTS["config"]], ids=["hub.json", "tests.json"])
def test_allowed_cuda_versions_meet_the_image_requirement(config):
    """NVIDIA_REQUIRE_CUDA: the toolkit refuses hosts whose driver is older; RunPod must never pick one."""
    required = re.search(r'NVIDIA_REQUIRE_CUDA="cuda>=(\d+\.\d+)"', DOCKERFILE)
    assert required is not None
    assert config["allowedCudaVersions"]
    assert all(_version(v) >= _version(required.group(1)) for v in config["allowedCudaVersions"])


def test_the_requirement_matches_the_cuda_of_the_pinned_torch_wheels():
    """torch 2.9.1 from PyPI bundles CUDA 12.8 (the nvidia-*-cu12 wheels): the requirement says so."""
    torch = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert torch is not None and torch.group(1) == "2.9.1", "torch changed: check its CUDA and NVIDIA_REQUIRE_CUDA"
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=12.8"' in DOCKERFILE


def test_image_install_leaves_no_test_tools_or_caches():
    assert "bash scripts/setup.sh --image /opt/venv" in DOCKERFILE
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "[[ $image -eq 0 ]] && apt_packages+=(espeak-ng)" in setup
    assert "rm -rf /var/lib/apt/lists/*" in setup
    for run in re.findall(r"^RUN apt-get update.*?(?=^\S)", DOCKERFILE, re.M | re.S):
        assert "rm -rf /var/lib/apt/lists/*" in run


def test_ci_runs_the_image_test_and_says_when_it_skips():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("-m pytest") < ci.index("scripts/test_image.sh ||")
    script = (ROOT / "scripts" / "test_image.sh").read_text()
    assert 'echo "image test skipped: $*"; exit 77' in script
    assert "--network=host" in script
    assert "BASE_IMAGE=" in script
