"""Population self-play: PPO with per-member RL variants, PBT and a league, all on the device.

:class:`Trainer` holds the compiled pieces of one configuration: ``init(key)`` builds the
whole training state and ``update(state)`` is ONE jitted function: a ``lax.scan`` rollout
of the economy, the reward components, GAE, PPO epochs vmapped over members, then PBT and
league bookkeeping. :func:`make_train` returns a pure ``train(key)`` (init and a scan of
updates), so seeds (or whole populations) vmap.

Players. ``P`` learning members and ``K`` frozen league snapshots share the ``N``
agents: agent ``i`` is played by player ``(i // C) % (P + K)``; players ``0..P-1`` are the
members. ``C`` (:attr:`Trainer.run`) is 1 under ``train.layout=mixed`` (every market
holds agents of every player) and ``B / train.village_players`` under ``villages`` (each
market of ``B`` agents holds a few players, each player a few markets). The agent axis
is regrouped per player by a reshape (:func:`to_members`), and the forward pass is
vmapped over stacked parameters, so no parameters are gathered per agent.

Rewards. Reward components are a registry (:mod:`selfplay.rewards`); member ``p`` is
trained on ``sum_c reward_weights[c][p] * component_c``. Hyperparameters are declared once
each (:mod:`selfplay.variants`) and live in ``TrainState.hyper`` by name.

Values. With ``train.value_norm`` the critic predicts returns normalised by a running
mean and standard deviation per member (:class:`ValueNorm`): GAE works in reward units,
the value loss (and its clip) in normalised units, so the critic can follow returns of
any scale.

Truncation. Episodes end for a whole world at ``economy.episode_length``; the next world
is drawn in the scan (a ``lax.cond``) and the value of the true final observation is
kept as the GAE bootstrap, so truncation is not mistaken for termination.

Randomness. One key tree (:func:`init_keys`, :func:`update_keys`), named streams derived
only by ``fold_in`` (:mod:`economy.streams`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from agents.networks import (
    ActorCritic, EntityActorCritic, EntityPolicy, FusedPolicy, act_parts, agent_players, from_members, init_population, joint_apply, population_apply,
    sample_actions, to_members,
)
from agents.scripted import scripted_actions
from analysis.niches import specialisation_index
from analysis.population import RolloutSummary, population_analysis
from economy import ConfigError, Economy, EconomyState
from economy.sharding import agent_mesh, state_sharding
from economy.streams import derive, episode_world, world_key
from selfplay import population as pop
from selfplay import rewards as rw
from selfplay import variants
from selfplay.config import RunConfig
from selfplay.population import LeagueState, PBTState
from selfplay.ppo import PPOSettings, gae, imitation_loss, ppo_loss, ppo_update

VALUE_STD_FLOOR = 1e-2  # smallest standard deviation used to normalise value targets


class ValueNorm(NamedTuple):
    """Running moments of each member's returns (float32 ``[P]``)."""

    mean: jax.Array
    var: jax.Array


@struct.dataclass
class TrainState:
    params: Any  # [P, ...]
    opt_state: Any  # [P, ...]
    hyper: dict  # {variant name: float32 [P]} (selfplay.variants)
    reward_weights: dict  # {reward component: float32 [P]} (selfplay.rewards)
    value_norm: ValueNorm
    pbt: PBTState
    league: LeagueState
    env_state: EconomyState
    obs: jax.Array  # float32 [N, obs_dim]
    key: jax.Array  # uint32 [2] raw data of the run key (checkpointable; per-update keys fold in the update)
    world_seed: jax.Array  # uint32 [] train.seed: the training worlds' seeds follow it (kept out of the compiled update)
    episode: jax.Array  # int32 [] worlds drawn so far
    update: jax.Array  # int32 [] updates done


class Transition(NamedTuple):
    obs: jax.Array  # [P, n, D]
    actions: dict  # [P, n, ...]
    log_prob: jax.Array  # [P, n]
    value: jax.Array  # [P, n] in reward units
    components: dict  # {agent-level component: [P, n]}
    units: jax.Array  # [P, n] int32 units of work
    niche: jax.Array  # [P, n] int32 the niche worked (the drawn one, or the one held by the curriculum or niche_tenure)
    decides: jax.Array  # [P, n] bool: the drawn niche counted (economy.niche_tenure: a renewal step)
    done: jax.Array  # [P, n] bool
    bootstrap: jax.Array  # [P, n] in reward units


def init_keys(root: jax.Array) -> dict[str, jax.Array]:
    """The named streams of a run's root key ``jax.random.key(train.seed)`` (or the key
    given to :meth:`Trainer.init`): learners' parameters, their hyperparameters, their
    reward weights, and the run key every update derives its streams from."""
    learners = derive(root, "learners")
    return {
        "params": derive(learners, "params"),
        "variants": derive(learners, "variants"),
        "reward_weights": derive(learners, "reward_weights"),
        "run": derive(root, "run"),
    }


