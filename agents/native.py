"""The native sampler: acting's categorical draws as one XLA FFI custom call on the CPU.

XLA:CPU compiles :func:`agents.networks.sample_actions` into several passes over the
logits (max, exp, a CDF, compares, a gather), about 1-2 us per agent-step for the
economy's 446 logits and most of acting's time beside the matmuls. ``native_sample.cc``
does one pass per agent (AVX2/FMA, split over XLA's intra-op threads): the same law,
P(a) = softmax(logits)[a] for every categorical, drawn by the inverse CDF at a uniform
from :mod:`economy.rng` (so a row's draw depends only on the key and the row's global
index, however the rows are split over threads or devices).

The same library holds the PPO loss's kernels (:func:`stats`, :func:`stats_grad`, used by
:func:`agents.networks.policy_terms`): every categorical's log-probability of the action
taken and its entropy, and their gradient with respect to the output layer, with the
logits formed in cache a tile of rows at a time and never written out. They know nothing
of the loss: the PPO and imitation losses are written once, in JAX (:mod:`selfplay.ppo`),
on the per-sample terms, and their cotangents reach :func:`stats_grad` through autodiff,
so a term added to the loss in Python reaches the gradient with no change here.

The library is compiled on first use and cached as :mod:`economy.native` describes (which
also builds the economy's market kernel the same way). :func:`available` is False (and
callers use the XLA sampler) where it cannot work: not x86-64, no AVX2/FMA, no compiler,
a failed build, not the CPU backend, or ``AGORA_NATIVE=0`` in the environment.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from economy import rng
from economy.native import FLAGS, build_library, cache_dir, cpu_supported as _cpu_supported, load_library, usable

SOURCE = Path(__file__).with_name("native_sample.cc")
TARGETS = {"agora_sample": "AgoraSample", "agora_act": "AgoraAct", "agora_stats": "AgoraStats",
           "agora_stats_grad": "AgoraStatsGrad"}


def build(force: bool = False) -> Path:
    """Compile ``native_sample.cc`` (if its cached build is missing, or ``force``) and return the
    library's path (:func:`economy.native.build_library`). Raises ``RuntimeError`` naming the
    compiler's complaint on failure."""
    return build_library(SOURCE, force)


@functools.cache
def _load() -> str:
    """Build, load and register the custom calls; '' on success, else why not."""
    return load_library(SOURCE, TARGETS)


def available() -> bool:
    """Whether the native kernels (:func:`sample`, :func:`act`, :func:`stats`,
    :func:`stats_grad`) can run here (builds and registers the library
    on first call). When they cannot, a warning says why once (none for ``AGORA_NATIVE=0``)
    and callers use the XLA paths."""
    return usable(_load(), "acting uses the slower XLA sampler")


def _sizes(sizes) -> np.ndarray:
    sizes = np.asarray(sizes, np.int64)
    if sizes.ndim != 1 or sizes.size == 0 or np.any(sizes < 1):
        raise ValueError(f"sizes must be a non-empty list of positive choice counts, got {sizes.tolist()}")
    return sizes


def _check(logits: jax.Array, sizes) -> np.ndarray:
    sizes = _sizes(sizes)
    if logits.ndim < 1 or logits.shape[-1] < int(sizes.sum()):
        raise ValueError(f"logits of shape {logits.shape} have fewer than sum(sizes)={int(sizes.sum())} columns")
    return sizes


def draw(logits: jax.Array, u: jax.Array, sizes) -> tuple[jax.Array, jax.Array]:
    """The custom call: ``logits`` float32 ``[..., W]`` whose first ``sum(sizes)`` columns
    are K categoricals' logits in order (further columns are ignored), ``u`` float32
    ``[..., K]`` uniforms in [0, 1). Returns ``(actions int32 [..., K], log_prob float32
    [...])``: ``a_j = min{a : p_0 + ... + p_a > u_j}`` and ``sum_j log p_{a_j}``, with
    ``p = softmax`` of each categorical. Works under ``jit`` and ``vmap``; call
    :func:`available` first."""
    logits = jnp.asarray(logits, jnp.float32)
    sizes = _check(logits, sizes)
    batch = logits.shape[:-1]
    if u.shape != batch + (sizes.size,):
        raise ValueError(f"uniforms of shape {u.shape}, expected {batch + (sizes.size,)}")
    call = jax.ffi.ffi_call(
        "agora_sample",
        (jax.ShapeDtypeStruct(batch + (sizes.size,), jnp.int32), jax.ShapeDtypeStruct(batch, jnp.float32)),
        vmap_method="broadcast_all",
    )
    return call(logits, jnp.asarray(u, jnp.float32), sizes=sizes)


def sample(key: jax.Array, logits: jax.Array, sizes) -> tuple[jax.Array, jax.Array]:
    """:func:`draw` at uniforms ``rng.uniform(key, [..., K])``."""
    logits = jnp.asarray(logits, jnp.float32)
    sizes = _check(logits, sizes)
    return draw(logits, rng.uniform(key, logits.shape[:-1] + (sizes.size,)), sizes)


