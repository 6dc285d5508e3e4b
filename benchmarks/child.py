"""Running one measurement in a fresh Python process (shared by the benchmark scripts).

Each benchmark re-runs its own module (``python -m benchmarks.<name>``) with
``--single``/``--limits`` arguments so every size and device count starts with a clean
heap and its own XLA device count; the child prints its result as the last line of
stdout, in JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env(devices: int) -> dict:
    """Environment of a child on the CPU with ``devices`` virtual host devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    return env


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_child(module: str, args: list[str], devices: int = 1, timeout: float | None = None) -> tuple[dict | None, str]:
    """Run ``python -m module`` with ``args`` in a fresh process; ``(its JSON result, "")``
    or ``(None, why)``."""
    cmd = [sys.executable, "-m", module, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(devices), timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr or b""
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
        return None, f"timed out after {timeout:g} s\n{tail(err)}"
    if p.returncode:
        return None, f"exit status {p.returncode}\n{tail(p.stderr)}"
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), ""
    except (IndexError, json.JSONDecodeError):
        return None, f"no JSON result on stdout\n{tail(p.stdout + p.stderr)}"
