"""Shared fixtures: one tiny economy and its compiled functions for the whole session.

Every new array shape compiles anew (slow on 2 cores), so tests reuse these and let
hypothesis vary keys and values, not shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

# The tests compile with LLVM's optimisation off (XLA's own graph passes still run): the
# suite is compile-bound on 2 cores, and this takes 20-35 % off its time. The numbers every
# test compares agree at its tolerance; benchmarks and users run XLA's default level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import numpy as np
import pytest

import economy

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Compiled programs are cached on disk and shared with the tests' subprocesses (the
# training update compiles in ~25 s on 2 cores; a subprocess then loads it).
JAX_CACHE = ROOT / ".pytest_cache" / "jax"
jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session", autouse=True)
def agora_cache(tmp_path_factory) -> Path:
    """The welfare-frontier cache (``$AGORA_FRONTIER_CACHE``) of this test session: fresh,
    never the user's, inherited by the tests' subprocesses. (``$AGORA_CACHE`` is left alone:
    the native kernels are built there and loaded once per process.)"""
    path = tmp_path_factory.mktemp("frontier_cache")
    os.environ["AGORA_FRONTIER_CACHE"] = str(path)
    return path


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
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    flags = extra.pop("XLA_FLAGS", "")
    env.update(extra)
    env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), flags) if f)
    return env


# Two-sided tail of 5 standard deviations of a normal: the per-entry significance of
# :func:`assert_frequencies` (about 5.7e-7, so a few hundred entries at once stay far
# from a false alarm).
FREQ_ALPHA = 5.733e-7


def assert_frequencies(counts, p, alpha: float = FREQ_ALPHA, err_msg: str = "") -> None:
    """Counts of ``n`` independent categorical draws against their probabilities ``p``,
    entry by entry: each count must lie in the two-sided exact binomial interval
    ``Binomial(n, p_i)`` at significance ``alpha`` (the 5-sigma level by default). For many
    expected draws this is ``|f_i - p_i| <= 5 sqrt(p_i (1 - p_i) / n)``; for few it stays
    exact; a choice of probability 0 (masked) must never be drawn."""
    from scipy import stats

    counts = np.asarray(counts, np.int64)
    p = np.asarray(p, np.float64)
    assert counts.shape == p.shape, (counts.shape, p.shape)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6, err_msg=err_msg)
    n = int(counts.sum())
    lo = stats.binom.ppf(alpha / 2, n, p)
    hi = stats.binom.isf(alpha / 2, n, p)
    hi = np.where(p > 0, hi, 0.0)  # probability 0: nothing may be drawn
    bad = (counts < lo) | (counts > hi)
    assert not bad.any(), (
        f"{err_msg} draws outside the binomial {1 - alpha:.7f} interval at entries {np.flatnonzero(bad)}: "
        f"counts {counts[bad]}, expected {n * p[bad]}, interval {lo[bad]}..{hi[bad]}"
    )


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def chromium(tmp_path):
    """Headless Chromium through selenium (skipped without it, a failure under CI=true)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        msg = f"headless Chromium not installed ({', '.join(missing)} missing; apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " -- CI must install it (.ci/run)")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1024"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
