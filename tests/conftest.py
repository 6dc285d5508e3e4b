"""Shared fixtures: one tiny economy and its compiled functions for the whole session.

Every new array shape compiles anew (slow on 2 cores), so tests reuse these and let
hypothesis vary keys and values, not shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

import economy

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Compiled programs are cached on disk and shared with the tests' subprocesses (the
# training update compiles in ~25 s on 2 cores; a subprocess then loads it).
JAX_CACHE = ROOT / ".pytest_cache" / "jax"
jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_cfg() -> economy.EconomyConfig:
    return economy.load_config(CONFIGS / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_env(tiny_cfg) -> economy.Economy:
    return economy.Economy(tiny_cfg)


@pytest.fixture(scope="session")
def tiny_fns(tiny_env):
    """Jitted ``reset``, ``step`` and ``sample_actions`` of the tiny economy."""
    return {
        "reset": jax.jit(tiny_env.reset),
        "step": jax.jit(tiny_env.step),
        "sample": jax.jit(tiny_env.sample_actions),
    }


def subprocess_env(**extra: str) -> dict:
    """Environment for a child Python process (CPU only, repo importable)."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_COMPILATION_CACHE_DIR"] = str(JAX_CACHE)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "2"
    env.update(extra)
    return env
