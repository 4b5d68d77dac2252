"""What the benchmarks share: the fake OpenAI-compatible server in a process of its own."""

from __future__ import annotations

import subprocess
import sys


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The fake server in a subprocess (so it never shares the client's GIL) and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "synth_pipelines.testing.fake_openai", "--latency", str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().strip())
    return proc, f"http://127.0.0.1:{port}/v1"


def stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # the server serves until its stdin closes
    proc.wait(10)
