"""Actor-critic networks for the population, and the action distributions of their heads.

* :class:`ActorCritic` is a Flax Linen module: a shared MLP torso, one categorical policy
  output per head of ``env.action_spec`` and a scalar value output. Head sizes come only
  from the spec, so adding a niche (or a good, or a price tick) changes the network with
  no code change.
* The parameters of the ``P`` members of a population are stacked on a leading axis
  (:func:`init_population`) and the forward pass is ``jax.vmap`` over it
  (:func:`population_apply`): the functional route, no gathers.
* Agents are assigned to members round-robin in runs of ``C`` contiguous agents: agent
  ``i`` is played by member ``(i // C) % P`` (``C = 1``, the default: member ``i % P``;
  the trainer's ``villages`` layout takes longer runs so that a member's agents sit in a
  few markets, see ``train.layout``). :func:`to_members` turns agent-major arrays
  ``[N, ...]`` into member-major ``[P, N/P, ...]`` (reshapes and a transpose) and
  :func:`from_members` inverts it; :func:`agent_players` is the map as a NumPy array.
* :func:`sample_actions`, :func:`log_prob` and :func:`entropy` treat each head as a
  categorical over its last axis (``distrax.Categorical`` for the log-probability and
  entropy; :func:`sample_actions` draws by the inverse CDF, the same law), one
  independent categorical per entry of the head's shape, and sum over heads and entries,
  so that the result has the batch shape (one joint log-probability / entropy per agent).

Logits are a dict ``head name -> float32 [..., *head.shape, head.choices]``. The batch
shape ``[...]`` is, unless given as ``batch_ndim``, inferred as the leading shape of the
head with the fewest axes; with the economy's spec this is the scalar ``niche`` head
(``[..., J+1]``), so the inference is exact. Pass ``batch_ndim`` for a spec without a
scalar head.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from economy import rng
from economy.market import HOLD

Logits = dict[str, jax.Array]
Actions = dict[str, jax.Array]

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


def orthogonal(scale: float = 1.0, iterations: int = 40):
    """Orthogonal initialiser (like ``nn.initializers.orthogonal``) from matmuls only.

    The polar factor of a Gaussian matrix is a Haar-random (semi-)orthogonal matrix; it
    is computed by the Newton-Schulz iteration ``X <- 1.5 X - 0.5 X X^T X`` instead of a
    LAPACK QR, because the batched QR custom call deadlocks XLA:CPU (jax 0.10.2) when
    members' initialisations are vmapped.
    """

    def init(key, shape, dtype=jnp.float32):
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = jax.random.normal(key, (rows, cols), jnp.float32)
        x = a.T if rows < cols else a  # tall: columns become orthonormal
        x = x / jnp.linalg.norm(x)  # spectral norm <= Frobenius norm <= 1 < sqrt(3)

        def step(x, _):
            return 1.5 * x - 0.5 * x @ (x.T @ x), None

        x, _ = jax.lax.scan(step, x, None, length=iterations)
        x = x.T if rows < cols else x
        return (scale * x).reshape(shape).astype(dtype)

    return init


_ORTHO = orthogonal


class ActorCritic(nn.Module):
    """Shared-torso actor-critic with one categorical output per action head.

    ``__call__(obs float32 [..., D]) -> (logits, value)`` with ``logits[name]`` float32
    ``[..., *head.shape, head.choices]`` and ``value`` float32 ``[...]``.

    Initialisation: torso Dense layers orthogonal with scale ``sqrt(2)``, policy outputs
    orthogonal with scale 0.01 (near-uniform initial policy), value output orthogonal
    with scale 1.0; all biases zero.
    """

    action_spec: tuple  # of economy.ActionHead(name, shape, choices)
    hidden: tuple[int, ...] = (128, 128)
    activation: str = "tanh"  # "tanh" | "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, parts: bool = False):
        """``parts=False``: ``(logits dict, value)``. ``parts=True`` (apply only, after init):
        ``(features [..., H], kernel [H, W + 1], bias [W + 1])``, the torso's output and every
        head's and the value's output layer side by side (``W = joint_width(spec)``): the
        heads in sorted name order, each flattened ``[*head.shape, choices]`` row-major,
        then the value. ``features @ kernel + bias`` is the joint output (see
        :func:`split_joint`): the same parameters and numbers, one matmul."""
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        names = [h.name for h in self.action_spec]
        if len(set(names)) != len(names):
            raise ValueError(f"action_spec has duplicate head names: {names}")
        if not names:
            raise ValueError("action_spec is empty")
        act = _ACTIVATIONS[self.activation]
        zeros = nn.initializers.zeros_init()

        x = jnp.asarray(obs, jnp.float32)
        batch = x.shape[:-1]
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, kernel_init=_ORTHO(math.sqrt(2.0)), bias_init=zeros, name=f"torso_{i}")(x)
            x = act(x)

        if parts:
            p = self.variables["params"]
            names = [f"policy_{n}" for n in sorted(names)] + ["value"]
            kernel = jnp.concatenate([p[n]["kernel"] for n in names], 1)
            bias = jnp.concatenate([p[n]["bias"] for n in names], 0)
            return x, kernel, bias

        logits = {}
        for head in self.action_spec:
            shape = tuple(int(s) for s in head.shape)
            size = math.prod(shape) * int(head.choices)
            out = nn.Dense(size, kernel_init=_ORTHO(0.01), bias_init=zeros, name=f"policy_{head.name}")(x)
            logits[head.name] = out.reshape(batch + shape + (int(head.choices),))
        value = nn.Dense(1, kernel_init=_ORTHO(1.0), bias_init=zeros, name="value")(x)[..., 0]
        return logits, value


def padded_obs_blocks(obs: jax.Array, goods: int, niches: int, values: bool) -> dict[str, jax.Array]:
    """A padded economy's observation (:meth:`economy.Economy.observe`) split into its
    blocks: per good ``[..., G]`` (goods, preferences, price, volume) and ``[..., G, 5]``
    (catalogue features), per niche ``[..., J]`` (skills, history, richness, values) and
    ``[..., J, 3]``, ``[..., J, G]`` (features, inputs, outputs), and money, project ``[..., 1]``."""
    G, J = goods, niches
    widths = [("goods", G), ("money", 1), ("skills", J), ("preferences", G), ("history", J), ("price", G),
              ("volume", G), ("richness", J), ("project", 1)] + ([("values", J)] if values else []) + [
              ("good_features", 5 * G), ("niche_features", J * (3 + 2 * G))]
    if obs.shape[-1] != sum(w for _, w in widths):
        raise ValueError(f"observation width {obs.shape[-1]} is not a padded economy's with {G} goods, {J} niches "
                         f"(values={values}): expected {sum(w for _, w in widths)}")
    out, i = {}, 0
    for name, w in widths:
        out[name] = obs[..., i:i + w]
        i += w
    batch = obs.shape[:-1]
    out["good_features"] = out["good_features"].reshape(batch + (G, 5))
    nf = out.pop("niche_features").reshape(batch + (J, 3 + 2 * G))
    out["niche_features"], out["inputs"], out["outputs"] = nf[..., :3], nf[..., 3:3 + G], nf[..., 3 + G:]
    return out


MASKED = -1e9  # the logit of a masked choice: exp(MASKED - max) is exactly 0 in float32
# a padded good's side logits: it can only be held (economy.market: BUY 0, HOLD 1, SELL 2)
_HOLD_ONLY = (MASKED, 0.0, MASKED)


class EntityActorCritic(nn.Module):
    """An actor-critic for padded economies (many catalogues) that sees what each good and
    niche *is* instead of its index, and does not care about their order.

    Every good is a token (the agent's holding, taste, its market's price and volume, the
    good's utility weight, base price, perish and consume rates), every niche a token (the
    agent's skill, history, the local richness, what it would earn now, its public units
    and labour, and its recipe's messages: the goods' observed features summed over what
    the niche uses and makes, ``inputs @ good_in``, ``outputs @ good_in``; observation
    only, so no gradient flows through these per-agent products). One shared layer per
    kind of token (DeepSets: one set of weights for all goods, one for all niches), the
    agent's money and project added to every token; a context from money, project and
    the masked means over the real goods and niches. Each niche's logit comes from its
    token, resting's and the value from the context; each good's order heads are linear
    in its token plus a projection of the context (one kernel for all goods: the output
    layer :class:`EntityPolicy` runs natively over every (agent, good) row).
    Permuting the goods (or niches) of a catalogue permutes the per-good (per-niche)
    outputs and changes nothing else (tests/test_catalogues.py). Two token layers, not
    more: on a CPU each per-token layer costs every agent ``G`` (``J``) small matmuls and
    tanh passes (docs/performance.md).

    Masks, from the observation's ``real`` features: a padded niche's logit and a padded
    good's buy and sell logits are :data:`MASKED`, so they have probability exactly 0.
    ``__call__(obs) -> (logits, value)`` with :class:`ActorCritic`'s contract (the heads of
    ``action_spec`` only: under ``train.orders=scripted`` the niche head alone);
    ``parts=True`` gives :class:`EntityParts`, the same policy as one output layer applied to
    every good (what :class:`EntityPolicy` acts and learns through, natively where the
    kernels run).
    """

    action_spec: tuple
    goods: int
    niches: int
    values: bool = False  # the observation holds observe_values' block
    hidden: int = 64
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs: jax.Array, parts: bool = False):
        act = _ACTIVATIONS[self.activation]
        zeros = nn.initializers.zeros_init()
        dense = lambda w, name, scale=math.sqrt(2.0), bias=True: nn.Dense(  # noqa: E731
            w, kernel_init=_ORTHO(scale), bias_init=zeros, use_bias=bias, name=name)
        b = padded_obs_blocks(jnp.asarray(obs, jnp.float32), self.goods, self.niches, self.values)
        real_g = b["good_features"][..., 0] > 0.5  # [..., G]
        real_n = b["niche_features"][..., 0] > 0.5  # [..., J]
        agent = jnp.concatenate([b["money"], b["project"]], -1)  # [..., 2]
        good_in = jnp.concatenate([jnp.stack([b["goods"], b["preferences"], b["price"], b["volume"]], -1),
                                   b["good_features"][..., 1:]], -1)
        # recipe messages: the goods' raw inputs summed over what each niche makes and uses
        # (observation only, so no gradient flows back through these per-agent [J, G] products)
        made = jnp.einsum("...jg,...gf->...jf", b["outputs"], good_in)
        used = jnp.einsum("...jg,...gf->...jf", b["inputs"], good_in)
        niche_cols = [b["skills"], b["history"], b["richness"]] + ([b["values"]] if self.values else [])
        niche_in = jnp.concatenate([jnp.stack(niche_cols, -1), b["niche_features"][..., 1:], made, used], -1)
        # one shared layer per entity kind; the agent's money and project reach every token
        eg = act(dense(self.hidden, "good")(good_in) + dense(self.hidden, "good_agent", bias=False)(agent)[..., None, :])
        en = act(dense(self.hidden, "niche")(niche_in) + dense(self.hidden, "niche_agent", bias=False)(agent)[..., None, :])

        def masked_mean(x, m):
            m = m.astype(jnp.float32)[..., None]
            return jnp.sum(x * m, -2) / jnp.maximum(jnp.sum(m, -2), 1.0)

        ctx = act(dense(self.hidden, "context_0")(jnp.concatenate([agent, masked_mean(eg, real_g), masked_mean(en, real_n)], -1)))
        ctx = act(dense(self.hidden, "context_1")(ctx))  # [..., H]
        good_heads = sorted(h.name for h in self.action_spec if h.name != "niche")
        niche_logits = None
        if any(h.name == "niche" for h in self.action_spec):
            # each niche's logit from its token; resting's from the context (which thereby
            # sets how much the agent wants to work at all)
            work = dense(1, "policy_niche", 0.01)(en)[..., 0]  # [..., J]
            rest = dense(1, "policy_rest", 0.01)(ctx)  # [..., 1]
            niche_logits = jnp.concatenate([jnp.where(real_n, work, MASKED), rest], -1)
        value = dense(1, "value", 1.0)(ctx)[..., 0]
        # each good's order heads: linear in its token plus a projection of the context (one kernel for all goods)
        hg = eg + dense(self.hidden, "good_ctx", bias=False)(ctx)[..., None, :] if good_heads else None
        if parts:
            return self._parts(hg, real_g, good_heads, niche_logits, value)
        logits = {} if niche_logits is None else {"niche": niche_logits}
        for head in self.action_spec:
            if head.name == "niche":
                continue
            out = dense(int(head.choices), f"policy_{head.name}", 0.01)(hg)  # [..., G, choices]
            if head.name == "side":  # a padded good can only be held
                out = jnp.where(real_g[..., None], out, jnp.asarray(_HOLD_ONLY, jnp.float32))
            logits[head.name] = out
        return logits, value

    def _parts(self, hg, real_g, good_heads, niche_logits, value) -> "EntityParts":
        """The output as :class:`EntityPolicy` takes it: the order heads as one output layer
        applied to each good's features (every good a row: the same kernel for all goods),
        the niche's logits and the value as :meth:`__call__` gives them."""
        if hg is None:
            return EntityParts(None, None, None, real_g, niche_logits, value)
        p = self.variables["params"]
        kernel = jnp.concatenate([p[f"policy_{n}"]["kernel"] for n in good_heads], 1)  # [H, Cg]
        bias = jnp.concatenate([p[f"policy_{n}"]["bias"] for n in good_heads], 0)
        # A padded good can only be held: its feature "padded" (1.0) adds MASKED to the side
        # head's buy and sell logits (probability 0 up to float32's exp; EntityPolicy also
        # forces the hold). A real good's 0.0 adds nothing, so its logits are __call__'s.
        mask_row = jnp.concatenate([jnp.asarray(_HOLD_ONLY, jnp.float32) if n == "side"
                                    else jnp.zeros((p[f"policy_{n}"]["bias"].shape[0],), jnp.float32) for n in good_heads])
        kernel = jnp.concatenate([jnp.concatenate([kernel, mask_row[None]], 0),
                                  jnp.zeros((kernel.shape[0] + 1, 1), jnp.float32)], 1)  # + the value column (unused)
        bias = jnp.concatenate([bias, jnp.zeros((1,), jnp.float32)])
        h = jnp.concatenate([hg, (~real_g).astype(jnp.float32)[..., None]], -1)  # [..., G, H + 1]
        return EntityParts(h, kernel, bias, real_g, niche_logits, value)