def act(h: jax.Array, w: jax.Array, b: jax.Array, u: jax.Array, sizes) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The output layer and the draws in one custom call: per group (member) ``g``, rows of
    features ``h [*g, n, H]``, the output kernel ``w [*g, H, C]`` and bias ``b [*g, C]``
    with ``C = sum(sizes) + 1`` (every categorical's logits, then the value). Each tile of
    rows' ``h . w + b`` is formed in cache and drawn at once (uniforms ``u [*g, n, K]``,
    as :func:`draw`), so the logits never reach memory. Returns ``(actions int32 [*g, n,
    K], log_prob float32 [*g, n], value float32 [*g, n])``."""
    sizes = _sizes(sizes)
    h, w, b, u = (jnp.asarray(x, jnp.float32) for x in (h, w, b, u))
    g, n = _layer_shapes("agora_act", h, w, b, sizes, {"u": u})
    call = jax.ffi.ffi_call(
        "agora_act",
        (jax.ShapeDtypeStruct(g + (n, sizes.size), jnp.int32), jax.ShapeDtypeStruct(g + (n,), jnp.float32),
         jax.ShapeDtypeStruct(g + (n,), jnp.float32)),
        vmap_method="broadcast_all",
    )
    return call(h, w, b, u, sizes=sizes)


def _layer_shapes(name: str, h, w, b, sizes, per_categorical: dict, per_row: dict | None = None) -> tuple:
    """Checks ``h [*g, n, H]``, ``w [*g, H, sum(sizes) + 1]``, ``b [*g, sum(sizes) + 1]``,
    arrays ``[*g, n, K]`` (``per_categorical``) and ``[*g, n]`` (``per_row``) by name;
    returns ``(g, n)``."""
    sizes = _sizes(sizes)
    g, (n, hdim) = h.shape[:-2], h.shape[-2:]
    c = int(sizes.sum()) + 1
    want = {"w": g + (hdim, c), "b": g + (c,)}
    want.update({k: g + (n, sizes.size) for k in per_categorical})
    want.update({k: g + (n,) for k in per_row or {}})
    for key, x in (("w", w), ("b", b), *per_categorical.items(), *(per_row or {}).items()):
        if x.shape != want[key]:
            raise ValueError(f"{name}: {key} has shape {x.shape}, expected {want[key]} (h is {h.shape})")
    return g, n


def stats(h: jax.Array, w: jax.Array, b: jax.Array, actions: jax.Array, sizes):
    """The policy's loss terms in one custom call: with the output layer as :func:`act`
    (``h [*g, n, H]``, ``w [*g, H, C]``, ``b [*g, C]``, ``C = sum(sizes) + 1``) and the
    actions taken ``int32 [*g, n, K]``, returns ``(log_prob [*g, n, K], entropy [*g, n, K],
    value [*g, n])``: every categorical's log-probability of its action and its entropy,
    and the value. The logits are formed a tile of rows at a time in cache and never
    written out. Out-of-range actions are clamped (the caller validates them)."""
    h, w, b = (jnp.asarray(x, jnp.float32) for x in (h, w, b))
    actions = jnp.asarray(actions, jnp.int32)
    g, n = _layer_shapes("agora_stats", h, w, b, sizes, {"actions": actions})
    f32 = lambda *shape: jax.ShapeDtypeStruct(g + shape, jnp.float32)  # noqa: E731
    call = jax.ffi.ffi_call("agora_stats", (f32(n, len(sizes)), f32(n, len(sizes)), f32(n)), vmap_method="broadcast_all")
    return call(h, w, b, actions, sizes=_sizes(sizes))


def stats_grad(h, w, b, actions, g_log_prob, g_entropy, g_value, sizes) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The gradient of ``sum(g_log_prob * log_prob + g_entropy * entropy) + sum(g_value *
    value)`` (of :func:`stats`) with respect to ``h``, ``w`` and ``b``: ``(dh [*g, n, H], dw
    [*g, H, C], db [*g, C])``, in one pass. Each tile of rows' logits is formed again in
    cache and its ``dz`` computed there (for categorical ``j`` with probabilities ``p``:
    ``dz_i = glp_j [i = a_j] - p_i (glp_j + gent_j (log p_i + H_j))``, ``g_value`` in the
    value column), then ``dh = dz . w^T`` is written out and ``h^T . dz``, ``sum dz`` are
    added into ``dw``, ``db``: ``dz`` never reaches memory. The sums over rows run in a
    fixed order (slots fixed by the shapes), so the result does not depend on the threads."""
    h, w, b, glp, gent, gv = (jnp.asarray(x, jnp.float32) for x in (h, w, b, g_log_prob, g_entropy, g_value))
    actions = jnp.asarray(actions, jnp.int32)
    _layer_shapes("agora_stats_grad", h, w, b, sizes, {"actions": actions, "g_log_prob": glp, "g_entropy": gent},
                  {"g_value": gv})
    call = jax.ffi.ffi_call(
        "agora_stats_grad",
        (jax.ShapeDtypeStruct(h.shape, jnp.float32), jax.ShapeDtypeStruct(w.shape, jnp.float32),
         jax.ShapeDtypeStruct(b.shape, jnp.float32)),
        vmap_method="broadcast_all",
    )
    return call(h, w, b, actions, glp, gent, gv, sizes=_sizes(sizes))


__all__ = ["FLAGS", "act", "available", "build", "cache_dir", "draw", "sample", "stats", "stats_grad"]
