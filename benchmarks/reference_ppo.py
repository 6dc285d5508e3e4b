"""A straightforward PureJaxRL-style self-play update on Agora's economy: the reference
that ``benchmarks/train_step.py`` and ``agora bench`` time Agora's update against.

Written the way a PureJaxRL user would write it against the same economy, shapes and
batch, with none of Agora's speed work:

* a Linen MLP torso (tanh), one ``nn.Dense`` per action head and one for the value;
* acting: per head a ``distrax.Categorical``, sampled with its own key
  (``sample_and_log_prob``, Gumbel-max);
* GAE by a reverse ``lax.scan`` (bootstrapping truncated episodes as Agora does);
* PPO: per member the flattened batch ``[T * n]`` permuted by ``jax.random.permutation``
  each epoch and cut into minibatches; the clipped surrogate, the clipped value loss and
  the entropy bonus from ``distrax`` per head (autodiff through them); advantages
  normalised per minibatch; ``optax.chain(clip_by_global_norm, adam)``;
* every member by ``jax.vmap`` over stacked parameters; agent ``i`` played by member ``i % P``.

Same law as Agora's update: the actions are drawn from the same categoricals (softmax of
the same logits: the modules carry Agora's parameter names, so the parameters are
interchangeable), and the loss is Agora's ``ppo_loss`` term for term (tests/test_fast_ppo.py
checks loss and gradients against Agora's on one minibatch). What the reference leaves
out is bookkeeping that costs little: PBT, the league, value normalisation, the on-device
analysis, per-member hyperparameters (every member uses the midpoints of the config's
ranges) and reward components other than utility.

    from benchmarks.reference_ppo import Reference
    ref = Reference(cfg); state = ref.init(jax.random.key(0)); state, metrics = ref.update(state)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from agents.networks import from_members, orthogonal, to_members
from economy import Economy


class RefNet(nn.Module):
    """Torso, one Dense per head, value; Agora's module names and initialisation."""

    action_spec: tuple
    hidden: tuple = (128, 128)
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs):
        act = nn.tanh if self.activation == "tanh" else nn.relu
        x = obs
        for i, w in enumerate(self.hidden):
            x = act(nn.Dense(w, kernel_init=orthogonal(math.sqrt(2.0)), name=f"torso_{i}")(x))
        logits = {}
        for h in self.action_spec:
            shape = tuple(int(s) for s in h.shape)
            out = nn.Dense(math.prod(shape) * int(h.choices), kernel_init=orthogonal(0.01), name=f"policy_{h.name}")(x)
            logits[h.name] = out.reshape(x.shape[:-1] + shape + (int(h.choices),))
        value = nn.Dense(1, kernel_init=orthogonal(1.0), name="value")(x)[..., 0]
        return logits, value


def dist_log_prob(logits: dict, actions: dict) -> jax.Array:
    return sum(distrax.Categorical(logits=logits[k]).log_prob(actions[k]).reshape(actions[k].shape[:1] + (-1,)).sum(-1)
               for k in sorted(logits))


def dist_entropy(logits: dict) -> jax.Array:
    return sum(distrax.Categorical(logits=v).entropy().reshape(v.shape[:1] + (-1,)).sum(-1)
               for _, v in sorted(logits.items()))


def ppo_loss(params, net, mb, hp):
    """Agora's PPO objective (selfplay.ppo.ppo_loss), written out with distrax."""
    logits, value = net.apply(params, mb["obs"])
    log_ratio = dist_log_prob(logits, mb["actions"]) - mb["log_prob"]
    ratio = jnp.exp(log_ratio)
    adv = (mb["advantages"] - mb["advantages"].mean()) / (mb["advantages"].std() + 1e-8)
    policy_loss = jnp.maximum(-ratio * adv, -jnp.clip(ratio, 1 - hp["clip_eps"], 1 + hp["clip_eps"]) * adv).mean()
    v_clip = mb["values"] + jnp.clip(value - mb["values"], -hp["clip_eps"], hp["clip_eps"])
    value_loss = 0.5 * jnp.maximum(jnp.square(value - mb["returns"]), jnp.square(v_clip - mb["returns"])).mean()
    ent = dist_entropy(logits).mean()
    return policy_loss + hp["vf_coef"] * value_loss - hp["ent_coef"] * ent, ent


class RefState(NamedTuple):
    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    key: jax.Array
    episode: jax.Array


