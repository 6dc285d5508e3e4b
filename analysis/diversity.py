"""Policy diversity of a population: pairwise KL and Jensen–Shannon matrices on a probe
set of states, their off-diagonal means, and an effective number of distinct policies.

Logits are a dict ``head name -> [P, S, *entries, choices]``: ``P`` members evaluated on
the same ``S`` probe states, one categorical per entry of each head (unnormalised
log-probabilities; normalised here with ``log_softmax``). Logits must be finite, as the
network's are. A divergence between two members is the mean over the ``S`` states of
its sum over heads and entries (the divergence of the joint action distributions, whose
heads and entries are independent given the state).

Memory: the states are processed in chunks of ``chunk`` states, so the temporaries are
``O(P * chunk * F)`` (``F`` = logits per state, 446 with the economy's heads) plus
``[P, P]``, never ``[P, P, S, ...]``; the last chunk is the remainder ``S % chunk``
(exact, no padding). For ``P = 128``, ``S = 4096``, ``F = 446`` (an input of 0.94 GB)
the compiled temporaries are under 1 GB (see ``tests/test_analysis.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Logits = dict[str, jax.Array]

LN2 = math.log(2.0)
DEFAULT_CHUNK = 256  # probe states per chunk
DEFAULT_PAIR_BLOCK = 32  # member pairs per block in js_matrix


def _leading_shape(logits: Logits) -> tuple[int, int]:
    """``(P, S)`` shared by every head; raises on an empty dict or a mismatch."""
    if not logits:
        raise ValueError("logits is an empty dict")
    shapes = {k: tuple(jnp.shape(v)) for k, v in logits.items()}
    lead = {s[:2] for s in shapes.values()}
    if len(lead) != 1 or any(len(s) < 3 for s in shapes.values()):
        raise ValueError(f"every head must be [P, S, *entries, choices] with the same P, S: {shapes}")
    return next(iter(lead))


def _chunk_logp(logits: Logits, start, size: int) -> jax.Array:
    """float32 ``[P, size, F]``: normalised log-probabilities of states
    ``start .. start + size`` of every head (sorted by name), entries and choices
    flattened into ``F``. ``start`` may be traced."""
    parts = []
    for name in sorted(logits):
        x = jax.lax.dynamic_slice_in_dim(logits[name], start, size, axis=1)
        x = jax.nn.log_softmax(x.astype(jnp.float32), axis=-1)
        parts.append(x.reshape(x.shape[0], size, -1))
    return jnp.concatenate(parts, axis=-1)


def _mean_over_states(logits: Logits, chunk: int, body: Callable[[jax.Array], jax.Array], init: jax.Array) -> jax.Array:
    """``sum_chunks body(logp_chunk) / S``: ``body`` maps a ``[P, c, F]`` chunk of
    log-probabilities to its *sum* over the chunk's states (any shape, like ``init``).
    Full chunks run in a loop; a remainder ``S % chunk`` is one more, smaller, call."""
    _, s = _leading_shape(logits)
    chunk = max(1, min(int(chunk), s))
    n_full, rem = divmod(s, chunk)
    acc = jax.lax.fori_loop(0, n_full, lambda k, acc: acc + body(_chunk_logp(logits, k * chunk, chunk)), init)
    if rem:
        acc = acc + body(_chunk_logp(logits, n_full * chunk, rem))
    return acc / s


def kl_matrix(logits: Logits, *, chunk: int = DEFAULT_CHUNK) -> jax.Array:
    """float32 ``[P, P]``: entry ``(i, j)`` = mean over the ``S`` states of
    ``sum_{heads, entries} KL(pi_i || pi_j)`` (nats).

    ``logits`` ``head -> [P, S, *entries, choices]``. Computed as
    ``KL_ij = E_s[sum p_i log p_i] - E_s[sum p_i log p_j]`` with the cross term one matmul
    per chunk over the flattened (state, entry, choice) axis. Both terms are taken
    relative to the members' mean log-probability ``r`` (``log p -> log p - r``; the
    shift cancels exactly because ``sum p_i = 1``), so the float32 cancellation error
    scales with the divergences, not with the entropies. Diagonal exactly 0; tiny
    negative rounding clamped to 0. Not symmetric: use :func:`js_matrix` for that.
    """
    p_members, _ = _leading_shape(logits)

    def body(logp):  # [P, c, F] -> [P, P] summed over the chunk's states
        d = (logp - jnp.mean(logp, axis=0)).reshape(p_members, -1)  # [P, c*F]
        prob = jnp.exp(logp).reshape(p_members, -1)
        self_term = jnp.sum(prob * d, axis=-1)  # [P]
        cross = jnp.matmul(prob, d.T, precision=jax.lax.Precision.HIGHEST)  # [P, P]
        return self_term[:, None] - cross

    kl = _mean_over_states(logits, chunk, body, jnp.zeros((p_members, p_members), jnp.float32))
    kl = jnp.maximum(kl, 0.0)
    return jnp.where(jnp.eye(p_members, dtype=bool), 0.0, kl)


def js_matrix(logits: Logits, *, chunk: int = DEFAULT_CHUNK, pair_block: int = DEFAULT_PAIR_BLOCK) -> jax.Array:
    """float32 ``[P, P]``: Jensen–Shannon divergence ``JS_ij = KL(p_i||m)/2 + KL(p_j||m)/2``,
    ``m = (p_i + p_j)/2`` (nats), mean over the ``S`` states, summed over heads and
    entries. Symmetric (exactly), ``>= 0``, at most ``ln 2`` per categorical, diagonal 0.

    ``logits`` ``head -> [P, S, *entries, choices]``. Each of the ``P (P-1) / 2`` pairs
    ``i < j`` is computed once, elementwise as ``p_i (log p_i - log m) + p_j (log p_j -
    log m)`` (one log per term; no cancellation between large sums), in blocks of
    ``pair_block`` pairs per chunk of ``chunk`` states; the temporaries are
    ``O(pair_block * chunk * F)``. The work is ``P^2/2 * S * F`` terms: 1.5e10 for 128
    members on 4096 states of the economy's heads, about 20 s on 2 CPU cores.
    """
    p_members, _ = _leading_shape(logits)
    iu, ju = np.triu_indices(p_members, k=1)
    n_pairs = iu.size
    if n_pairs == 0:
        return jnp.zeros((p_members, p_members), jnp.float32)
    block = max(1, min(int(pair_block), n_pairs))
    n_blocks = -(-n_pairs // block)
    pad = n_blocks * block - n_pairs  # padded pairs (0, 0) are computed and dropped
    ii = jnp.asarray(np.concatenate([iu, np.zeros(pad, iu.dtype)]).reshape(n_blocks, block), jnp.int32)
    jj = jnp.asarray(np.concatenate([ju, np.zeros(pad, ju.dtype)]).reshape(n_blocks, block), jnp.int32)

    def body(logp):  # [P, c, F] -> [n_blocks * block] summed over the chunk's states
        logp = logp.reshape(p_members, -1)
        prob = jnp.exp(logp)

        def pairs(idx):
            a, b = logp[idx[0]], logp[idx[1]]  # [block, c*F]
            pa, pb = prob[idx[0]], prob[idx[1]]
            two_m = pa + pb  # 0 only where both underflow, and then so do both terms
            lm = jnp.log(jnp.where(two_m > 0, two_m, 1.0)) - LN2
            terms = jnp.where(two_m > 0, pa * (a - lm) + pb * (b - lm), 0.0)
            return 0.5 * jnp.sum(terms, axis=-1)

        return jax.lax.map(pairs, (ii, jj)).reshape(-1)

    js_pairs = _mean_over_states(logits, chunk, body, jnp.zeros((n_blocks * block,), jnp.float32))
    js_pairs = jnp.maximum(js_pairs[:n_pairs], 0.0)
    js = jnp.zeros((p_members, p_members), jnp.float32)
    return js.at[iu, ju].set(js_pairs).at[ju, iu].set(js_pairs)


def mean_offdiag(m: jax.Array) -> jax.Array:
    """float32 scalar: mean of the off-diagonal entries of ``m`` ``[P, P]`` (the mean
    pairwise KL or JS); 0 for ``P = 1``."""
    p = m.shape[0]
    if p < 2:
        return jnp.zeros((), jnp.float32)
    off = jnp.where(jnp.eye(p, dtype=bool), 0.0, m.astype(jnp.float32))
    return jnp.sum(off) / (p * (p - 1))


def effective_policies(js: jax.Array, scale: float = LN2) -> jax.Array:
    """float32 scalar: effective number of distinct policies, the Vendi score of the
    similarity kernel ``K_ij = exp(-JS_ij / scale)`` of ``js`` ``[P, P]``.

    ``VS = exp(-sum_k lam_k log lam_k)`` over the eigenvalues ``lam`` of ``K / P``
    (those below the numerical-rank tolerance ``max(lam) * P * eps_float32``, negatives
    from rounding included, set to 0; renormalised to sum 1). ``K`` is positive
    semi-definite (JS, and so its sums and means, is a negative-definite kernel; Fuglede &
    Topsøe 2004), has unit diagonal, and ``1 <= VS <= P``.

    Scale: ``ln 2`` by default, so ``K_ij = 2^(-JS_ij in bits)``: each bit of divergence
    halves the similarity. Two members that differ only on one categorical, with
    disjoint supports there (JS = ln 2), have ``K = 1/2``; disjoint on ``n``
    categoricals, ``K = 2^-n`` (about 0 beyond ~20, e.g. the economy's 19 scalar or
    per-good categoricals all disjoint gives ``K ~ 2e-6``).

    Behaviour:

    * ``P`` identical policies (``JS = 0``, ``K`` all ones) -> exactly one non-zero
      eigenvalue -> ``VS = 1``.
    * ``P`` mutually far-apart policies (``K -> I``) -> ``VS -> P``.
    * ``k`` identical copies of one policy plus ``m`` others, all groups mutually far
      apart (``K`` -> block-diagonal ``ones(k, k)`` and ``I_m``; ``P = k + m``): the
      eigenvalues of ``K/P`` tend to ``k/P`` (once) and ``1/P`` (``m`` times), so
      ``VS -> exp(H(k/P, 1/P, ..., 1/P))``, the exponential of the entropy of those
      weights. This lies in ``[1, m + 1]`` (``m + 1`` only for ``k = 1``; a duplicate is
      not a whole extra policy, it weights its group), e.g. ``k = 2, m = 2`` gives
      ``2^1.5 = 2.83``. The tests check this limit to 1e-5 with ``JS = 60 ln 2``
      between groups.

    ``eigh`` of one ``[P, P]`` matrix (not vmapped) runs fine inside ``jit`` on XLA:CPU.
    """
    js = js.astype(jnp.float32)
    p = js.shape[0]
    k = jnp.exp(-js / scale)
    k = 0.5 * (k + k.T)
    lam = jnp.linalg.eigvalsh(k / p)
    # Numerical rank: eigenvalues below float32 eigh's rounding are 0 (as in
    # numpy.linalg.matrix_rank), so identical policies give exactly 1.
    tol = jnp.max(lam) * p * jnp.finfo(jnp.float32).eps
    lam = jnp.where(lam > tol, lam, 0.0)
    lam = lam / jnp.sum(lam)
    h = -jnp.sum(jnp.where(lam > 0, lam * jnp.log(jnp.where(lam > 0, lam, 1.0)), 0.0))
    return jnp.clip(jnp.exp(h), 1.0, float(p))


def niche_profile_distance(niche_shares: jax.Array) -> jax.Array:
    """float32 ``[P, P]``: behavioural diversity, the Jensen–Shannon divergence (nats,
    ``<= ln 2``) between the members' distributions of niche choices.

    ``niche_shares`` ``[P, J+1]``: each member's shares (or counts) of niche choices, the
    last being "rest"; rows are normalised here (a row of zeros counts as uniform).
    This compares what members *did*; the divergence of the niche-choice head alone
    (what they would do on the probe states) is ``kl_matrix({"niche": logits["niche"]})``
    or ``js_matrix({"niche": logits["niche"]})``.
    """
    x = niche_shares.astype(jnp.float32)
    total = jnp.sum(x, axis=-1, keepdims=True)
    p = jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), 1.0 / x.shape[-1])
    a, b = p[:, None, :], p[None, :, :]
    m = 0.5 * (a + b)

    def kl_to_m(q):
        return jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0) / jnp.where(q > 0, m, 1.0)), 0.0), -1)

    js = jnp.maximum(0.5 * kl_to_m(a) + 0.5 * kl_to_m(b), 0.0)
    return jnp.where(jnp.eye(p.shape[0], dtype=bool), 0.0, js)