class EntityParts(NamedTuple):
    """:class:`EntityActorCritic`'s output with ``parts=True``: ``goods_h [..., G, H + 1]``
    (each good's features, then 1.0 for a padded good), ``goods_kernel [H + 1, Cg + 1]``,
    ``goods_bias [Cg + 1]`` (the order heads' columns in sorted head order, then a zero
    value column; ``None`` without order heads), ``real_goods [..., G]``, ``niche_logits
    [..., J + 1]`` (None without a niche head) and ``value [...]``."""

    goods_h: Any
    goods_kernel: Any
    goods_bias: Any
    real_goods: jax.Array
    niche_logits: Any
    value: jax.Array


# ---- population -------------------------------------------------------------------------


def init_population(net: nn.Module, key: jax.Array, obs_dim: int, num_members: int) -> Any:
    """Variables of ``num_members`` independently initialised members, stacked on a leading
    ``[P, ...]`` axis (``jax.vmap`` of ``net.init`` over ``jax.random.split(key, P)``).

    The result is the full Linen variables dict (``{"params": ...}``): member ``m`` is
    ``jax.tree.map(lambda x: x[m], params)`` and ``net.apply(member, obs)`` runs it.
    """
    if num_members < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    keys = jax.random.split(key, num_members)
    dummy = jnp.zeros((1, obs_dim), jnp.float32)
    return jax.jit(jax.vmap(lambda k: net.init(k, dummy)))(keys)