class Reference:
    """The reference update of a run config (its economy, members, rollout steps, epochs,
    minibatches, network and optimiser settings)."""

    def __init__(self, cfg):
        t = cfg.train
        self.cfg, self.env = cfg, Economy(cfg.economy)
        self.P, self.T = t.members, t.rollout_steps
        self.net = RefNet(self.env.action_spec, tuple(t.network.hidden), t.network.activation)
        mid = {k: 0.5 * (lo + hi) for k, (lo, hi) in t.variants.ranges.items()}
        self.hp = {k: mid[k] for k in ("clip_eps", "ent_coef", "vf_coef", "gamma", "gae_lambda")}
        self.tx = optax.chain(optax.clip_by_global_norm(t.max_grad_norm), optax.adam(mid["learning_rate"], eps=1e-5))
        self.update = jax.jit(self._update, donate_argnums=0)

    def init(self, key) -> RefState:
        k_net, k_env, k_run = jax.random.split(key, 3)
        obs, env_state = self.env.reset(k_env)
        dummy = jnp.zeros((1, self.env.obs_dim), jnp.float32)
        params = jax.jit(jax.vmap(lambda k: self.net.init(k, dummy)))(jax.random.split(k_net, self.P))
        return RefState(params, jax.vmap(self.tx.init)(params), env_state, obs, k_run, jnp.zeros((), jnp.int32))

    def _apply(self, params, obs):  # agent-major [N, D] -> member-major logits, values
        return jax.vmap(self.net.apply)(params, to_members(obs, self.P))

    def _update(self, s: RefState):
        env, P, hp = self.env, self.P, self.hp
        key, k_roll, k_ppo = jax.random.split(s.key, 3)

        def step(carry, k):
            env_state, obs, episode = carry
            k_act, k_env, k_reset = jax.random.split(k, 3)
            logits, value = self._apply(s.params, obs)
            actions, log_prob = {}, 0.0
            for hk, name in zip(jax.random.split(k_act, len(logits)), sorted(logits)):
                a, lp = distrax.Categorical(logits=logits[name]).sample_and_log_prob(seed=hk)
                actions[name] = a
                log_prob = log_prob + lp.reshape(lp.shape[:2] + (-1,)).sum(-1)
            obs2, state2, reward, term, trunc, _ = env.step(k_env, env_state, from_members(actions))
            done = jnp.any(term) | jnp.any(trunc)
            boot = jnp.where(jnp.any(term), 0.0, self._apply(s.params, obs2)[1])
            obs2, state2, episode = jax.lax.cond(
                done, lambda: (*env.reset(jax.random.fold_in(k_reset, episode)), episode + 1),
                lambda: (obs2, state2, episode))
            tr = {"obs": to_members(obs, P), "actions": actions, "log_prob": log_prob, "value": value,
                  "reward": to_members(reward, P), "done": jnp.broadcast_to(done, value.shape), "boot": boot}
            return (state2, obs2, episode), tr

        (env_state, obs, episode), tr = jax.lax.scan(step, (s.env_state, s.obs, s.episode), jax.random.split(k_roll, self.T))
        last_value = self._apply(s.params, obs)[1]

        def gae_step(next_adv_value, x):
            next_adv, next_value = next_adv_value
            r, v, d, b = x
            nv = jnp.where(d, b, next_value)
            adv = r + hp["gamma"] * nv - v + hp["gamma"] * hp["gae_lambda"] * (1 - d) * next_adv
            return (adv, v), adv

        _, adv = jax.lax.scan(gae_step, (jnp.zeros_like(last_value), last_value),
                              (tr["reward"], tr["value"], tr["done"], tr["boot"]), reverse=True)
        batch = {"obs": tr["obs"], "actions": tr["actions"], "log_prob": tr["log_prob"], "values": tr["value"],
                 "advantages": adv, "returns": adv + tr["value"]}
        # [T, P, n, ...] -> per member [T * n, ...]
        batch = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((P, -1) + x.shape[3:]), batch)
        nmb, epochs = self.cfg.train.minibatches, self.cfg.train.epochs

        def member(params, opt_state, b, k):
            def epoch(carry, ek):
                perm = jax.random.permutation(ek, b["obs"].shape[0])
                mbs = jax.tree.map(lambda x: jnp.take(x, perm, 0).reshape((nmb, -1) + x.shape[1:]), b)

                def mb_step(c, mb):
                    p, o = c
                    (loss, ent), g = jax.value_and_grad(ppo_loss, has_aux=True)(p, self.net, mb, hp)
                    upd, o = self.tx.update(g, o, p)
                    return (optax.apply_updates(p, upd), o), loss

                return jax.lax.scan(mb_step, carry, mbs)

            (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), jax.random.split(k, epochs))
            return params, opt_state, losses.mean()

        params, opt_state, loss = jax.vmap(member)(s.params, s.opt_state, batch, jax.random.split(k_ppo, P))
        return RefState(params, opt_state, env_state, obs, key, episode), {"loss": loss, "reward": tr["reward"].mean()}


__all__ = ["RefNet", "RefState", "Reference", "dist_entropy", "dist_log_prob", "ppo_loss"]
