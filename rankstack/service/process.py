"""Run `rankstack serve` as a child process on 127.0.0.1 (used by the crash test and the load benchmark)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir, config, port: int, *, stdout=subprocess.DEVNULL, timeout: float = 600) -> subprocess.Popen:
    """Start the server and wait until ``/ready`` answers 200; raise RuntimeError if it exits or times out."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "rankstack", "-q", "serve", "--config", str(config),
                             "--data-dir", str(data_dir), "--port", str(port)],
                            stdout=stdout, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout:g} s")
