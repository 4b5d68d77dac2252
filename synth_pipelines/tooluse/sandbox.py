"""Run one tool call for real: the spec's Python function, in a subprocess of its own.

The child is ``python -I`` (isolated: no user site, no ``PYTHON*`` variables) with an empty
environment, its working directory the tool file's folder, and limits set before the tool's module
is imported: address space (``memory_mb``), CPU seconds, and no file writes (``RLIMIT_FSIZE`` 0). The
parent kills it at ``timeout_s`` of wall time. Arguments go in on stdin as JSON and the result comes
back on stdout as JSON, so nothing the tool prints can pass for a result (its own output goes to a
separate pipe that is dropped).

What it does not do: it is not a security boundary against a hostile tool file (the file is the
spec author's own code, from the specs folder, like ``program.module``); it limits what a tool call
made by a model can cost, and makes every recorded result one real execution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

RESULT_CHARS = 4000  # the longest result a trace stores (as text); a longer one fails the call

_RUNNER = r"""
import importlib.util, json, os, resource, sys
memory, cpu_s, path, function = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
result_fd = os.dup(1)
os.dup2(2, 1)  # the tool's prints go to stderr, never into the result
arguments = json.loads(sys.stdin.read())
try:
    spec = importlib.util.spec_from_file_location("synth_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    value = getattr(module, function)(**arguments)
    out = {"ok": True, "result": json.loads(json.dumps(value, default=str))}
except MemoryError:
    out = {"ok": False, "error": "MemoryError: the tool went over its memory limit"}
except BaseException as e:
    out = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
os.write(result_fd, json.dumps(out).encode())
"""


class ToolRun(BaseModel):
    """One execution: the result (JSON-able) or why there is none."""

    ok: bool
    result: Any = None
    error: str | None = None

    def text(self) -> str:
        """The result as the trace stores it and the model reads it."""
        if not self.ok:
            return f"error: {self.error}"
        return self.result if isinstance(self.result, str) else json.dumps(self.result, ensure_ascii=False)

    def within_limit(self) -> ToolRun:
        """This run, or a failed one when its result is too long to store whole: a cut JSON result
        would be a broken ``tool`` message in the training data."""
        if self.ok and len(self.text()) > RESULT_CHARS:
            return ToolRun(
                ok=False,
                error=f"the result has {len(self.text()):,} characters, over the {RESULT_CHARS:,} a trace "
                "stores; ask for less (a narrower query, fewer rows)",
            )
        return self


def run_tool(
    module_file: Path, function: str, arguments: dict[str, Any], *, timeout_s: float, memory_mb: int
) -> ToolRun:
    """Call ``function(**arguments)`` from ``module_file`` in a limited subprocess."""
    cpu_s = max(1, int(timeout_s) + 1)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-I",
                "-c",
                _RUNNER,
                str(memory_mb << 20),
                str(cpu_s),
                str(module_file),
                function,
            ],
            input=json.dumps(arguments),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={"PATH": os.defpath},
            cwd=module_file.parent,
        )
    except subprocess.TimeoutExpired:
        return ToolRun(ok=False, error=f"timed out after {timeout_s:g} s")
    if done.returncode != 0 or not done.stdout.strip():
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return ToolRun(ok=False, error=f"the tool process died ({reason[:300]})")
    try:
        return ToolRun.model_validate(json.loads(done.stdout))
    except ValueError:
        return ToolRun(ok=False, error="the tool process wrote no readable result")
