"""Native kernels as XLA FFI custom calls on the CPU: how they are built and loaded, and
the economy's own, the market kernel (``native_market.cc``).

**Building.** A kernel library is compiled on first use with the system's C++ compiler
against ``jax.ffi.include_dir()`` (and this folder, for the shared ``native_pool.h``) into
a cache folder (``$AGORA_CACHE``, default ``$XDG_CACHE_HOME/agora`` or ``~/.cache/agora``),
named by a hash of the source, the shared header, the flags and the jaxlib version; the
``.so`` is written under a temporary name and renamed, so concurrent processes never load
a half-written file. A library is unavailable (and its callers use their XLA paths) where
it cannot work: not x86-64, no AVX2/FMA, no compiler, a failed build, not the CPU backend,
or ``AGORA_NATIVE=0`` in the environment. :mod:`agents.native` (acting and the PPO loss's
kernels) builds its library the same way.

**The market kernel.** :func:`market` runs a step's orders, auctions, settlement and
consumption per market in one pass over each market's orders (see ``native_market.cc``): the same
integers as :mod:`economy.market` and the XLA path of :meth:`economy.Economy._step`, which
stays the reference (tests/test_native_market.py checks them bit for bit). :func:`work`
does the integer part of the step's work (the units each agent can do, its goods after
work, the market's sums produced and used) once per agent, where XLA recomputed the caps in
every output that read the units (tests/test_production.py checks it against the work's
NumPy definition).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).parent
HEADER = HERE / "native_pool.h"
SOURCE = HERE / "native_market.cc"
TARGETS = {"agora_market": "AgoraMarket", "agora_work": "AgoraWork", "agora_observe": "AgoraObserve"}
FLAGS = ("-O3", "-mavx2", "-mfma", "-std=c++17", "-fPIC", "-shared")
# The market kernel's float32 operations must round as XLA's do: no fused multiply-adds.
MARKET_FLAGS = FLAGS + ("-ffp-contract=off",)


def cache_dir() -> Path:
    if os.environ.get("AGORA_CACHE"):
        return Path(os.environ["AGORA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agora"


def cpu_supported() -> tuple[bool, str]:
    """``(True, "")`` on an x86-64 CPU with AVX2 and FMA, else ``(False, why not)``."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False, f"not an x86-64 CPU ({platform.machine()})"
    try:
        flags = next(
            (line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("flags")), [],
        )
    except OSError:
        return False, "cannot read /proc/cpuinfo"
    missing = [f for f in ("avx2", "fma") if f not in flags]
    return (not missing), (f"CPU lacks {', '.join(missing)}" if missing else "")


def build_library(source: Path, force: bool = False, flags: tuple[str, ...] = FLAGS) -> Path:
    """Compile ``source`` with ``flags`` (if its cached build is missing, or ``force``) and return the
    library's path. Raises ``RuntimeError`` naming the compiler's complaint on failure."""
    import jaxlib

    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    text = Path(source).read_bytes() + HEADER.read_bytes()
    tag = hashlib.sha256(text + repr((flags, jaxlib.__version__, cxx)).encode()).hexdigest()[:16]
    out = cache_dir() / f"{Path(source).stem}-{tag}.so"
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cxx, *flags, f"-I{jax.ffi.include_dir()}", f"-I{HERE}", str(source), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"building {Path(source).name} failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load_library(source: Path, targets: dict[str, str], flags: tuple[str, ...] = FLAGS) -> str:
    """Build ``source``, load it and register its custom calls (``{target: symbol}``); ''
    on success, else why not."""
    if os.environ.get("AGORA_NATIVE", "1") == "0":
        return "AGORA_NATIVE=0"
    if jax.default_backend() != "cpu":
        return f"backend is {jax.default_backend()}, the native kernels are for the CPU"
    ok, why = cpu_supported()
    if not ok:
        return why
    try:
        lib = ctypes.cdll.LoadLibrary(str(build_library(source, flags=flags)))
        for target, symbol in targets.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except Exception as e:  # noqa: BLE001 - any failure means: use the XLA path
        return f"{type(e).__name__}: {e}"
    return ""


@functools.cache
def _load() -> str:
    return load_library(SOURCE, TARGETS, MARKET_FLAGS)


def usable(why: str, fallback: str) -> bool:
    """``not why`` (a :func:`load_library` answer); when a library cannot run, a warning
    says why and what runs instead (``fallback``), once (none for ``AGORA_NATIVE=0``)."""
    if why and why != "AGORA_NATIVE=0":
        _warn_once(why, fallback)
    return not why


@functools.cache
def _warn_once(why: str, fallback: str) -> None:
    warnings.warn(f"native kernels unavailable ({why}); {fallback}", RuntimeWarning, stacklevel=4)


def available() -> bool:
    """Whether :func:`market` can run here (builds and registers the library on first call);
    where it cannot, the economy uses its XLA auction (:func:`usable` warns once)."""
    return usable(_load(), "the economy steps with XLA's auction")


def _i32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.int32)


