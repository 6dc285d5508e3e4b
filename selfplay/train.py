"""Population self-play: PPO with per-member RL variants, PBT and a league, all on the device.

``make_train(cfg)`` returns a :class:`Trainer` whose ``init(key)`` builds the whole
training state and whose ``update(state)`` is ONE jitted function: a ``lax.scan``
rollout of the economy, GAE, PPO epochs vmapped over members, then PBT and league
bookkeeping. ``train(key)`` scans ``update`` over the configured number of updates, so
seeds (or whole populations) vmap.

Players. ``P`` learning members and ``K`` frozen league snapshots share the ``N``
agents: agent ``i`` is played by player ``i % (P + K)``; players ``0..P-1`` are the
members. The agent axis is regrouped per player by a reshape (:func:`to_members`), and
the forward pass is vmapped over stacked parameters, so no parameters are gathered per
agent. Every market holds agents of every player (the config checks divisibility).

Rewards. The economy returns per-agent components (utility, specialisation,
collaboration); member ``p`` is trained on ``w_p . components`` with its own weights.

Truncation. Episodes end for a whole world at ``economy.episode_length``; the next world
is drawn in the scan (a ``lax.cond``) and the value of the true final observation is
kept as the GAE bootstrap, so truncation is not mistaken for termination.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from agents.networks import (
    ActorCritic, act_parts, from_members, init_population, joint_apply, population_apply, sample_actions, to_members,
)
from analysis.niches import specialisation_index
from economy.sharding import agent_mesh, state_sharding
from analysis.population import population_analysis
from economy import Economy, EconomyState
from selfplay.config import RunConfig
from selfplay.ppo import gae, ppo_update

COMPONENTS = ("utility", "specialisation", "collaboration")
HYPER = ("learning_rate", "ent_coef", "clip_eps", "gamma", "gae_lambda")


@struct.dataclass
class Hyper:
    """Per-member hyperparameters, float32 ``[P]`` (``reward_w``: ``[P, 3]``). The
    learning rate used by the optimiser lives in its state (``optax.inject_hyperparams``)
    and is kept equal to ``learning_rate`` here."""

    learning_rate: jax.Array
    ent_coef: jax.Array
    clip_eps: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    reward_w: jax.Array


@struct.dataclass
class PBTState:
    fitness: jax.Array  # float32 [P] running fitness
    parent: jax.Array  # int32 [P] member copied at the last PBT event (own index if never)
    copied_at: jax.Array  # int32 [P] update of the last copy (-1 if never)
    generation: jax.Array  # int32 [P] number of copies in this slot's lineage


@struct.dataclass
class LeagueState:
    params: Any  # [K, ...] frozen snapshots
    source: jax.Array  # int32 [K] member the snapshot was taken from
    made_at: jax.Array  # int32 [K] update of the snapshot
    refreshes: jax.Array  # int32 [] snapshots taken so far


@struct.dataclass
class TrainState:
    params: Any  # [P, ...]
    opt_state: Any  # [P, ...]
    hyper: Hyper
    pbt: PBTState
    league: LeagueState
    env_state: EconomyState
    obs: jax.Array  # float32 [N, obs_dim]
    key: jax.Array  # uint32 [2] raw key data (checkpointable)
    episode: jax.Array  # int32 [] worlds drawn so far
    update: jax.Array  # int32 [] updates done


class Transition(NamedTuple):
    obs: jax.Array  # [P, n, D]
    actions: dict  # [P, n, ...]
    log_prob: jax.Array  # [P, n]
    value: jax.Array  # [P, n]
    reward: jax.Array  # [P, n]
    done: jax.Array  # [P, n] bool
    bootstrap: jax.Array  # [P, n]


def _log_uniform(key, lo, hi, shape):
    return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))


def sample_hyper(key: jax.Array, cfg: RunConfig) -> Hyper:
    """Draw each member's RL variant from ``train.variants``."""
    v, p = cfg.train.variants, cfg.train.members
    k = jax.random.split(key, 8)
    uni = lambda kk, r: jax.random.uniform(kk, (p,), minval=r[0], maxval=r[1])
    return Hyper(
        learning_rate=_log_uniform(k[0], *v.learning_rate, (p,)),
        ent_coef=_log_uniform(k[1], *v.ent_coef, (p,)),
        clip_eps=uni(k[2], v.clip_eps),
        gamma=uni(k[3], v.gamma),
        gae_lambda=uni(k[4], v.gae_lambda),
        reward_w=jnp.stack([uni(k[5], v.utility), uni(k[6], v.specialisation), uni(k[7], v.collaboration)], -1),
    )