def update_keys(run: jax.Array, update: jax.Array | int) -> dict[str, jax.Array]:
    """The streams of update ``update`` (0-based): ``rollout`` (then per step ``t``:
    :func:`step_keys`), ``ppo`` (then per member ``p``: ``derive(ppo, p)``, which
    ``ppo_update`` splits over epochs), ``pbt`` (then per variant name) and ``analysis``."""
    base = derive(run, update)
    return {name: derive(base, name) for name in ("rollout", "ppo", "pbt", "analysis")}


def step_keys(rollout: jax.Array, t: jax.Array | int) -> tuple[jax.Array, jax.Array]:
    """``(act, env)`` keys of rollout step ``t``."""
    step = derive(rollout, t)
    return derive(step, "act"), derive(step, "env")


def nonfinite_members(params) -> jax.Array:
    """bool ``[P]``: members with any non-finite entry in any leaf of their stacked parameters."""
    return ~jax.vmap(lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)])))(params)


def mesh_size(cfg: RunConfig, device_count: int | None = None) -> int:
    """Devices of the agent axis: ``mesh.agents``, or (``auto``) the most devices of all
    processes that divide ``economy.num_markets``. Raises :class:`ConfigError` naming the key
    when the config asks for more devices than there are."""
    n = jax.device_count() if device_count is None else device_count
    m = cfg.economy.num_markets
    if cfg.mesh.agents == "auto":
        return max(d for d in range(1, min(n, m) + 1) if m % d == 0)
    if cfg.mesh.agents > n:
        raise ConfigError(f"mesh.agents={cfg.mesh.agents}: only {n} devices are available")
    return cfg.mesh.agents


