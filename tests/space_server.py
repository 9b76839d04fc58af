"""Start the Space (`space/app.py`) as its own process on 127.0.0.1 for the Space tests.

The app runs exactly as on a Space (`python app.py`, address from `GRADIO_SERVER_NAME`/`_PORT`), with the
model, length cap and device set through the app's environment variables. Its output goes to a log file
that a failing test shows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "space" / "app.py"
DHF1K_CLIP = REPO_ROOT.parent / "shared" / "data" / "dhf1k_002" / "002.AVI"
# Fast settings: the untrained tiny model and the first 2 s of a video.
TEST_ENVIRONMENT = {
    "DTFSAL_MODEL": "random-tiny",
    "DTFSAL_MAX_SECONDS": "2",
    "DTFSAL_DEVICE": "cpu",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_space(log_path: Path, environment: dict | None = None, timeout: float = 90.0):
    """Yield the URL of the app started on a free port of 127.0.0.1; stop it on exit."""
    port = free_port()
    env = {
        **os.environ,
        **TEST_ENVIRONMENT,
        **(environment or {}),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(APP)], cwd=APP.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(url, process, log_path, timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Space exited with code {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Space did not answer on {url} within {timeout:.0f} s:\n{log_path.read_text()}")
