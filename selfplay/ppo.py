"""PPO for one member: GAE with bootstrapping at truncation, the clipped loss, and the
minibatch-epoch update.

Everything here is a pure function of arrays for ONE member; the training loop runs the
population by ``jax.vmap`` over members, e.g.::

    settings = PPOSettings(tx, apply_fn, num_epochs, num_minibatches, ppo_loss)
    update = jax.vmap(lambda p, o, b, k, h: ppo_update(p, o, b, k, h, settings))
    params, opt_state, metrics = update(params, opt_state, batch, keys, hyper)

(``settings``, a :class:`PPOSettings`, is shared and static: close over it, as here,
under ``jax.jit``). ``hyper`` is a mapping of the member's hyperparameters
(:mod:`selfplay.variants`): the loss reads ``clip_eps``, ``ent_coef``, ``vf_coef`` and,
when present, ``ent_coef_niche`` from it and ignores the rest. Per-member learning rates
live in ``opt_state`` when ``tx`` is built with ``optax.inject_hyperparams``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from agents.networks import entropy as _entropy
from agents.networks import log_prob as _log_prob
from economy import rng
from selfplay.batching import minibatch_split

ADV_EPS = 1e-8


def gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    bootstrap: jax.Array,
    last_value: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation, time first. Returns ``(advantages, returns)`` ``[T, n]``.

    * ``rewards``, ``values`` ``[T, n]``; ``dones[t]`` (bool ``[T, n]``): the episode ended
      after step ``t`` (terminated or truncated);
    * ``bootstrap[t]`` ``[T, n]``: value of the true next state where the episode ended
      after step ``t`` by truncation, 0 where it terminated (the caller supplies it);
      ignored where not done;
    * ``last_value`` ``[n]``: value of the state after step ``T-1`` (used where not done).

    ``next_t = bootstrap[t] if dones[t] else values[t+1]`` (``last_value`` at ``T-1``),
    ``delta_t = r_t + gamma * next_t - values[t]``,
    ``A_t = delta_t + gamma * lam * (1 - dones[t]) * A_{t+1}``, ``returns = A + values``.
    ``gamma`` and ``lam`` may be traced scalars (per-member hyperparameters).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    dones = jnp.asarray(dones, bool)
    bootstrap = jnp.asarray(bootstrap, jnp.float32)
    last_value = jnp.asarray(last_value, jnp.float32)
    gamma = jnp.asarray(gamma, jnp.float32)
    lam = jnp.asarray(lam, jnp.float32)

    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    next_values = jnp.where(dones, bootstrap, next_values)
    deltas = rewards + gamma * next_values - values
    carry_mask = 1.0 - dones.astype(jnp.float32)

    def body(next_adv, x):
        delta, keep = x
        adv = delta + gamma * lam * keep * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(body, jnp.zeros_like(last_value), (deltas, carry_mask), reverse=True)
    return advantages, advantages + values


def clipped_surrogate(log_ratio: jax.Array, advantages: jax.Array, clip_eps: float | jax.Array) -> jax.Array:
    """Per-sample clipped PPO policy loss (to be minimised, not reduced):
    ``max(-ratio * A, -clip(ratio, 1-eps, 1+eps) * A)`` with ``ratio = exp(log_ratio)``.

    Its gradient with respect to ``log_ratio`` is exactly zero where the clipped term is
    active (``ratio > 1+eps`` with ``A > 0``, ``ratio < 1-eps`` with ``A < 0``).
    """
    ratio = jnp.exp(log_ratio)
    unclipped = -ratio * advantages
    clipped = -jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return jnp.maximum(unclipped, clipped)


def _policy_terms(apply_fn: Callable, params: Any, batch: dict, batch_ndim: int):
    """``(log_prob, entropy, entropy_niche or None, value, niche logits or None)`` of the
    batch's actions (the logits from the traced path only), the
    per-sample terms every loss of this module is written on: from ``apply_fn.evaluate``
    where the network offers it (:class:`agents.networks.FusedPolicy`: the output layer's
    terms in one pass, natively where the kernels run, and their gradient from the
    cotangents autodiff gives them, :func:`agents.networks.policy_terms`), else from the
    logits of ``apply_fn``. The losses are defined here once; whichever path computes the
    terms, a term added to a loss reaches its gradient."""
    if hasattr(apply_fn, "evaluate"):
        lp, ents, value = apply_fn.evaluate(params, batch["obs"], batch["actions"])
        return lp, sum(ents.values()), ents.get("niche"), value, None
    logits, value = apply_fn(params, batch["obs"])
    lp = _log_prob(logits, batch["actions"], batch_ndim=batch_ndim)
    niche = _entropy({"niche": logits["niche"]}, batch_ndim=batch_ndim) if "niche" in logits else None
    return lp, _entropy(logits, batch_ndim=batch_ndim), niche, value, logits.get("niche")


def _niche_mix_bonus(niche_logits, hyper: Mapping[str, Any], weights=None) -> tuple[jax.Array, dict]:
    """``(mix_coef_niche * H(mean over samples of the niche distribution), {"mix_entropy_niche": H})``
    when ``hyper`` has ``mix_coef_niche``, else ``(0, {})``: the entropy of the mix the
    minibatch's agents draw from, not of each agent's draw (weighted like the policy terms)."""
    if hyper.get("mix_coef_niche") is None:
        return jnp.zeros((), jnp.float32), {}
    if niche_logits is None:
        raise ValueError("mix_coef_niche needs the niche logits: the traced loss path (train.loss_path=traced)")
    p = jax.nn.softmax(niche_logits.reshape((-1, niche_logits.shape[-1])), -1)
    w = jnp.ones(p.shape[:1], p.dtype) if weights is None else weights.reshape(-1)
    mix = jnp.sum(p * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1.0)
    h = -jnp.sum(mix * jnp.log(jnp.maximum(mix, 1e-30)))
    return hyper["mix_coef_niche"] * h, {"mix_entropy_niche": h}


def _niche_entropy_bonus(ent_niche, hyper: Mapping[str, Any], mean=jnp.mean) -> tuple[jax.Array, dict]:
    """``(ent_coef_niche * mean entropy of the niche head, {"entropy_niche": ...})`` when
    ``hyper`` has ``ent_coef_niche`` (an extra bonus on the niche head alone), else ``(0, {})``."""
    if hyper.get("ent_coef_niche") is None:
        return jnp.zeros((), jnp.float32), {}
    ent_niche = mean(ent_niche)
    return hyper["ent_coef_niche"] * ent_niche, {"entropy_niche": ent_niche}


def ppo_loss(params: Any, apply_fn: Callable, batch: dict, hyper: Mapping[str, Any]) -> tuple[jax.Array, dict]:
    """PPO loss of one member on one minibatch. Returns ``(loss, metrics)``.

    ``hyper``: the member's hyperparameters; the loss reads ``clip_eps``, ``ent_coef`` and
    ``vf_coef`` (scalars, may be traced) and, when present, ``ent_coef_niche`` (an extra
    entropy bonus on the niche head alone, reported as ``entropy_niche``) and
    ``mix_coef_niche`` (a bonus on the entropy of the minibatch's mean niche distribution,
    reported as ``mix_entropy_niche``; traced path only); it ignores other entries.

    ``apply_fn(params, obs) -> (logits, value)``, or a network with ``evaluate(params, obs,
    actions) -> (log_prob, {head: entropy}, value)`` (:class:`agents.networks.FusedPolicy`,
    the fast path: the same loss, its gradient written out); ``batch``: ``obs [n, D]``, ``actions``
    (dict of ``[n, *head.shape]``), ``log_prob [n]`` (behaviour policy), ``advantages
    [n]``, ``returns [n]``, ``values [n]`` (old value estimates).

    ``batch["weights"] [n]`` (optional, 0 or 1): the policy terms (surrogate, entropies, KL
    and clip fraction) average over the samples of weight 1 only, e.g. the steps where a
    drawn niche counted (``economy.niche_tenure``); the value loss counts every sample.

    ``loss = policy_loss + vf_coef * value_loss - ent_coef * entropy`` with advantages
    normalised over the minibatch (``(A - mean) / (std + 1e-8)``), the clipped surrogate
    (:func:`clipped_surrogate`), the PPO2 clipped value loss
    ``0.5 * mean(max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2))`` and the
    mean joint entropy. Metrics: ``policy_loss``, ``value_loss``, ``entropy``,
    ``approx_kl`` (mean of ``(ratio - 1) - log ratio``), ``clip_fraction`` (share of
    samples with ``|ratio - 1| > eps``).
    """
    clip_eps, ent_coef, vf_coef = hyper["clip_eps"], hyper["ent_coef"], hyper["vf_coef"]
    old_log_prob = batch["log_prob"]
    adv = batch["advantages"]
    adv = (adv - adv.mean()) / (adv.std() + ADV_EPS)
    new_log_prob, ent, ent_niche, value, niche_logits = _policy_terms(apply_fn, params, batch, old_log_prob.ndim)
    log_ratio = new_log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    w = batch.get("weights")
    mean = (lambda x: x.mean()) if w is None else (lambda x: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0))  # noqa: E731

    policy_loss = mean(clipped_surrogate(log_ratio, adv, clip_eps))

    old_values, returns = batch["values"], batch["returns"]
    value_clipped = old_values + jnp.clip(value - old_values, -clip_eps, clip_eps)
    value_loss = 0.5 * jnp.maximum(jnp.square(value - returns), jnp.square(value_clipped - returns)).mean()

    ent = mean(ent)
    bonus, extra = _niche_entropy_bonus(ent_niche, hyper, mean)
    mix_bonus, mix_extra = _niche_mix_bonus(niche_logits, hyper, w)
    extra = {**extra, **mix_extra}
    loss = policy_loss + vf_coef * value_loss - ent_coef * ent - bonus - mix_bonus
    metrics = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": ent,
        "approx_kl": mean((ratio - 1.0) - log_ratio),
        "clip_fraction": mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)),
        **extra,
    }
    return loss, metrics


def imitation_loss(params: Any, apply_fn: Callable, batch: dict, hyper: Mapping[str, Any]) -> tuple[jax.Array, dict]:
    """Imitation (behaviour cloning) loss of one member on one minibatch of a teacher's
    actions, with the same inputs and metrics as :func:`ppo_loss`:

    ``loss = -mean log pi(a_teacher | o) + vf_coef * 0.5 * mean((v - R)^2) - ent_coef * entropy``

    (``ent_coef_niche`` as in :func:`ppo_loss`). ``policy_loss`` reports the negative
    log-likelihood; ``approx_kl`` and ``clip_fraction`` are 0 (no behaviour ratio)."""
    ent_coef, vf_coef = hyper["ent_coef"], hyper["vf_coef"]
    lp, ent, ent_niche, value, _ = _policy_terms(apply_fn, params, batch, batch["log_prob"].ndim)
    nll = -lp.mean()
    value_loss = 0.5 * jnp.square(value - batch["returns"]).mean()
    ent = ent.mean()
    bonus, extra = _niche_entropy_bonus(ent_niche, hyper)
    loss = nll + vf_coef * value_loss - ent_coef * ent - bonus
    zero = jnp.zeros((), jnp.float32)
    metrics = {"policy_loss": nll, "value_loss": value_loss, "entropy": ent, "approx_kl": zero, "clip_fraction": zero, **extra}
    return loss, metrics


def minibatch_order(key: jax.Array, streams: int, samples: int) -> jax.Array:
    """int32 ``[streams, samples]``: a random permutation of ``0..samples-1`` per stream,
    from a counter-based hash of ``(key, stream, sample)`` (:func:`economy.rng.bits`), so a
    stream's order does not depend on how the stream axis is split over devices."""
    return jnp.argsort(rng.bits(key, (streams, samples)), axis=-1).astype(jnp.int32)