def population_apply(net: nn.Module, params: Any, obs: jax.Array, parts: bool = False):
    """Forward pass of every member on its own observations.

    ``params`` ``[P, ...]`` (from :func:`init_population`), ``obs`` ``[P, n, D]`` ->
    ``logits[name]`` ``[P, n, *head.shape, choices]`` and ``value`` ``[P, n]``; with
    ``parts=True`` ``(features [P, n, H], kernel [P, H, W + 1], bias [P, W + 1])`` (see
    ``ActorCritic``), what :func:`act_parts` takes.
    """
    return jax.vmap(lambda p, o: net.apply(p, o, parts=parts))(params, obs)


# ---- the joint output: every head and the value from one matmul -------------------------


def head_sizes(action_spec) -> list[int]:
    """Choices of every categorical in the joint output's order: heads in sorted name
    order, each head's ``prod(shape)`` categoricals of ``choices`` in row-major order."""
    return [int(h.choices) for h in sorted(action_spec, key=lambda h: h.name) for _ in range(math.prod(h.shape))]


def joint_width(action_spec) -> int:
    """Number of logit columns of the joint output (its value column comes after them)."""
    return sum(head_sizes(action_spec))


def _split_columns(x: jax.Array, action_spec, per_entry) -> dict[str, jax.Array]:
    """Slice the last axis of ``x`` into the heads in sorted name order; head ``h`` takes
    ``prod(h.shape) * per_entry(h)`` columns, reshaped to ``[..., *h.shape, per_entry(h)]``
    (the trailing axis dropped when ``per_entry`` is None)."""
    batch, off, out = x.shape[:-1], 0, {}
    for h in sorted(action_spec, key=lambda h: h.name):
        shape = tuple(int(s) for s in h.shape) + ((int(per_entry(h)),) if per_entry else ())
        size = math.prod(shape)
        out[h.name] = x[..., off:off + size].reshape(batch + shape)
        off += size
    return out


