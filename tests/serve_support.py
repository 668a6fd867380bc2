"""A real `zhen serve` process for the tests that need one (test_serve_live.py, test_serve_browser.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request


def start_server(*args: str, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """`zhen serve --port 0 ARGS` on 127.0.0.1; returns the process and its URL once /health answers."""
    process = subprocess.Popen([sys.executable, "-m", "zhen", "serve", "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = process.stdout.readline()  # printed once the model is loaded and the socket listens
    match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    if not match:
        process.kill()
        raise AssertionError(f"no address in {line!r}; stderr: {process.communicate(timeout=30)[1]}")
    url = match.group(1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "health", timeout=10)
            return process, url
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError("the server did not come up") from None
            time.sleep(0.1)


def stop_server(process: subprocess.Popen) -> int:
    """SIGTERM, as a service manager stops it; SIGKILL if it has not exited within 60 s. Returns its status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        stream.close()
    return process.returncode