def minibatches(x: jax.Array, order: jax.Array, num_minibatches: int) -> jax.Array:
    """``x [B, K, ...]`` shuffled per stream by ``order [B, K]`` (:func:`minibatch_order`)
    and cut into ``[num_minibatches, B / groups, K / parts, ...]`` (:func:`minibatch_split`):
    minibatch ``g * parts + q`` holds part ``q`` of the shuffled samples of the streams of
    group ``g``. Nothing moves along the stream axis except by a reshape that keeps every
    device's streams on it (when ``groups`` divides the streams per device)."""
    b, k = order.shape
    groups, parts = minibatch_split(num_minibatches, b, k)
    x = jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
    x = x.reshape((b // groups, groups, parts, k // parts) + x.shape[2:])
    x = jnp.moveaxis(x, 0, 2)  # [groups, parts, B / groups, K / parts, ...]
    return x.reshape((num_minibatches, b // groups, k // parts) + x.shape[4:])


class PPOSettings(NamedTuple):
    """How :func:`ppo_update` learns (static under ``jit``): the optimiser, the network as
    the loss sees it, the epochs and minibatches per update, and the loss."""

    tx: optax.GradientTransformation
    apply_fn: Callable  # (params, obs) -> (logits, value), or an agents.networks.FusedPolicy
    num_epochs: int
    num_minibatches: int
    loss_fn: Callable = ppo_loss  # or imitation_loss (a warm start)


def ppo_update(params: Any, opt_state: Any, batch: dict, key: jax.Array, hyper: Mapping[str, Any],
               settings: PPOSettings) -> tuple[Any, Any, dict]:
    """``settings.num_epochs`` passes over ``batch``, one optimiser step per minibatch of
    ``settings.loss_fn`` (:func:`ppo_loss` by default, or :func:`imitation_loss` for a warm
    start), with ``settings.tx`` and the network ``settings.apply_fn``.

    ``batch`` leaves are ``[B, K, ...]``: ``B`` streams (agents) of ``K`` samples (time
    steps). Each epoch shuffles every stream's samples (:func:`minibatch_order` with
    ``jax.random.split(key, num_epochs)[e]``) and cuts them into parts; a minibatch is one
    part of every stream of one interleaved group of streams (:func:`minibatches`; one
    group when ``num_minibatches`` divides ``K``). Nothing moves across devices when the
    stream axis is sharded, only gradients and loss statistics are reduced, and the
    result does not depend on the number of devices. (A single stream, ``B = 1``, is the
    usual global shuffle.)

    Returns ``(params, opt_state, metrics)`` with the metrics of :func:`ppo_loss` plus
    ``loss`` and ``grad_norm`` (global norm of the gradient, before clipping), averaged over all ``num_epochs * num_minibatches`` steps. Jittable, and
    vmappable over members (see the module docstring).
    """
    tx, apply_fn, num_epochs, num_minibatches, loss_fn = settings
    if num_epochs < 1 or num_minibatches < 1:
        raise ValueError(f"num_epochs and num_minibatches must be >= 1, got {num_epochs} and {num_minibatches}")
    shapes = {tuple(jnp.shape(x)[:2]) for x in jax.tree.leaves(batch)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"batch leaves must share leading axes [streams, samples]; got {sorted(shapes)}")
    ((b, k),) = shapes
    minibatch_split(num_minibatches, b, k)  # checks divisibility
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def minibatch_step(carry, mb):
        p, o = carry
        mb = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), mb)
        (loss, metrics), grads = grad_fn(p, apply_fn, mb, hyper)
        updates, o = tx.update(grads, o, p)
        p = optax.apply_updates(p, updates)
        return (p, o), {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    def epoch(carry, key):
        order = minibatch_order(key, b, k)
        return jax.lax.scan(minibatch_step, carry, jax.tree.map(lambda x: minibatches(x, order, num_minibatches), batch))

    (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, num_epochs))
    return params, opt_state, jax.tree.map(jnp.mean, metrics)


__all__ = [
    "PPOSettings", "clipped_surrogate", "gae", "imitation_loss", "minibatch_order", "minibatch_split", "minibatches",
    "ppo_loss", "ppo_update",
]