def split_joint(joint: jax.Array, action_spec) -> tuple[Logits, jax.Array]:
    """The joint output ``[..., joint_width + 1]`` as ``(logits dict, value)``, exactly
    what ``ActorCritic.__call__(obs)`` returns."""
    width = joint_width(action_spec)
    if joint.shape[-1] != width + 1:
        raise ValueError(f"joint output has {joint.shape[-1]} columns, the spec needs {width} logits + 1 value")
    return _split_columns(joint, action_spec, lambda h: h.choices), joint[..., width]


def joint_apply(net: ActorCritic):
    """``apply_fn(params, obs) -> (logits dict, value)`` with ``net.apply``'s contract,
    computed as one output matmul of every head and the value side by side, then sliced
    (:func:`split_joint`). The parameters and their gradients are the same; on a CPU the
    one wide matmul (and its transposes in the backward pass) beats the narrow heads'
    separate ones (the update at 2^16 agents: ~9 % faster, A/B)."""

    def apply(params, obs):
        h, kernel, bias = net.apply(params, obs, parts=True)
        return split_joint(h @ kernel + bias, net.action_spec)

    return apply


def _check_divisible(n: int, num_members: int, run: int = 1) -> None:
    if num_members < 1:
        raise ValueError(f"number of members P must be >= 1, got P={num_members}")
    if run < 1:
        raise ValueError(f"run length C must be >= 1, got C={run}")
    if n % (num_members * run):
        raise ValueError(
            f"number of agents N={n} is not divisible by the number of members P={num_members} times the run "
            f"length C={run} (agent i is played by member (i // C) % P, each member by N/P agents)"
        )