def pbt_sources(fitness: jax.Array, fraction: float) -> jax.Array:
    """int32 ``[P]``: the member each slot copies (itself unless it is in the bottom
    ``fraction``, which copies the top ``fraction``: worst from best, and so on)."""
    p = fitness.shape[0]
    k = int(p * fraction)
    src = jnp.arange(p, dtype=jnp.int32)
    if k == 0:
        return src
    order = jnp.argsort(fitness, stable=True).astype(jnp.int32)  # ascending
    return src.at[order[:k]].set(order[::-1][:k])


def mesh_size(cfg: RunConfig, device_count: int | None = None) -> int:
    """Devices of the agent axis: ``mesh.agents``, or (``auto``) the most devices of all
    processes that divide ``economy.num_markets``. Raises ``ValueError`` naming the key
    when the config asks for more devices than there are."""
    n = jax.device_count() if device_count is None else device_count
    m = cfg.economy.num_markets
    if cfg.mesh.agents == "auto":
        return max(d for d in range(1, min(n, m) + 1) if m % d == 0)
    if cfg.mesh.agents > n:
        raise ValueError(f"mesh.agents={cfg.mesh.agents}: only {n} devices are available")
    return cfg.mesh.agents


class Trainer:
    """Compiled pieces of one self-play configuration (see module docstring)."""

    def __init__(self, cfg: RunConfig, env: Economy | None = None):
        self.cfg = cfg
        t = cfg.train
        self.env = Economy(cfg.economy) if env is None else env
        self.num_members = t.members
        self.num_players = t.players
        self.net = ActorCritic(self.env.action_spec, hidden=tuple(t.network.hidden), activation=t.network.activation)
        self.tx = optax.chain(
            optax.clip_by_global_norm(t.max_grad_norm),
            optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, eps=1e-5),
        )
        # Devices: agents (and markets) split by whole markets over the mesh, everything else
        # replicated; the update keeps that layout (so it never gathers the agent state).
        self.mesh = agent_mesh(jax.devices()[: mesh_size(cfg)])
        self.state_sharding = self._state_sharding(jax.eval_shape(self.init_state, jax.random.key(0)))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.update = jax.jit(
            self._update, in_shardings=(self.state_sharding,), out_shardings=(self.state_sharding, replicated),
            donate_argnums=0,
        )
        self._run = jax.jit(self._scan_updates, static_argnums=1, donate_argnums=0)
        self._init = jax.jit(
            lambda key_data: self.init_state(jax.random.wrap_key_data(key_data)),
            in_shardings=replicated, out_shardings=self.state_sharding,
        )

    # ---- state ------------------------------------------------------------------------
    def world_key(self, episode: jax.Array) -> jax.Array:
        """Training worlds only: seeds ``(seed * 7919 + episode) mod eval_seed_start``."""
        start = self.cfg.economy.world.eval_seed_start
        seed = (jnp.asarray(self.cfg.train.seed, jnp.uint32) * jnp.uint32(7919) + episode.astype(jnp.uint32)) % jnp.uint32(start)
        return jax.random.key(seed)

    def _set_lr(self, opt_state, lr):
        clip_state, adam_state = opt_state
        hp = dict(adam_state.hyperparams, learning_rate=lr)
        return (clip_state, adam_state._replace(hyperparams=hp))

    def init(self, key: jax.Array) -> TrainState:
        """The whole training state from one key; every leaf is a distinct buffer (so an
        update may donate it)."""
        return self._init(np.asarray(jax.random.key_data(key)))

    def init_state(self, key: jax.Array) -> TrainState:
        """:meth:`init` as a pure, traceable function (for ``jit``/``vmap`` over keys)."""
        return self._assemble(key, self._init_learners(key), *self._init_world())

    def _state_sharding(self, ts: TrainState) -> TrainState:
        """A pytree of shardings matching ``ts``: the economy's agent and market arrays and
        the observations split over the mesh by whole markets, the rest replicated."""
        mesh = self.mesh
        rep = NamedSharding(mesh, PartitionSpec())
        return jax.tree.map(lambda _: rep, ts).replace(
            env_state=state_sharding(ts.env_state, mesh), obs=NamedSharding(mesh, PartitionSpec("agents"))
        )

    def place(self, ts: TrainState) -> TrainState:
        """``ts`` laid out as the update expects it (:attr:`state_sharding`)."""
        return jax.device_put(ts, self.state_sharding)

    def _init_world(self):
        return self.env.reset(self.world_key(jnp.zeros((), jnp.int32)))

    def _init_learners(self, key: jax.Array):
        t = self.cfg.train
        k_params, k_hyper, _ = jax.random.split(key, 3)
        params = init_population(self.net, k_params, self.env.obs_dim, t.members)
        hyper = sample_hyper(k_hyper, self.cfg)
        opt_state = jax.vmap(self.tx.init)(params)
        opt_state = jax.vmap(self._set_lr)(opt_state, hyper.learning_rate)
        return params, opt_state, hyper

    def _assemble(self, key, learners, obs, env_state) -> TrainState:
        t = self.cfg.train
        params, opt_state, hyper = learners
        k_run = jax.random.split(key, 3)[2]
        k = t.league.size
        slots = jnp.arange(k, dtype=jnp.int32) % t.members
        league = LeagueState(
            params=jax.tree.map(lambda x: x[slots], params),
            source=slots,
            made_at=jnp.zeros((k,), jnp.int32),
            refreshes=jnp.zeros((), jnp.int32),
        )
        pbt = PBTState(
            fitness=jnp.zeros((t.members,), jnp.float32),
            parent=jnp.arange(t.members, dtype=jnp.int32),
            copied_at=jnp.full((t.members,), -1, jnp.int32),
            generation=jnp.zeros((t.members,), jnp.int32),
        )
        return TrainState(
            params=params,
            opt_state=opt_state,
            hyper=hyper,
            pbt=pbt,
            league=league,
            env_state=env_state,
            obs=obs,
            key=jax.random.key_data(k_run),
            episode=jnp.ones((), jnp.int32),
            update=jnp.zeros((), jnp.int32),
        )

    # ---- one update -------------------------------------------------------------------
    def _players_params(self, ts: TrainState):
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b], 0), ts.params, ts.league.params)

    def _rollout(self, ts: TrainState, key: jax.Array):
        env, P, PL = self.env, self.num_members, self.num_players
        J = env.cfg.num_niches
        params_all = self._players_params(ts)

        def body(carry, key):
            env_state, obs, episode = carry
            k_act, k_step = jax.random.split(key)
            obs_m = to_members(obs, PL)  # [PL, n, D]
            # The torso by XLA; the output layer and the draws in one native pass where it runs.
            parts = population_apply(self.net, params_all, obs_m, parts=True)
            act_m, log_prob, value = act_parts(k_act, *parts, env.action_spec, mesh=self.mesh)
            next_obs, env_state, _, term, trunc, info = env.step(k_step, env_state, from_members(act_m))
            comps = jnp.stack([info[c] for c in COMPONENTS], -1)  # [N, 3]
            comps_m = to_members(comps, PL)[:P]  # [P, n, 3]
            reward = jnp.sum(comps_m * ts.hyper.reward_w[:, None, :], -1)
            terminated = jnp.any(term)
            done = terminated | jnp.any(trunc)

            def new_world():
                _, v_next = population_apply(self.net, ts.params, to_members(next_obs, PL)[:P])
                o, s = env.reset(self.world_key(episode))
                return jnp.where(terminated, 0.0, v_next), o, s, episode + 1

            def same_world():
                return jnp.zeros_like(reward), next_obs, env_state, episode

            bootstrap, obs2, env_state, episode = jax.lax.cond(done, new_world, same_world)
            tr = Transition(
                obs=obs_m[:P],
                actions=jax.tree.map(lambda a: a[:P], act_m),
                log_prob=log_prob[:P],
                value=value[:P],
                reward=reward,
                done=jnp.broadcast_to(done, reward.shape),
                bootstrap=bootstrap,
            )
            chose = jax.nn.one_hot(act_m["niche"][:P], J + 1, dtype=jnp.int32)  # [P, n, J+1]
            units = to_members(info["units"], PL)[:P]  # [P, n]
            stats = {
                "components": jnp.mean(comps_m, 1),  # [P, 3]
                "niche_counts": jnp.sum(chose, 1),  # [P, J+1]
                "niche_output": jnp.sum(chose * units[..., None], 1),  # [P, J+1] units of work by chosen niche
                "market_price": jnp.mean(info["market_price"].astype(jnp.float32), 0),  # [G]
                "market_volume": jnp.sum(info["market_volume"], 0),  # [G]
                "market_occupancy": info["niche_occupancy"],  # [M, J+1] all players
                "project": jnp.mean(info["project"].astype(jnp.float32)),
            }
            return (env_state, obs2, episode), (tr, stats)

        keys = jax.random.split(key, self.cfg.train.rollout_steps)
        (env_state, obs, episode), (traj, stats) = jax.lax.scan(body, (ts.env_state, ts.obs, ts.episode), keys)
        _, last_value = population_apply(self.net, ts.params, to_members(obs, PL)[:P])
        return env_state, obs, episode, traj, stats, last_value

    def _update(self, ts: TrainState):
        t = self.cfg.train
        P = self.num_members
        J = self.env.cfg.num_niches
        key = jax.random.wrap_key_data(ts.key)
        key, k_roll, k_ppo, k_pbt = jax.random.split(key, 4)
        env_state, obs, episode, traj, stats, last_value = self._rollout(ts, k_roll)

        # GAE per member: [T, P, n] -> member-major [P, T, n].
        tm = lambda x: jnp.swapaxes(x, 0, 1)
        adv, ret = jax.vmap(gae)(
            tm(traj.reward), tm(traj.value), tm(traj.done), tm(traj.bootstrap), last_value,
            ts.hyper.gamma, ts.hyper.gae_lambda,
        )
        # PPO batch: each agent a stream of T samples, [T, P, n, ...] -> [P, n, T, ...]; the
        # minibatches split every agent's steps (see ppo_update), so the agent axis stays
        # where the rollout left it (sharded by markets) and nothing moves between devices.
        streams = lambda x: jnp.moveaxis(x, 0, 2)
        batch = {
            "obs": streams(traj.obs),
            "actions": jax.tree.map(streams, traj.actions),
            "log_prob": streams(traj.log_prob),
            "values": streams(traj.value),
            "advantages": jnp.swapaxes(adv, 1, 2),
            "returns": jnp.swapaxes(ret, 1, 2),
        }
        vf = jnp.full((P,), t.vf_coef, jnp.float32)
        params, opt_state, losses = jax.vmap(
            lambda p, o, b, k, c, e, v: ppo_update(
                p, o, self.tx, joint_apply(self.net), b, k, c, e, v, t.epochs, t.minibatches
            )
        )(ts.params, ts.opt_state, batch, jax.random.split(k_ppo, P), ts.hyper.clip_eps, ts.hyper.ent_coef, vf)

        # Fitness: mean utility per agent-step (optionally shared among members of one niche).
        comps = jnp.mean(stats["components"], 0)  # [P, 3]
        niche_counts = jnp.sum(stats["niche_counts"], 0)  # [P, J+1]
        occupancy = jnp.sum(stats["market_occupancy"], 0)  # [M, J+1]
        niche = tm(traj.actions["niche"])  # [P, T, n]
        agent_spec = jax.vmap(lambda x: specialisation_index(x, J + 1))(niche)  # [P, n]
        market_volume = jnp.mean(stats["market_volume"].astype(jnp.float32), 0)  # [G]
        analysis, do_analysis = self._analysis(
            ts, params, traj.obs, niche_counts, jnp.sum(stats["niche_output"], 0), occupancy, agent_spec,
            env_state, market_volume, jax.random.fold_in(k_pbt, 1),
        )
        fit_now = comps[:, 0]
        dominant = jnp.argmax(niche_counts[:, :J], -1)
        if t.pbt.fitness == "niche_shared":
            sharing = jnp.sum(dominant[:, None] == dominant[None, :], -1)
            fit_now = fit_now / sharing
        a = t.pbt.fitness_ema
        fitness = jnp.where(ts.update == 0, fit_now, (1 - a) * ts.pbt.fitness + a * fit_now)

        u = ts.update + 1
        ts = ts.replace(
            params=params, opt_state=opt_state, env_state=env_state, obs=obs, episode=episode,
            pbt=ts.pbt.replace(fitness=fitness), key=jax.random.key_data(key), update=u,
        )
        do_pbt = jnp.asarray(t.pbt.enabled and P > 1) & (u % t.pbt.interval == 0)
        src = jnp.where(do_pbt, pbt_sources(fitness, t.pbt.fraction), jnp.arange(P, dtype=jnp.int32))
        ts = jax.lax.cond(do_pbt, lambda s: self._exploit_explore(s, src, k_pbt), lambda s: s, ts)
        if t.league.size:
            do_league = u % t.league.refresh_every == 0
            ts = jax.lax.cond(do_league, self._refresh_league, lambda s: s, ts)

        metrics = {
            "update": u,
            "reward": jnp.mean(traj.reward, (0, 2)),  # [P] per agent-step
            **{c: comps[:, i] for i, c in enumerate(COMPONENTS)},  # [P]
            "specialisation_index": jnp.mean(agent_spec, -1),  # [P]
            "niche_shares": niche_counts / jnp.sum(niche_counts, -1, keepdims=True),  # [P, J+1]
            "occupancy": jnp.sum(occupancy, 0) / jnp.sum(occupancy),  # [J+1] all players
            "market_price": jnp.mean(stats["market_price"], 0),  # [G]
            "market_volume": market_volume,  # [G]
            "project": jnp.mean(stats["project"]),
            "fitness": ts.pbt.fitness,
            "pbt_source": src,  # [P]
            "pbt_event": do_pbt,
            **{k: v for k, v in losses.items()},  # [P] each
            **{h: getattr(ts.hyper, h) for h in HYPER},  # [P] each, after PBT
            "analysis": analysis,  # see analysis.population_analysis; zeros unless analysis_done
            "analysis_done": do_analysis,
        }
        return ts, metrics

    def _analysis(self, ts, params, obs, niche_counts, niche_output, occupancy, agent_spec, env_state, volume, key):
        """Diversity and niche analysis of the members just trained (before PBT copies any),
        every ``train.analysis.every`` updates, under ``lax.cond``; zeros otherwise.
        The probe set: ``probe_states`` observations drawn uniformly from an evenly strided
        subset of the rollout ``obs [T, P, n, D]`` (all steps, members and markets)."""
        a = self.cfg.train.analysis

        T, P, n, D = obs.shape
        # Every ``stride``-th agent of every member, at every step, then ``probe_states``
        # drawn from those: the strided slice is local to each device (it divides the
        # agents per device), so only the small candidate set crosses devices.
        per_device = n // self.mesh.size
        stride = max([s for s in range(1, per_device + 1) if per_device % s == 0 and T * P * (n // s) >= 4 * a.probe_states] or [1])

        def analyse(_):
            flat = obs[:, :, ::stride].reshape(-1, D)
            probe = flat[jax.random.randint(key, (a.probe_states,), 0, flat.shape[0])]
            return population_analysis(
                lambda p, o: population_apply(self.net, p, o), params, probe, niche_counts, niche_output,
                occupancy, agent_spec, env_state.goods, env_state.money, env_state.price, volume, a.histogram_bins,
            )

        def skip(_):
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(analyse, 0))

        do = (ts.update + 1) % max(a.every, 1) == 0 if a.every else jnp.asarray(False)
        return jax.lax.cond(do, analyse, skip, 0), do

    # ---- PBT and league -----------------------------------------------------------------
    def _exploit_explore(self, ts: TrainState, src: jax.Array, key: jax.Array) -> TrainState:
        """Bottom members copy parameters, optimiser state and hyperparameters of the top
        ones (bit-identical), then perturb the hyperparameters."""
        P = self.num_members
        lo, hi = self.cfg.train.pbt.perturb
        copied = src != jnp.arange(P)
        take = lambda x: x[src]
        params = jax.tree.map(take, ts.params)
        opt_state = jax.tree.map(take, ts.opt_state)
        h = jax.tree.map(take, ts.hyper)
        keys = jax.random.split(key, len(HYPER))
        factor = lambda k: jnp.where(copied, jnp.where(jax.random.bernoulli(k, 0.5, (P,)), hi, lo), 1.0)
        h = h.replace(
            learning_rate=h.learning_rate * factor(keys[0]),
            ent_coef=h.ent_coef * factor(keys[1]),
            clip_eps=jnp.clip(h.clip_eps * factor(keys[2]), 0.02, 0.5),
            gamma=jnp.clip(1.0 - (1.0 - h.gamma) * factor(keys[3]), 0.0, 0.999),
            gae_lambda=jnp.clip(1.0 - (1.0 - h.gae_lambda) * factor(keys[4]), 0.0, 0.999),
        )
        opt_state = jax.vmap(self._set_lr)(opt_state, h.learning_rate)
        pbt = ts.pbt.replace(
            fitness=ts.pbt.fitness[src],
            parent=jnp.where(copied, src, ts.pbt.parent),
            copied_at=jnp.where(copied, ts.update, ts.pbt.copied_at),
            generation=jnp.where(copied, ts.pbt.generation[src] + 1, ts.pbt.generation),
        )
        return ts.replace(params=params, opt_state=opt_state, hyper=h, pbt=pbt)

    def _refresh_league(self, ts: TrainState) -> TrainState:
        """Snapshot the fittest member into the oldest league slot (round robin)."""
        lg = ts.league
        slot = lg.refreshes % self.cfg.train.league.size
        best = jnp.argmax(ts.pbt.fitness).astype(jnp.int32)
        params = jax.tree.map(lambda l, p: l.at[slot].set(p[best]), lg.params, ts.params)
        lg = lg.replace(
            params=params,
            source=lg.source.at[slot].set(best),
            made_at=lg.made_at.at[slot].set(ts.update),
            refreshes=lg.refreshes + 1,
        )
        return ts.replace(league=lg)

    # ---- evaluation -------------------------------------------------------------------------
    def policy(self, ts: TrainState, greedy: bool = False):
        """The population as a ``(key, state) -> actions`` policy for :func:`selfplay.simulate.rollout`
        (members and league snapshots in their agent slots; ``greedy``: most likely actions)."""
        PL = self.num_players
        params_all = self._players_params(ts)

        def act(key, state):
            obs = self.env.observe(state)
            logits, _ = population_apply(self.net, params_all, to_members(obs, PL))
            if greedy:
                a = {k: jnp.argmax(v, -1).astype(jnp.int32) for k, v in logits.items()}
            else:
                a, _ = sample_actions(key, logits)
            return from_members(a)

        return act

    # ---- whole run -------------------------------------------------------------------------
    def _scan_updates(self, ts: TrainState, num_updates: int):
        return jax.lax.scan(lambda s, _: self._update(s), ts, None, length=num_updates)

    def run(self, ts: TrainState, num_updates: int):
        """``num_updates`` updates from ``ts`` in one jitted ``lax.scan`` (``ts`` is donated).
        Pure in ``ts``; :func:`make_train` gives the vmappable whole run."""
        return self._run(ts, num_updates)

    def train(self, key: jax.Array, num_updates: int | None = None):
        """``init(key)`` then ``num_updates`` (default ``train.updates``) updates; returns
        ``(final TrainState, metrics stacked over updates)``."""
        n = self.cfg.train.updates if num_updates is None else num_updates
        return self.run(self.init(key), n)


def make_train(cfg: RunConfig, num_updates: int | None = None):
    """A pure ``train(key) -> (final TrainState, metrics stacked over updates)``: init and
    ``num_updates`` (default ``train.updates``) updates in one traceable function, so
    ``jax.jit(jax.vmap(make_train(cfg)))(keys)`` trains one population per key at once
    (the keys seed parameters, hyperparameters and actions; the worlds follow
    ``train.seed``, so seeds are compared on the same worlds)."""
    trainer = Trainer(cfg)
    n = cfg.train.updates if num_updates is None else num_updates

    def train(key: jax.Array):
        return trainer._scan_updates(trainer.init_state(key), n)

    return train