class Trainer:
    """Compiled pieces of one self-play configuration (see module docstring)."""

    def __init__(self, cfg: RunConfig, env: Economy | None = None):
        self.cfg = cfg
        t = cfg.train
        from analysis.catalogue import economy_for

        self.env = economy_for(cfg.economy) if env is None else env
        self.num_members = t.members
        self.num_players = t.players
        # Names, fixed for this trainer: every declared variant and registered component
        # (the config fills defaults for those it does not name).
        self.variant_names = tuple(t.variants.ranges)
        self.components = tuple(c for c in rw.component_names() if c in t.variants.rewards)
        missing = [c for c in t.variants.rewards if c not in rw.REWARD_COMPONENTS]
        if missing:
            raise ConfigError(f"train.variants.rewards: components {missing} are not registered in this process")
        # The heads the learners draw (train.orders): all of the economy's, or under "scripted"
        # the niche alone (the scripted rule completes the orders, :meth:`complete`).
        self.policy_spec = self.env.action_spec if t.orders == "policy" else tuple(
            h for h in self.env.action_spec if h.name == "niche")
        # train.network.kind: the MLP (acting and the loss through its fused output layer), or
        # the entity network of padded economies (economy.catalogues: its logits and their
        # masks; acting by sample_actions, the loss by autodiff of the logits)
        self.entity = t.network.kind == "entity"
        if self.entity:
            self.net = EntityActorCritic(self.policy_spec, goods=self.env.num_goods, niches=self.env.num_niches,
                                         values=cfg.economy.observe_values, hidden=t.network.width,
                                         activation=t.network.activation)
        else:
            self.net = ActorCritic(self.policy_spec, hidden=tuple(t.network.hidden), activation=t.network.activation)
        # The PPO loss's view of the network (train.loss_path): the fused output layer
        # (agents.networks.policy_terms: natively on a one-device mesh where the kernels run,
        # its XLA twin on several devices) or autodiff of the logits; the loss itself is
        # selfplay.ppo's either way.
        self.mesh = agent_mesh(jax.devices()[: mesh_size(cfg)])
        if self.mesh.size > 1 and getattr(self.env, "native", False):
            self.env.mesh = self.mesh  # the native market kernel then runs on each device's own markets
        if self.entity:  # fused: EntityPolicy (its order heads through policy_terms); traced: autodiff
            self.loss_net = self.net.apply if t.loss_path == "traced" else EntityPolicy(
                self.net, native=None if self.mesh.size == 1 else False)
        else:
            self.loss_net = joint_apply(self.net) if t.loss_path == "traced" else FusedPolicy(
                self.net, native=None if self.mesh.size == 1 else False)
        self.tx = optax.chain(
            optax.clip_by_global_norm(t.max_grad_norm),
            optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, eps=1e-5),
        )
        self._check_optimizer_variants()
        # The static layout (train.layout): agent i is played by player (i // C) % players and
        # trades in market i // (N / M). ``player_of`` int64 [N]; ``presence`` float32 [P, M],
        # the share of each member's agents in each market (rows sum to 1).
        n, m = cfg.economy.num_agents, cfg.economy.num_markets
        self.run_length = t.run_length(n // m)
        self.player_of = agent_players(n, self.num_players, self.run_length)
        self.presence = pop.layout_presence(self.player_of, m, self.num_members)
        # Devices: agents (and markets) split by whole markets over the mesh, everything else
        # replicated; the update keeps that layout (so it never gathers the agent state).
        self.state_sharding = self._state_sharding(jax.eval_shape(self.init_state, jax.random.key(0)))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.update = jax.jit(
            self._update, in_shardings=(self.state_sharding,), out_shardings=(self.state_sharding, replicated),
            donate_argnums=0,
        )
        self._run = jax.jit(self._scan_updates, static_argnums=1, donate_argnums=0)
        self._init = jax.jit(
            lambda key_data, seed: self.init_state(jax.random.wrap_key_data(key_data), seed),
            in_shardings=(replicated, replicated), out_shardings=self.state_sharding,
        )

    def _check_optimizer_variants(self) -> None:
        known = jax.eval_shape(self.tx.init, {"w": jnp.zeros((1,))})[1].hyperparams
        for name in variants.names("optimizer"):
            if name in self.variant_names and name not in known:
                raise ConfigError(
                    f"train.variants.{name}: declared with target 'optimizer' but the optimiser has no injected "
                    f"hyperparameter {name!r} (it has {sorted(known)})"
                )

    # ---- state ------------------------------------------------------------------------
    def world_key(self, episode: jax.Array, seed: jax.Array | int | None = None) -> jax.Array:
        """Training worlds only: world :func:`economy.streams.episode_world` of ``seed`` and
        ``episode`` below ``eval_seed_start``, in the world namespace
        (:func:`economy.streams.world_key`); ``seed``: ``train.seed`` (``TrainState.world_seed``
        inside the update, so one compiled update serves every seed)."""
        seed = self.cfg.train.seed if seed is None else seed
        return world_key(episode_world(seed, episode, self.cfg.economy.world.eval_seed_start))

    def _set_opt_hyper(self, opt_state, hyper: dict):
        """``opt_state`` (of all members) with the optimiser-target variants of ``hyper``."""
        names = [n for n in variants.names("optimizer") if n in hyper]
        clip_state, adam_state = opt_state
        hp = dict(adam_state.hyperparams, **{n: hyper[n] for n in names})
        return (clip_state, adam_state._replace(hyperparams=hp))

    def init(self, key: jax.Array) -> TrainState:
        """The whole training state from one key; every leaf is a distinct buffer (so an
        update may donate it)."""
        return self._init(np.asarray(jax.random.key_data(key)), np.uint32(self.cfg.train.seed))

    # ---- several seeds as one program (agora study --vmap-seeds) ---------------------------
    def _check_one_device(self, what: str) -> None:
        if self.mesh.size != 1:
            raise ConfigError(f"{what}: seeds are vmapped on one device; mesh.agents={self.mesh.size} splits the agents "
                              "over several (use mesh.agents=1, or train the seeds one after another)")

    def _seed_axes(self, ts: TrainState):
        """The seed axis of each leaf of a stacked state: 0, except the update counter and the
        economy's step, which every seed shares (the seeds advance together). Kept unbatched,
        they keep the update's ``lax.cond``s (episode reset, PBT, league, analysis, imitation)
        single-branch under ``vmap``; batched, both branches would run every time."""
        axes = jax.tree.map(lambda _: 0, ts)
        return axes.replace(update=None, env_state=axes.env_state.replace(step=None))

    def seed_state(self, ts: TrainState, i: int) -> TrainState:
        """Seed ``i``'s state of a stacked state (what its own run checkpoints)."""
        return jax.tree.map(lambda ax, x: x if ax is None else x[i], self._seed_axes(ts), ts,
                            is_leaf=lambda v: v is None)

    def stack_seeds(self, states: list[TrainState]) -> TrainState:
        """The stacked state of per-seed states at one update (the inverse of :meth:`seed_state`)."""
        if len({int(s.update) for s in states}) != 1 or len({int(s.env_state.step) for s in states}) != 1:
            raise ValueError("stack_seeds: the seeds' states must be at the same update and step")
        return jax.tree.map(lambda ax, *xs: xs[0] if ax is None else jnp.stack(xs), self._seed_axes(states[0]),
                            *states, is_leaf=lambda v: v is None)

    def init_seeds(self, seeds) -> TrainState:
        """The states of ``seeds`` stacked on a leading axis (the shared counters unstacked,
        :meth:`_seed_axes`): seed ``s``'s is the state a trainer of this config with
        ``train.seed = s`` starts from (``init(key(s))``), so :meth:`update_seeds` trains
        them as one program. One device only."""
        self._check_one_device("init_seeds")
        if not hasattr(self, "_init_seeds"):
            axes = self._seed_axes(jax.eval_shape(self.init_state, jax.random.key(0)))
            self._init_seeds = jax.jit(jax.vmap(lambda kd, s: self.init_state(jax.random.wrap_key_data(kd), s),
                                                out_axes=axes))
        keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(int(s)))) for s in seeds])
        return self._init_seeds(keys, np.asarray(seeds, np.uint32))

    def update_seeds(self, ts: TrainState):
        """:meth:`update` of every seed of a stacked state (:meth:`init_seeds`) in one
        vmapped program: ``(states, metrics)``, the metrics with the seeds on the leading
        axis. The state is donated."""
        self._check_one_device("update_seeds")
        if not hasattr(self, "_update_seeds"):
            axes = self._seed_axes(ts)
            self._update_seeds = jax.jit(jax.vmap(self._update, in_axes=(axes,), out_axes=(axes, 0)),
                                         donate_argnums=0)
        return self._update_seeds(ts)

    def init_state(self, key: jax.Array, world_seed: jax.Array | int | None = None) -> TrainState:
        """:meth:`init` as a pure, traceable function (for ``jit``/``vmap`` over keys);
        ``world_seed``: ``train.seed`` unless given (traced, so one compiled init serves
        every seed)."""
        seed = jnp.asarray(self.cfg.train.seed if world_seed is None else world_seed, jnp.uint32)
        return self._assemble(key, self._init_learners(key), *self._init_world(seed), seed)

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

    def _init_world(self, seed: jax.Array):
        return self.env.reset(self.world_key(jnp.zeros((), jnp.int32), seed))

    def _init_learners(self, key: jax.Array):
        t = self.cfg.train
        keys = init_keys(key)
        params = init_population(self.net, keys["params"], self.env.obs_dim, t.members)
        hyper = variants.sample(keys["variants"], t.variants.ranges, t.members)
        weights = {
            c: jax.random.uniform(derive(keys["reward_weights"], c), (t.members,), minval=lo, maxval=hi)
            for c, (lo, hi) in t.variants.rewards.items()
        }
        opt_state = jax.vmap(self.tx.init)(params)
        opt_state = self._set_opt_hyper(opt_state, hyper)
        return params, opt_state, hyper, weights

    def _assemble(self, key, learners, obs, env_state, world_seed) -> TrainState:
        t = self.cfg.train
        params, opt_state, hyper, weights = learners
        return TrainState(
            params=params,
            opt_state=opt_state,
            hyper=hyper,
            reward_weights=weights,
            value_norm=ValueNorm(jnp.zeros((t.members,), jnp.float32), jnp.ones((t.members,), jnp.float32)),
            pbt=pop.init_pbt(t.members),
            league=pop.init_league(params, t.league.size, t.members),
            env_state=env_state,
            obs=obs,
            key=jax.random.key_data(init_keys(key)["run"]),
            world_seed=world_seed,
            episode=jnp.ones((), jnp.int32),
            update=jnp.zeros((), jnp.int32),
        )

    # ---- one update -------------------------------------------------------------------
    def players_params(self, ts: TrainState):
        """The parameters of every player, ``[P + K, ...]``: the members, then the league's snapshots."""
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b], 0), ts.params, ts.league.params)

    def _value_scale(self, ts: TrainState):
        """``(mean, std)`` ``[P, 1]`` turning the critic's output into reward units."""
        if not self.cfg.train.value_norm:
            return jnp.zeros((self.num_members, 1), jnp.float32), jnp.ones((self.num_members, 1), jnp.float32)
        vn = ts.value_norm
        return vn.mean[:, None], jnp.sqrt(jnp.maximum(vn.var, VALUE_STD_FLOOR**2))[:, None]

    def _member_value(self, ts: TrainState, obs: jax.Array) -> jax.Array:
        """Members' values ``[P, n]`` (reward units) of agent-major observations ``[N, D]``."""
        mu, sd = self._value_scale(ts)
        _, v = population_apply(self.net, ts.params, to_members(obs, self.num_players, self.run_length)[: self.num_members])
        return v * sd + mu

    def _rollout(self, ts: TrainState, key: jax.Array, imitate: bool = False):
        env, P, PL, C = self.env, self.num_members, self.num_players, self.run_length
        J, M = env.num_niches, env.cfg.num_markets
        params_all = self.players_params(ts)
        mu, sd = self._value_scale(ts)

        held, roles = self._curriculum(ts)

        def body(carry, t):
            env_state, obs, episode, _ = carry
            k_act, k_env = step_keys(key, t)
            obs_m = to_members(obs, PL, C)  # [PL, n, D]
            # The torso by XLA; the output layer and the draws in one native pass where it runs.
            if imitate:  # the scripted teacher plays every agent; the critic still values it
                actions = scripted_actions(env, k_act, env_state, self.cfg.train.imitation.scripted)
                act_m = to_members({h.name: actions[h.name] for h in self.policy_spec}, PL, C)
                _, value = population_apply(self.net, params_all, obs_m)
                log_prob = jnp.zeros_like(value)  # no behaviour ratio in the imitation loss
            else:
                if isinstance(self.loss_net, EntityPolicy):
                    act_m, log_prob, value = self.loss_net.act(k_act, params_all, obs_m)
                elif self.entity:
                    logits, value = population_apply(self.net, params_all, obs_m)
                    act_m, log_prob = sample_actions(k_act, logits, batch_ndim=2)
                else:
                    parts = population_apply(self.net, params_all, obs_m, parts=True)
                    act_m, log_prob, value = act_parts(k_act, *parts, self.policy_spec, mesh=self.mesh)
                actions = from_members(act_m, C)
            if held is not None:  # the niche curriculum: held slots work their role
                actions = dict(actions, niche=jnp.where(held, roles, actions["niche"]))
            if not imitate:
                actions = self.complete(derive(key, t, "orders"), env_state, actions)
            next_obs, next_state, _, term, trunc, info = env.step(k_env, env_state, actions)
            comps = rw.agent_components(self.components, rw.StepData(info, next_state, env_state, actions))
            comps_m = {c: to_members(x, PL, C)[:P] for c, x in comps.items()}  # [P, n] each
            terminated = jnp.any(term)
            done = terminated | jnp.any(trunc)

            def new_world():
                v_next = self._member_value(ts, next_obs)
                o, s = env.reset(self.world_key(episode, ts.world_seed))
                return jnp.where(terminated, 0.0, v_next), o, s, episode + 1

            def same_world():
                return jnp.zeros((P, obs_m.shape[1]), jnp.float32), next_obs, next_state, episode

            bootstrap, obs2, env_state2, episode = jax.lax.cond(done, new_world, same_world)
            tr = Transition(
                obs=obs_m[:P],
                actions=jax.tree.map(lambda a: a[:P], act_m),
                log_prob=log_prob[:P],
                value=value[:P] * sd + mu,
                components=comps_m,
                units=to_members(info["units"], PL, C)[:P],
                niche=to_members(info["niche"], PL, C)[:P],
                decides=to_members(env.renewing(env_state), PL, C)[:P],
                done=jnp.broadcast_to(done, (P, obs_m.shape[1])),
                bootstrap=bootstrap,
            )
            worked = tr.niche  # the niche each agent worked (held or drawn)
            chose = jax.nn.one_hot(worked, J + 1, dtype=jnp.int32)  # [P, n, J+1]
            stats = {
                "niche_counts": jnp.sum(chose, 1),  # [P, J+1]
                "niche_output": jnp.sum(chose * tr.units[..., None], 1),  # [P, J+1] units of work by chosen niche
                "market_price": jnp.mean(info["market_price"].astype(jnp.float32), 0),  # [G]
                "market_volume": jnp.sum(info["market_volume"], 0),  # [G]
                "market_occupancy": info["niche_occupancy"],  # [M, J+1] all players
                "market_utility": jnp.mean(info["utility"].reshape(M, -1), -1),  # [M] all players
                "project": jnp.mean(info["project"].astype(jnp.float32)),
            }
            # What the last step left, before any reset: the world the update's analysis reads.
            seen = (next_state.goods, next_state.money, next_state.price)
            return (env_state2, obs2, episode, seen), (tr, stats)

        steps = jnp.arange(self.cfg.train.rollout_steps, dtype=jnp.uint32)
        s0 = ts.env_state
        (env_state, obs, episode, seen), (traj, stats) = jax.lax.scan(
            body, (s0, ts.obs, ts.episode, (s0.goods, s0.money, s0.price)), steps)
        last_value = self._member_value(ts, obs)
        # The analysis reads the world as the rollout's last step left it, also when that step
        # ended an episode and the rollout's final state is already the next world.
        last_seen = env_state.replace(goods=seen[0], money=seen[1], price=seen[2])
        return env_state, obs, episode, traj, stats, last_value, last_seen

    def _curriculum(self, ts: TrainState):
        """``(held bool [N], roles int32 [N])`` of the niche curriculum at this update, or
        ``(None, None)`` when it is off (``train.curriculum``)."""
        c = self.cfg.train.curriculum
        if not c.updates or c.fraction <= 0:
            return None, None
        from analysis.frontier import assign_niches

        cfg = self.env.cfg
        n, m = cfg.num_agents, cfg.num_markets
        roles = jnp.tile(assign_niches(jnp.asarray(c.shares, jnp.float32), n // m), m)
        # a fixed pseudo-random rank per slot (Knuth's multiplicative hash): the held set only shrinks
        rank = ((np.arange(n, dtype=np.uint64) * 2654435761) % 2**32).astype(np.float64) / 2**32
        share = c.fraction * jnp.maximum(0.0, 1.0 - ts.update.astype(jnp.float32) / c.updates)
        return jnp.asarray(rank, jnp.float32) < share, roles

    def rewards(self, ts: TrainState, traj: Transition) -> tuple[jax.Array, dict]:
        """``(reward [T, P, n], components {name: [T, P, n]})`` of a rollout: agent-level
        components as recorded, member-level ones computed now, weighted per member."""
        data = rw.RolloutData(
            niche=traj.niche, units=traj.units, agent=traj.components, num_niches=self.env.num_niches
        )
        comps = {**traj.components, **rw.member_components(self.components, data)}
        comps = {c: comps[c] for c in self.components}
        return rw.weighted_reward(comps, ts.reward_weights), comps

    def advantages(self, ts: TrainState, reward: jax.Array, traj: Transition, last_value: jax.Array):
        """GAE per member in reward units, member-major: ``(advantages, returns)`` ``[P, T, n]``
        from ``reward [T, P, n]``, the rollout's values, dones and bootstraps, and
        ``last_value [P, n]``, with each member's ``gamma`` and ``gae_lambda``."""
        tm = lambda x: jnp.swapaxes(x, 0, 1)
        return jax.vmap(gae)(
            tm(reward), tm(traj.value), tm(traj.done), tm(traj.bootstrap), last_value,
            ts.hyper["gamma"], ts.hyper["gae_lambda"],
        )

    def _normalise_values(self, ts: TrainState, ret: jax.Array):
        """Updated :class:`ValueNorm` from returns ``[P, ...]`` and the ``(mean, std)``
        ``[P]`` to normalise value targets with."""
        t = self.cfg.train
        if not t.value_norm:
            return ts.value_norm, jnp.zeros((self.num_members,)), jnp.ones((self.num_members,))
        axes = tuple(range(1, ret.ndim))
        m, v = jnp.mean(ret, axes), jnp.var(ret, axes)
        a = t.value_norm_rate
        first = ts.update == 0
        old = ts.value_norm
        mean = jnp.where(first, m, (1 - a) * old.mean + a * m)
        second = jnp.where(first, v + m**2, (1 - a) * (old.var + old.mean**2) + a * (v + m**2))
        var = jnp.maximum(second - mean**2, 0.0)
        return ValueNorm(mean, var), mean, jnp.sqrt(jnp.maximum(var, VALUE_STD_FLOOR**2))

    def _update(self, ts: TrainState):
        """One update: PPO, or (the first ``train.imitation.updates``) imitation of the
        scripted baseline; both branches of one ``lax.cond`` when imitation is on."""
        k = self.cfg.train.imitation.updates
        if not k:
            return self._update_phase(ts, False)
        return jax.lax.cond(
            ts.update < k, lambda s: self._update_phase(s, True), lambda s: self._update_phase(s, False), ts
        )

    def _update_phase(self, ts: TrainState, imitate: bool):
        """One update as a few named pure steps: roll out, reward, learn (PPO or imitation),
        summarise and analyse the rollout, update fitness, then PBT and the league."""
        keys = update_keys(jax.random.wrap_key_data(ts.key), ts.update)
        env_state, obs, episode, traj, stats, last_value, last_seen = self._rollout(ts, keys["rollout"], imitate)
        reward, comps = self.rewards(ts, traj)  # [T, P, n]
        params, opt_state, value_norm, losses = self._learn(ts, traj, reward, last_value, keys["ppo"], imitate)
        summary = self._summarise(traj, stats, comps)
        analysis, do_analysis = self._analysis(
            ts, params, traj.obs, summary["niche_counts"], jnp.sum(stats["niche_output"], 0), summary["occupancy"],
            summary["agent_spec"], last_seen, summary["market_volume"], keys["analysis"],
        )
        fit_now, fitness = self._fitness(ts, summary)
        u = ts.update + 1
        ts = ts.replace(
            params=params, opt_state=opt_state, value_norm=value_norm, env_state=env_state, obs=obs, episode=episode,
            pbt=ts.pbt._replace(fitness=fitness), update=u,
        )
        ts, src, do_pbt = self._population_step(ts, keys["pbt"], imitate)
        metrics = {
            **self._update_metrics(ts, reward, summary, stats, (fit_now, fitness), src, do_pbt, imitate, value_norm,
                                   losses, params),
            "analysis": analysis,  # see analysis.population_analysis; zeros unless analysis_done
            "analysis_done": do_analysis,
        }
        return ts, metrics

    def _learn(self, ts: TrainState, traj, reward, last_value, key, imitate: bool):
        """PPO (or, while ``imitate``, imitation) on the rollout, every member at once:
        ``(params, opt_state, value_norm, losses)``."""
        t = self.cfg.train
        P = self.num_members
        adv, ret = self.advantages(ts, reward, traj, last_value)
        tm = lambda x: jnp.swapaxes(x, 0, 1)
        value_norm, v_mean, v_std = self._normalise_values(ts, ret)
        norm = lambda x: (x - v_mean[:, None, None]) / v_std[:, None, None]
        # PPO batch: each agent a stream of T samples, [T, P, n, ...] -> [P, n, T, ...]; the
        # minibatches split every agent's steps (see ppo_update), so the agent axis stays
        # where the rollout left it (sharded by markets) and nothing moves between devices.
        streams = lambda x: jnp.moveaxis(x, 0, 2)
        batch = {
            "obs": streams(traj.obs),
            "actions": jax.tree.map(streams, traj.actions),
            "log_prob": streams(traj.log_prob),
            "values": jnp.swapaxes(norm(tm(traj.value)), 1, 2),
            "advantages": jnp.swapaxes(adv, 1, 2),
            "returns": jnp.swapaxes(norm(ret), 1, 2),
        }
        if self.env.cfg.niche_tenure > 1 and t.orders == "scripted" and t.tenure_weights:
            # the niche is the only head: a draw the tenure overrode taught nothing, so the
            # policy terms count only the renewal steps' draws (ppo_loss's ``weights``)
            batch["weights"] = streams(traj.decides.astype(jnp.float32))
        loss_hyper = {n: ts.hyper[n] for n in variants.names("loss") if n in ts.hyper}
        if t.niche_ent_coef > 0:
            loss_hyper["ent_coef_niche"] = jnp.full((P,), t.niche_ent_coef, jnp.float32)
        if t.niche_mix_coef > 0:
            loss_hyper["mix_coef_niche"] = jnp.full((P,), t.niche_mix_coef, jnp.float32)
        ppo_keys = jax.vmap(lambda p: derive(key, p))(jnp.arange(P, dtype=jnp.uint32))
        settings = PPOSettings(self.tx, self.loss_net, t.epochs, t.minibatches, imitation_loss if imitate else ppo_loss)
        params, opt_state, losses = jax.vmap(lambda p, o, b, k, h: ppo_update(p, o, b, k, h, settings))(
            ts.params, ts.opt_state, batch, ppo_keys, loss_hyper)
        return params, opt_state, value_norm, losses

    def _summarise(self, traj, stats, comps) -> dict:
        """The rollout's summaries that fitness, the analysis and the metrics read."""
        J = self.env.num_niches
        niche = jnp.swapaxes(traj.niche, 0, 1)  # [P, T, n] worked
        return {
            "comp_means": {c: jnp.mean(x, (0, 2)) for c, x in comps.items()},  # [P] per agent-step
            "niche_counts": jnp.sum(stats["niche_counts"], 0),  # [P, J+1]
            "occupancy": jnp.sum(stats["market_occupancy"], 0),  # [M, J+1]
            "market_utility": jnp.mean(stats["market_utility"], 0),  # [M]
            "agent_spec": jax.vmap(lambda x: specialisation_index(x, J + 1))(niche),  # [P, n]
            "market_volume": jnp.mean(stats["market_volume"].astype(jnp.float32), 0),  # [G]
        }

    def _fitness(self, ts: TrainState, summary: dict):
        """This update's fitness (selfplay.population.FITNESS) and its running average."""
        t = self.cfg.train
        fit_now = pop.FITNESS[t.pbt.fitness](
            pop.FitnessInputs(summary["comp_means"], summary["niche_counts"], summary["market_utility"],
                              jnp.asarray(self.presence))
        ).astype(jnp.float32)
        # The running fitness starts afresh with the first PPO update (imitation's is the teacher's).
        fitness = pop.update_fitness(ts.pbt.fitness, fit_now, ts.update <= t.imitation.updates, t.pbt.fitness_ema)
        return fit_now, fitness

    def _population_step(self, ts: TrainState, key, imitate: bool):
        """PBT every ``train.pbt.interval`` updates (not while imitating) and the league's
        snapshots: ``(ts, src, do_pbt)``."""
        t = self.cfg.train
        P = self.num_members
        u = ts.update
        do_pbt = jnp.asarray(t.pbt.enabled and P > 1 and not imitate) & (u % t.pbt.interval == 0)
        src = jnp.where(
            do_pbt, pop.pbt_sources(ts.pbt.fitness, t.pbt.fraction, ts.pbt.founder, t.pbt.max_lineage_share),
            jnp.arange(P, dtype=jnp.int32),
        )
        ts = jax.lax.cond(do_pbt, lambda s: self._exploit_explore(s, src, key), lambda s: s, ts)
        if t.league.size and imitate:  # the snapshots follow the imitators, so PPO starts against them
            league = pop.init_league(ts.params, t.league.size, P)
            ts = ts.replace(league=league._replace(made_at=jnp.full_like(league.made_at, u)))
        elif t.league.size:
            do_league = u % t.league.refresh_every == 0
            ts = jax.lax.cond(do_league, self._refresh_league, lambda s: s, ts)
        return ts, src, do_pbt

    def _update_metrics(self, ts, reward, summary, stats, fitnesses, src, do_pbt, imitate, value_norm, losses, params):
        """The update's line of ``metrics.jsonl`` (names as :mod:`analysis.metrics` declares):
        ``ts`` after PBT; ``fitnesses``, ``value_norm``, ``losses`` and ``params`` from before
        it (the guards must see a non-finite value before a copy overwrites it)."""
        fit_now, fitness = fitnesses
        niche_counts, occupancy = summary["niche_counts"], summary["occupancy"]
        return {
            "update": ts.update,
            "reward": jnp.mean(reward, (0, 2)),  # [P] per agent-step
            **summary["comp_means"],  # [P] each reward component, per agent-step
            "reward_weights": ts.reward_weights,  # {component: [P]}, after PBT
            "specialisation_index": jnp.mean(summary["agent_spec"], -1),  # [P]
            "member_niche_shares": niche_counts / jnp.sum(niche_counts, -1, keepdims=True),  # [P, J+1]
            "occupancy": jnp.sum(occupancy, 0) / jnp.sum(occupancy),  # [J+1] all players
            "market_price": jnp.mean(stats["market_price"], 0),  # [G]
            "market_volume": summary["market_volume"],  # [G]
            "market_utility": summary["market_utility"],  # [M] all players
            "project": jnp.mean(stats["project"]),
            "fitness_now": fit_now,  # [P] this update's fitness (before the running average)
            "fitness": ts.pbt.fitness,  # [P] running fitness, after PBT
            "pbt_source": src,  # [P]
            "pbt_event": do_pbt,
            "imitation": jnp.asarray(imitate),  # this update imitated the scripted baseline
            "founder": ts.pbt.founder,  # [P] founding member each slot descends from
            "value_mean": value_norm.mean,  # [P] running mean of returns (before PBT)
            "value_std": jnp.sqrt(value_norm.var),  # [P]
            **{k: v for k, v in losses.items()},  # [P] each
            **{h: ts.hyper[h] for h in self.variant_names},  # [P] each, after PBT
            # Guards (the host loop stops the run on any): non-finite per member [P] bool.
            "nonfinite": {
                "loss": ~jnp.isfinite(losses["loss"]),
                "grad_norm": ~jnp.isfinite(losses["grad_norm"]),
                "parameters": nonfinite_members(params),
                "fitness": ~jnp.isfinite(fit_now) | ~jnp.isfinite(fitness),
            },
        }

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
            rollout = RolloutSummary(probe, niche_counts, niche_output, occupancy, agent_spec, env_state.goods,
                                     env_state.money, env_state.price, volume)
            return population_analysis(lambda p, o: population_apply(self.net, p, o), params, rollout, a.histogram_bins)

        def skip(_):
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(analyse, 0))

        do = (ts.update + 1) % max(a.every, 1) == 0 if a.every else jnp.asarray(False)
        return jax.lax.cond(do, analyse, skip, 0), do

    # ---- PBT and league -----------------------------------------------------------------
    def _exploit_explore(self, ts: TrainState, src: jax.Array, key: jax.Array) -> TrainState:
        """Slots with ``src != own`` copy their source (:func:`selfplay.population.exploit_explore`):
        parameters, optimiser state and the critic's value normalisation always,
        hyperparameters and reward weights as ``train.pbt.inherit`` says; then the copies'
        hyperparameters are perturbed and the optimiser takes its new ones."""
        pbt_cfg = self.cfg.train.pbt
        ((params, value_norm), opt_state, hyper, weights), pbt = pop.exploit_explore(
            pop.Slots((ts.params, ts.value_norm), ts.opt_state, ts.hyper, ts.reward_weights), ts.pbt, src, key,
            ts.update, pop.CopyRule(pbt_cfg.inherit, pbt_cfg.perturb),
        )
        opt_state = self._set_opt_hyper(opt_state, hyper)
        return ts.replace(params=params, value_norm=value_norm, opt_state=opt_state, hyper=hyper,
                          reward_weights=weights, pbt=pbt)

    def _refresh_league(self, ts: TrainState) -> TrainState:
        """Snapshot the fittest member into the oldest league slot (round robin)."""
        return ts.replace(league=pop.refresh_league(ts.league, ts.params, ts.pbt.fitness, ts.update))

    # ---- evaluation -------------------------------------------------------------------------
    def complete(self, key: jax.Array, state: EconomyState, actions: dict) -> dict:
        """The economy's actions from the learners' heads: unchanged under ``train.orders=policy``;
        under ``scripted`` the scripted rule's orders for the niche each agent drew
        (:func:`agents.scripted.scripted_actions` with ``niche=``; ``key`` drives its price ticks)."""
        if self.cfg.train.orders == "policy":
            return actions
        # scripted_actions binds the niche by economy.niche_tenure itself
        return scripted_actions(self.env, key, state, self.cfg.train.scripted_orders, niche=actions["niche"])

    def policy(self, ts: TrainState, greedy: bool = False):
        """The population as a ``(key, state) -> actions`` policy for :func:`selfplay.simulate.rollout`
        (members and league snapshots in their agent slots; ``greedy``: most likely actions)."""
        return self.policy_with(self.players_params(ts), greedy)

    def policy_with(self, params_all, greedy: bool = False):
        """:meth:`policy` with the players' parameters (``[P + K, ...]``) as an argument."""
        if self.cfg.train.orders == "policy":
            return lambda key, state: self.act_with(params_all, key, self.env.observe(state), greedy)

        def policy(key, state):
            a = self.act_with(params_all, derive(key, "act"), self.env.observe(state), greedy)
            return self.complete(derive(key, "orders"), state, a)

        return policy

    def act_on(self, ts: TrainState, greedy: bool = False, run: int | None = None):
        """``(key, obs [n, D]) -> actions [n, ...]``: row ``i`` played by player
        ``(i // run) % (P + K)``; ``run`` defaults to the training layout's :attr:`run`
        (``n`` a multiple of the players times ``run``; cross-play gives each population its
        own rows and its own run, see :func:`selfplay.evaluate.crossplay`)."""
        params_all = self.players_params(ts)
        return lambda key, obs: self.act_with(params_all, key, obs, greedy, run)

    def act_with(self, params_all, key: jax.Array, obs: jax.Array, greedy: bool = False, run: int | None = None):
        """:meth:`act_on` with the players' parameters (``[P + K, ...]``) as an argument."""
        run = self.run_length if run is None else run
        logits, _ = population_apply(self.net, params_all, to_members(obs, self.num_players, run))
        if greedy:
            a = {k: jnp.argmax(v, -1).astype(jnp.int32) for k, v in logits.items()}
        else:
            a, _ = sample_actions(key, logits)
        return from_members(a, run)

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
    (the keys seed parameters, hyperparameters, reward weights and actions; the worlds
    follow ``train.seed``, so seeds are compared on the same worlds)."""
    trainer = Trainer(cfg)
    n = cfg.train.updates if num_updates is None else num_updates

    def train(key: jax.Array):
        return trainer._scan_updates(trainer.init_state(key), n)

    return train


# Re-exported for callers of the pure PBT helpers through the trainer module.
pbt_sources = pop.pbt_sources

__all__ = [
    "TrainState", "Trainer", "Transition", "ValueNorm", "init_keys", "make_train", "mesh_size", "pbt_sources",
    "specialisation_index", "step_keys", "update_keys",
]