def market(side, quantity, tick, held, money, grid, lottery, counter, rates, *, max_holding: int, levels):
    """Orders, call auctions, settlement and consumption of every market in one custom call.

    ``side``, ``quantity`` (a quantity level: the units wanted are ``levels[quantity]``),
    ``tick`` (the actions, clipped into range here as the step's reference clips them), ``held`` (holdings
    after work): int32 ``[..., M, B, G]``; ``money`` int32 ``[..., M, B]``; ``grid`` int32
    ``[..., M, G, L]`` (:func:`economy.market.price_grid`); ``lottery`` float32 ``[..., M,
    G, 2]``; ``counter`` uint32 ``[..., M, 4]``: consumption's two seeds
    (:func:`economy.rng.seeds`), the counter of the market's first entry (its first agent's
    index in the world x ``real``) and ``real``, the goods count of the counter's rows
    (:func:`economy.rng.bits` with ``logical``); ``rates`` float32 ``[..., M, 2, G]``: each
    good's share eaten and its perish rate. Each order is clipped to what its agent owns and
    can pay as in :meth:`economy.Economy._step`, the books cleared as
    :func:`economy.market.clear`, the trades settled, and consumption drawn as
    :func:`economy.utility.consume` with :func:`economy.rng.uniform_pair`'s uniforms.
    Returns int32 ``(goods [..., M, B, G] after consumption, eaten (the same shape), eaten
    [..., M, G] and eaten plus spoiled [..., M, G] summed over each market's agents, money
    [..., M, B], proceeds [..., M, B], clearing price [..., M, G], volume [..., M, G])``,
    ``proceeds`` being each agent's sales at the clearing prices."""
    shape = side.shape
    lead, (b, g) = shape[:-2], shape[-2:]
    call = jax.ffi.ffi_call(
        "agora_market",
        (_i32(*shape), _i32(*shape), _i32(*lead, g), _i32(*lead, g), _i32(*lead, b), _i32(*lead, b), _i32(*lead, g),
         _i32(*lead, g)),
        vmap_method="broadcast_all",
    )
    ints = [jnp.asarray(x, jnp.int32) for x in (side, quantity, tick, held, money, grid)]
    return call(*ints, jnp.asarray(lottery, jnp.float32), jnp.asarray(counter, jnp.uint32),
                jnp.asarray(rates, jnp.float32), max_holding=int(max_holding),
                levels=np.asarray(levels, np.int32))


def work(niche, units, goods, inputs, outputs, public, *, max_holding: int):
    """The integer part of :func:`economy.production.work` in one custom call: ``niche``
    (in ``[0, J]``, ``J`` resting) and ``units`` (each agent's units before the caps, the
    stochastically rounded effort) int32 ``[..., M, B]``; ``goods`` (before work) int32
    ``[..., M, B, G]``; the catalogue's ``inputs`` and ``outputs`` int32 ``[..., J + 1, G]``
    and ``public`` int32 ``[..., J + 1]`` (row ``J``: rest, all zero). Returns int32 ``(goods
    after work [..., M, B, G], units [..., M, B] (capped by the inputs held and the room left
    for the outputs), cap [..., M, B] (the most units the goods allow), public units [..., M,
    B], goods produced [..., M, G], goods used [..., M, G])``, the last two summed over each
    market's agents: the same integers as the XLA path, each computed once."""
    lead, (m, b) = niche.shape[:-2], niche.shape[-2:]
    g = goods.shape[-1]
    call = jax.ffi.ffi_call(
        "agora_work",
        (_i32(*lead, m, b, g), _i32(*lead, m, b), _i32(*lead, m, b), _i32(*lead, m, b), _i32(*lead, m, g),
         _i32(*lead, m, g)),
        vmap_method="broadcast_all",
    )
    return call(*(jnp.asarray(x, jnp.int32) for x in (niche, units, goods, inputs, outputs, public)),
                max_holding=int(max_holding))


def observe(goods, money, blocks, *, goods_scale: float, money_scale: float):
    """The observation in one pass: float32 ``[..., N, G + 1 + sum k]`` whose row ``i`` is
    ``sqrt(goods[i] x goods_scale)``, ``sqrt(money[i] x money_scale)`` (float32 operations,
    as XLA's), then each of ``blocks`` (float32 ``[..., R, k]``, ``R`` dividing ``N``: per
    agent, per market or per world) at its row ``i // (N / R)``. ``goods`` int32 ``[..., N,
    G]``, ``money`` int32 ``[..., N]``."""
    lead, (n, g) = goods.shape[:-2], goods.shape[-2:]
    width = g + 1 + sum(b.shape[-1] for b in blocks)
    call = jax.ffi.ffi_call("agora_observe", jax.ShapeDtypeStruct((*lead, n, width), jnp.float32),
                            vmap_method="broadcast_all")
    return call(jnp.asarray(goods, jnp.int32), jnp.asarray(money, jnp.int32),
                *(jnp.asarray(b, jnp.float32) for b in blocks),
                goods_scale=np.float32(goods_scale), money_scale=np.float32(money_scale))


__all__ = ["available", "build_library", "cache_dir", "cpu_supported", "load_library", "market", "observe", "usable", "work"]