def agent_players(n: int, num_members: int, run: int = 1) -> np.ndarray:
    """int64 ``[n]``: the member (player) of each agent, ``(i // run) % P``, the map
    :func:`to_members` regroups by (NumPy, for static bookkeeping on the host)."""
    _check_divisible(n, num_members, run)
    return (np.arange(n) // run) % num_members


def to_members(x: Any, num_members: int, run: int = 1) -> Any:
    """Agent-major ``[N, ...]`` -> member-major ``[P, N/P, ...]``. The agents come in runs
    of ``C = run`` contiguous agents dealt round robin: agent ``i`` goes to member
    ``(i // C) % P`` at position ``(i // (P C)) C + i % C`` (``C = 1``: member ``i % P``
    at ``i // P``). A reshape ``[N/(P C), P, C, ...]``, a swap of the first two axes and a
    reshape, never a gather. Works leaf-wise on pytrees."""

    def one(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0:
            raise ValueError("to_members: leaves need a leading agent axis, got a scalar")
        n, rest = leaf.shape[0], leaf.shape[1:]
        _check_divisible(n, num_members, run)
        if run == 1:
            return jnp.swapaxes(leaf.reshape((n // num_members, num_members) + rest), 0, 1)
        blocks = leaf.reshape((n // (num_members * run), num_members, run) + rest)
        return jnp.swapaxes(blocks, 0, 1).reshape((num_members, n // num_members) + rest)

    return jax.tree.map(one, x)


def from_members(x: Any, run: int = 1) -> Any:
    """Inverse of :func:`to_members` with the same run length ``C = run``: ``[P, N/P, ...]``
    -> ``[N, ...]``. Works on pytrees."""

    def one(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim < 2:
            raise ValueError(f"from_members: leaves need [P, N/P, ...] axes, got shape {leaf.shape}")
        p, k = leaf.shape[:2]
        rest = leaf.shape[2:]
        if run == 1:
            return jnp.swapaxes(leaf, 0, 1).reshape((p * k,) + rest)
        if run < 1 or k % run:
            raise ValueError(f"from_members: {k} agents per member are not whole runs of C={run}")
        blocks = leaf.reshape((p, k // run, run) + rest)
        return jnp.swapaxes(blocks, 0, 1).reshape((p * k,) + rest)

    return jax.tree.map(one, x)


# ---- distributions ----------------------------------------------------------------------


def _batch_ndim(logits: Logits, batch_ndim: int | None) -> int:
    if not logits:
        raise ValueError("logits is an empty dict")
    if batch_ndim is None:
        batch_ndim = min(jnp.ndim(v) for v in logits.values()) - 1
    shapes = {k: jnp.shape(v) for k, v in logits.items()}
    batch = None
    for k, s in shapes.items():
        if len(s) < batch_ndim + 1:
            raise ValueError(f"logits[{k!r}] has shape {s}, fewer axes than batch_ndim={batch_ndim} + 1")
        if batch is None:
            batch = s[:batch_ndim]
        elif s[:batch_ndim] != batch:
            raise ValueError(f"logits heads disagree on the batch shape: {shapes} (batch_ndim={batch_ndim})")
    return batch_ndim


def _sum_entries(x: jax.Array, batch_ndim: int) -> jax.Array:
    """Sum a per-entry array ``[*batch, *head.shape]`` down to ``[*batch]``."""
    return jnp.sum(x, axis=tuple(range(batch_ndim, x.ndim))) if x.ndim > batch_ndim else x


def sample_actions(key: jax.Array, logits: Logits, *, batch_ndim: int | None = None) -> tuple[Actions, jax.Array]:
    """Sample every head; returns ``(actions, log_prob)``.

    ``actions[name]`` int32 ``[..., *head.shape]``; ``log_prob`` float32 ``[...]``, the
    joint log-probability summed over heads and over each head's entries.

    Keys: ``jax.random.split(key, H)``, assigned to the heads in **sorted name order**
    (the order of ``jax.tree`` over the dict), so the draw of a head depends only on
    ``key`` and the set of head names, not on dict insertion order.
    """
    bd = _batch_ndim(logits, batch_ndim)
    names = sorted(logits)
    keys = jax.random.split(key, len(names))
    actions, total = {}, None
    for k, name in zip(keys, names):
        # Inverse-CDF sampling: one uniform per categorical instead of distrax's one Gumbel
        # per logit (drawing random bits dominated acting on a CPU). The unnormalised CDF is
        # a matmul with a triangular matrix of ones (XLA:CPU lowers cumsum to a slow
        # reduce-window), the uniforms come from the counter-based hash of economy.rng
        # (cheaper than threefry, identical under any sharding of the agent axis). The law
        # is the same: P(a) = softmax(logits)[a].
        x = jnp.asarray(logits[name], jnp.float32)
        c = x.shape[-1]
        top = jnp.max(x, -1, keepdims=True)
        tri = jnp.triu(jnp.ones((c, c), jnp.float32))
        cdf = jnp.einsum("...i,ij->...j", jnp.exp(x - top), tri, precision=jax.lax.Precision.HIGHEST)
        z = cdf[..., -1]
        u = rng.uniform(k, x.shape[:-1]) * z
        a = jnp.minimum(jnp.sum(cdf <= u[..., None], -1), c - 1).astype(jnp.int32)
        lp = _sum_entries(jnp.take_along_axis(x, a[..., None], -1)[..., 0] - top[..., 0] - jnp.log(z), bd)
        actions[name] = a
        total = lp if total is None else total + lp
    return actions, total


def log_prob(logits: Logits, actions: Actions, *, batch_ndim: int | None = None) -> jax.Array:
    """Joint log-probability of ``actions`` (float32 ``[...]``), summed over heads and entries."""
    bd = _batch_ndim(logits, batch_ndim)
    missing = set(logits) ^ set(actions)
    if missing:
        raise ValueError(f"logits and actions name different heads: {sorted(logits)} vs {sorted(actions)}")
    total = None
    for name in sorted(logits):
        dist = distrax.Categorical(logits=jnp.asarray(logits[name], jnp.float32))
        lp = _sum_entries(dist.log_prob(jnp.asarray(actions[name], jnp.int32)), bd)
        total = lp if total is None else total + lp
    return total


def entropy(logits: Logits, *, batch_ndim: int | None = None) -> jax.Array:
    """Joint entropy (float32 ``[...]``) of the independent categoricals, summed over heads and entries."""
    bd = _batch_ndim(logits, batch_ndim)
    total = None
    for name in sorted(logits):
        ent = _sum_entries(distrax.Categorical(logits=jnp.asarray(logits[name], jnp.float32)).entropy(), bd)
        total = ent if total is None else total + ent
    return total


def act_parts(key: jax.Array, features: jax.Array, kernel: jax.Array, bias: jax.Array, action_spec, *,
              native: bool | None = None, mesh=None):
    """Acting from the network's parts (``population_apply(..., parts=True)``): features
    ``[P, n, H]``, output kernel ``[P, H, W + 1]`` and bias ``[P, W + 1]``. Returns
    ``(actions, log_prob, value)``: ``actions[name]`` int32 ``[P, n, *head.shape]``, the
    joint log-probability and the value ``[P, n]``.

    ``native`` (default: :func:`agents.native.available`): the output layer and the draws
    in one native pass (:func:`agents.native.act`, uniforms from ``rng.uniform(key, [P, n,
    K])``); otherwise the joint output by XLA and :func:`sample_actions`. Both draw every
    categorical from softmax(logits). With a multi-device ``mesh`` the native call runs
    per shard of the agents axis (axis 1) under ``shard_map``; its uniforms are drawn
    before, from global indices, so the actions do not depend on the number of devices.
    """
    from agents import native as _native

    if native is None:
        native = _native.available()
    if not native:
        logits, value = split_joint(features @ kernel + bias[..., None, :], action_spec)
        actions, lp = sample_actions(key, logits, batch_ndim=value.ndim)
        return actions, lp, value
    if kernel.shape[-1] != joint_width(action_spec) + 1:
        raise ValueError(f"output kernel has {kernel.shape[-1]} columns, the spec needs {joint_width(action_spec)} + 1")
    sizes = head_sizes(action_spec)
    u = rng.uniform(key, features.shape[:-1] + (len(sizes),))
    call = lambda h, w, b, uu: _native.act(h, w, b, uu, sizes)  # noqa: E731
    if mesh is not None and mesh.size > 1:
        from jax.sharding import PartitionSpec as PS

        rows, rep = PS(None, mesh.axis_names[0]), PS()
        call = jax.shard_map(call, mesh=mesh, in_specs=(rows, rep, rep, rows), out_specs=(rows, rows, rows))
    flat, lp, value = call(features, kernel, bias, u)
    return _split_columns(flat, action_spec, None), lp, value


# ---- the policy's loss terms from the output layer, forward and backward in one pass ----


def _groups(sizes: tuple) -> list[tuple[int, int, int, int]]:
    """Runs of equal-size categoricals: ``(column offset, first categorical, count, choices)``."""
    out, off, i = [], 0, 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        out.append((off, i, j - i, sizes[i]))
        off, i = off + (j - i) * sizes[i], j
    return out


def _xla_terms(z: jax.Array, actions: jax.Array, sizes: tuple):
    """XLA path of :func:`policy_terms` from the output ``z [..., C]``: per categorical
    log-probability of its action, entropy, and the pieces the gradient needs."""
    lps, ents, res = [], [], []
    for off, i, k, c in _groups(sizes):
        x = z[..., off:off + k * c].reshape(z.shape[:-1] + (k, c))
        m = jnp.max(x, -1, keepdims=True)
        e = jnp.exp(x - m)
        s = jnp.sum(e, -1, keepdims=True)
        ls = jnp.log(s)
        ent = ls[..., 0] - jnp.sum(e * (x - m), -1) / s[..., 0]
        a = jnp.clip(actions[..., i:i + k], 0, c - 1)
        lps.append(jnp.take_along_axis(x, a[..., None], -1)[..., 0] - m[..., 0] - ls[..., 0])
        ents.append(ent)
        res.append((m + ls, ent))
    return jnp.concatenate(lps, -1), jnp.concatenate(ents, -1), res


def _xla_grad(z, actions, res, g_lp, g_ent, g_v, sizes):
    """``dz`` of :func:`policy_terms` by XLA (the formula of :func:`agents.native.stats_grad`)."""
    parts = []
    for (off, i, k, c), (log_z, ent) in zip(_groups(sizes), res):
        x = z[..., off:off + k * c].reshape(z.shape[:-1] + (k, c))
        logp = x - log_z
        gl, ge = g_lp[..., i:i + k, None], g_ent[..., i:i + k, None]
        chosen = jnp.arange(c) == jnp.clip(actions[..., i:i + k, None], 0, c - 1)
        d = jnp.where(chosen, gl, 0.0) - jnp.exp(logp) * (gl + ge * (logp + ent[..., None]))
        parts.append(d.reshape(z.shape[:-1] + (k * c,)))
    return jnp.concatenate(parts + [g_v[..., None]], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def policy_terms(h: jax.Array, kernel: jax.Array, bias: jax.Array, actions: jax.Array, sizes: tuple, native: bool):
    """What the PPO loss needs from the output layer, as one differentiable function:
    features ``h [n, H]``, kernel ``[H, C]`` and bias ``[C]`` (``C = sum(sizes) + 1``: the
    categoricals' logits in :func:`head_sizes` order, then the value; ``parts=True`` of
    :class:`ActorCritic`) and the actions taken ``int32 [n, K]`` -> ``(log_prob [n, K],
    entropy [n, K], value [n])`` per categorical.

    Its gradient is written out, not traced through a log-softmax: for categorical ``j``
    with probabilities ``p``, ``dz_i = glp_j [i = a_j] - p_i (glp_j + gent_j (log p_i +
    H_j))`` with respect to ``z = h . kernel + bias``, then ``dh = dz kernel^T``,
    ``dkernel = h^T dz``, ``dbias = sum dz``. ``native`` (static): the forward pass and
    the whole backward pass by the native kernels (:func:`agents.native.stats`,
    :func:`agents.native.stats_grad`: the logits and ``dz`` formed in cache, never stored),
    else by XLA (the same numbers up to float
    rounding). Works under ``vmap`` (members) and ``jit``."""
    return _policy_terms_fwd(h, kernel, bias, actions, sizes, native)[0]


def _policy_terms_fwd(h, kernel, bias, actions, sizes, native):
    from agents import native as _native

    if native:
        lp, ent, value = _native.stats(h, kernel, bias, actions, sizes)
        return (lp, ent, value), (h, kernel, bias, actions, None, None)
    z = h @ kernel + bias
    lp, ent, res = _xla_terms(z, actions, sizes)
    return (lp, ent, z[..., -1]), (h, kernel, bias, actions, z, res)


def _policy_terms_bwd(sizes, native, residuals, grads):
    from agents import native as _native

    h, kernel, bias, actions, z, res = residuals
    g_lp, g_ent, g_v = grads
    if native:
        return (*_native.stats_grad(h, kernel, bias, actions, g_lp, g_ent, g_v, sizes), None)
    dz = _xla_grad(z, actions, res, g_lp, g_ent, g_v, sizes)
    rows = lambda x: x.reshape((-1, x.shape[-1]))  # noqa: E731
    return dz @ kernel.T, rows(h).T @ rows(dz), jnp.sum(rows(dz), 0), None


policy_terms.defvjp(_policy_terms_fwd, _policy_terms_bwd)


def flat_actions(actions: Actions, action_spec) -> jax.Array:
    """``actions`` dict -> int32 ``[..., K]`` in :func:`head_sizes` order."""
    parts = []
    for h in sorted(action_spec, key=lambda h: h.name):
        a = jnp.asarray(actions[h.name], jnp.int32)
        parts.append(a.reshape(a.shape[:a.ndim - len(h.shape)] + (-1,)))
    return jnp.concatenate(parts, -1)


class FusedPolicy:
    """The network as the PPO loss sees it, through :func:`policy_terms`.

    ``evaluate(params, obs [n, D], actions) -> (log_prob [n], entropy {head: [n]}, value
    [n])``: the joint log-probability of the actions, each head's entropy (summed over
    its entries) and the value, with the gradient of :func:`policy_terms`. Calling it as
    ``apply_fn(params, obs)`` gives ``(logits, value)`` like :func:`joint_apply`.

    ``native`` (default: :func:`agents.native.available`, which announces once why not
    where it cannot run): the native kernels, else the XLA path; ``native=True`` where they
    cannot run raises ``RuntimeError``."""

    def __init__(self, net: ActorCritic, native: bool | None = None):
        from agents import native as _native

        self.net = net
        if native is False:  # the XLA path on purpose: nothing to build
            self.native = False
        else:
            ok = _native.available()  # builds and registers the kernels (or says once why not)
            if native and not ok:
                raise RuntimeError(f"native kernels unavailable: {_native._load()}")
            self.native = ok
        self.sizes = tuple(head_sizes(net.action_spec))
        self._apply = joint_apply(net)
        heads = sorted(net.action_spec, key=lambda h: h.name)
        counts = [math.prod(h.shape) for h in heads]
        starts = np.cumsum([0] + counts)
        self.heads = [(h.name, int(a), int(b)) for h, a, b in zip(heads, starts[:-1], starts[1:])]

    def __call__(self, params, obs):
        return self._apply(params, obs)

    def evaluate(self, params, obs, actions):
        h, kernel, bias = self.net.apply(params, obs, parts=True)
        lp, ent, value = policy_terms(h, kernel, bias, flat_actions(actions, self.net.action_spec), self.sizes, self.native)
        return self._joint(lp, ent, value)

    def _joint(self, lp, ent, value):
        return jnp.sum(lp, -1), {name: jnp.sum(ent[..., a:b], -1) for name, a, b in self.heads}, value


class EntityPolicy:
    """:class:`EntityActorCritic` as the trainer acts and learns through it, with the MLP's
    fast path (:class:`FusedPolicy`, :func:`act_parts`): the order heads are one output
    layer applied to each good's features (:class:`EntityParts`: every (agent, good) a row,
    one kernel for all goods), so acting is :func:`agents.native.act` over those rows and
    the PPO loss's terms are :func:`policy_terms` of them (the native kernels, forward and
    backward, where they run; else their XLA twins). The niche head (``J + 1`` choices) and
    the value are XLA's, from :class:`EntityParts`.

    ``evaluate(params, obs [n, D], actions) -> (log_prob [n], {head: entropy [n]}, value
    [n])``, as :class:`FusedPolicy`; ``act(key, params [P, ...], obs [P, n, D], native)
    -> (actions, log_prob [P, n], value [P, n])``, as :func:`act_parts`; calling it as
    ``apply_fn(params, obs)`` gives the network's ``(logits, value)``. The law is
    :class:`EntityActorCritic`'s: a padded good's side is HOLD (forced, so that a masked
    choice is never drawn even where the native exp rounds its probability to 1e-38
    instead of 0) and its side's log-probability and entropy are 0; a padded niche has
    probability exactly 0 (the niche head is drawn by :func:`sample_actions`).
    """

    def __init__(self, net: "EntityActorCritic", native: bool | None = None):
        from agents import native as _native

        self.net = net
        if native is False:
            self.native = False
        else:
            ok = _native.available()
            if native and not ok:
                raise RuntimeError(f"native kernels unavailable: {_native._load()}")
            self.native = ok
        self.good_heads = sorted((h for h in net.action_spec if h.name != "niche"), key=lambda h: h.name)
        self.sizes = tuple(int(h.choices) for h in self.good_heads)
        self.has_niche = any(h.name == "niche" for h in net.action_spec)
        self.side = [h.name for h in self.good_heads].index("side") if any(
            h.name == "side" for h in self.good_heads) else None

    def __call__(self, params, obs):
        return self.net.apply(params, obs)

    def _mask_side(self, x, real):
        """``x [..., G, K]`` with the side column zeroed at padded goods."""
        if self.side is None:
            return x
        return x.at[..., self.side].set(jnp.where(real, x[..., self.side], 0.0))

    def evaluate(self, params, obs, actions):
        pt = self.net.apply(params, obs, parts=True)
        lp, ents = jnp.zeros(pt.value.shape, jnp.float32), {}
        if self.good_heads:
            h = pt.goods_h
            rows = h.reshape((-1, h.shape[-1]))  # [n * G, H + 1]
            acts = jnp.stack([jnp.asarray(actions[g.name], jnp.int32) for g in self.good_heads], -1)
            glp, gent, _ = policy_terms(rows, pt.goods_kernel, pt.goods_bias, acts.reshape((-1, len(self.sizes))),
                                        self.sizes, self.native)
            glp = self._mask_side(glp.reshape(h.shape[:-1] + (len(self.sizes),)), pt.real_goods)
            gent = self._mask_side(gent.reshape(h.shape[:-1] + (len(self.sizes),)), pt.real_goods)
            lp = lp + jnp.sum(glp, (-2, -1))
            ents = {g.name: jnp.sum(gent[..., i], -1) for i, g in enumerate(self.good_heads)}
        if self.has_niche:
            d = distrax.Categorical(logits=pt.niche_logits)
            lp = lp + d.log_prob(jnp.asarray(actions["niche"], jnp.int32))
            ents["niche"] = d.entropy()
        return lp, ents, pt.value

    def act(self, key: jax.Array, params, obs: jax.Array):
        """Actions of every member's agents: ``params [P, ...]``, ``obs [P, n, D]``. Keys:
        ``jax.random.split(key)``: the first draws the order heads' uniforms (native) or
        their :func:`sample_actions`, the second the niche's :func:`sample_actions`."""
        from agents import native as _native

        pt = population_apply(self.net, params, obs, parts=True)
        k_goods, k_niche = jax.random.split(key)
        actions, lp = {}, jnp.zeros(pt.value.shape, jnp.float32)
        if self.good_heads:
            h = pt.goods_h  # [P, n, G, H + 1]
            P, n, G = h.shape[:3]
            if self.native:
                # u >= 1e-30: the native exp rounds a masked choice's probability up to
                # ~1e-38 (not 0), and the inverse CDF would draw it at u = 0 exactly
                u = jnp.maximum(rng.uniform(k_goods, (P, n * G, len(self.sizes))), 1e-30)
                flat, glp, _ = _native.act(h.reshape((P, n * G, -1)), pt.goods_kernel, pt.goods_bias, u, self.sizes)
                flat, glp = flat.reshape((P, n, G, -1)), jnp.sum(glp.reshape((P, n, G)), -1)
                for i, g in enumerate(self.good_heads):
                    actions[g.name] = flat[..., i]
            else:
                z = jnp.einsum("pngh,phc->pngc", h, pt.goods_kernel) + pt.goods_bias[:, None, None, :]
                logits, off = {}, 0
                for g, c in zip(self.good_heads, self.sizes):
                    logits[g.name], off = z[..., off:off + c], off + c
                actions, glp = sample_actions(k_goods, logits, batch_ndim=2)
            if self.side is not None:
                actions["side"] = jnp.where(pt.real_goods, actions["side"], HOLD)
            lp = lp + glp
        if self.has_niche:
            a, nlp = sample_actions(k_niche, {"niche": pt.niche_logits}, batch_ndim=2)
            actions["niche"], lp = a["niche"], lp + nlp
        return actions, lp, pt.value


__all__ = [
    "MASKED", "ActorCritic", "EntityActorCritic", "EntityParts", "EntityPolicy", "FusedPolicy", "act_parts", "padded_obs_blocks", "agent_players", "entropy", "flat_actions", "from_members", "head_sizes",
    "init_population", "joint_apply", "joint_width", "log_prob", "policy_terms", "population_apply",
    "sample_actions", "split_joint", "to_members",
]
