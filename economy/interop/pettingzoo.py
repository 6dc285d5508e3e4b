"""The economy as a PettingZoo ``ParallelEnv`` with Gymnasium spaces (optional extra:
``pip install -e ".[pettingzoo]"``).

One world of the economy; every agent lives the whole episode, and the whole world ends
together by truncation at ``episode_length``. Underneath, one jitted ``Economy.step`` moves
all agents at once: the per-agent dicts are built on the host from its arrays (the
agent's observation is a row of one NumPy array), so nothing JAX leaks out.

    from economy.interop.pettingzoo import parallel_env

    env = parallel_env("configs/economy/default.yaml", num_agents=1024, num_markets=4, seed=0)
    obs, infos = env.reset(seed=0)
    while env.agents:
        actions = {a: env.action_space(a).sample() for a in env.agents}
        obs, rewards, terminations, truncations, infos = env.step(actions)

Spaces (built from ``Economy.action_spec``, so a new niche or good changes them with no
code change; one object for every agent and every call):

* ``observation_space(agent)``: ``Box(-inf, inf, (obs_dim,), float32)``;
* ``action_space(agent)``: ``Dict`` of the action heads: ``niche`` ``Discrete(J + 1)``
  (``J``: rest), ``side``/``quantity``/``price`` ``MultiDiscrete`` over the goods.

Randomness. ``seed`` (at construction or ``reset(seed=...)``) fixes the worlds and the
economy's own randomness: world ``w`` of a seeded sequence is world
:func:`economy.streams.episode_world` ``(seed, w)`` of the economy's training range, the
worlds the trainer's run of that seed plays (``held_out=True``: of its held-out evaluation
range), and the key of step ``t`` is ``derive(key(seed), "pettingzoo",
episode, t)``; the same seed and actions give the same trajectory. ``reset()`` without a
seed draws the next world of the sequence; ``options={"world": k}`` plays world ``k``.

Rewards are the economy's reward (the utility of the basket eaten); each agent's
``infos`` carry its reward components (``utility``, ``persistence``, ``collaboration``, ``income``)
and its units of work. Bad actions (an agent missing or unknown, a head missing or
unknown, a value out of range, a wrong shape or a non-integer) raise ``ValueError`` naming
the agent and the head, before the world changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    import gymnasium
    from gymnasium import spaces
    from pettingzoo import ParallelEnv
except ImportError as e:  # pragma: no cover - the optional extra is missing
    raise ImportError(
        "economy.interop.pettingzoo needs the optional extra: pip install -e \".[pettingzoo]\" "
        f"(pettingzoo and gymnasium): {e}"
    ) from None

from economy.config import ConfigError, EconomyConfig, load_config
from economy.env import Economy
from economy.streams import derive, episode_world

ROOT = Path(__file__).resolve().parents[2]


def _config_path(config: str | Path) -> Path:
    p = Path(config)
    if not p.is_file() and not p.is_absolute() and (ROOT / p).is_file():
        return ROOT / p  # relative to the Agora checkout, wherever the caller runs
    return p


def parallel_env(
    config: str | Path | EconomyConfig = "configs/economy/default.yaml",
    *overrides: str,
    num_agents: int | None = None,
    seed: int | None = None,
    render_mode: str | None = None,
    held_out: bool = False,
    **fields: Any,
) -> "AgoraParallelEnv":
    """A PettingZoo ``ParallelEnv`` over one world of the economy of ``config`` (an economy
    file or a run preset, ``dotted.key=value`` ``overrides`` and top-level ``fields`` such
    as ``num_markets``, all validated: a bad one raises ``economy.ConfigError`` naming it)."""
    if num_agents is not None:
        fields["num_agents"] = num_agents
    if isinstance(config, EconomyConfig):
        cfg = config.model_copy(update=fields) if fields or overrides else config
        if overrides:
            raise ValueError("overrides apply to a config file, not to an EconomyConfig object")
    else:
        cfg = load_config(_config_path(config), *overrides, **fields)
    return AgoraParallelEnv(cfg, seed=seed, render_mode=render_mode, held_out=held_out)


class AgoraParallelEnv(ParallelEnv):
    """See the module docstring."""

    metadata = {"name": "agora_economy_v0", "is_parallelizable": True, "render_modes": ["ansi"]}

    def __init__(self, cfg: EconomyConfig, seed: int | None = None, render_mode: str | None = None,
                 held_out: bool = False):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode={render_mode!r}: supported modes are None and 'ansi'")
        if cfg.catalogues is not None:
            raise ConfigError("economy.catalogues: the PettingZoo wrapper plays one catalogue; build it from a "
                              "config without economy.catalogues (e.g. one generated catalogue: agora catalogue)")
        self.cfg = cfg
        self.render_mode = render_mode
        self.held_out = held_out
        self.economy = Economy(cfg)
        n = cfg.num_agents
        self.possible_agents = [f"agent_{i}" for i in range(n)]
        self.agents: list[str] = []
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        self._heads = self.economy.action_spec
        self._obs_space = spaces.Box(-np.inf, np.inf, (self.economy.obs_dim,), np.float32)
        self._act_space = spaces.Dict({
            h.name: spaces.Discrete(h.choices) if h.shape == () else spaces.MultiDiscrete(np.full(h.shape, h.choices))
            for h in self._heads
        })
        self._seed = 0 if seed is None else int(seed)
        self._episode = -1
        self._t = 0
        self.economy_state = None  # the EconomyState of the world being played
        self.last_info: dict[str, np.ndarray] = {}  # the economy's info of the last step, as NumPy
        env = self.economy
        self._reset = jax.jit(env.reset)
        self._step = jax.jit(env._step)  # shapes and dtypes are checked here, on the host

    # ---- spaces -------------------------------------------------------------------------
    @property
    def max_num_agents(self) -> int:
        return len(self.possible_agents)

    def observation_space(self, agent: str) -> gymnasium.Space:
        return self._obs_space

    def action_space(self, agent: str) -> gymnasium.Space:
        return self._act_space

    # ---- keys ---------------------------------------------------------------------------
    def world_seed(self, episode: int | None = None) -> int:
        """Index (in the economy's training or held-out range) of ``episode``'s world."""
        e = self._episode if episode is None else episode
        return int(episode_world(self._seed, e, self.cfg.world.eval_seed_start))

    def world_key(self, episode: int | None = None) -> jax.Array:
        return self.economy.world_key(self.world_seed(episode), evaluation=self.held_out)

    def step_key(self, t: int, episode: int | None = None) -> jax.Array:
        e = self._episode if episode is None else episode
        return derive(jax.random.key(self._seed), "pettingzoo", e, t)

    # ---- the API ------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed = int(seed)
            self._episode = 0
        else:
            self._episode += 1
        if options and "world" in options:
            self._seed, self._episode = 0, int(options["world"])
        obs, self.economy_state = self._reset(self.world_key())
        self._t = 0
        self.agents = list(self.possible_agents)
        self.last_info = {}
        obs = np.asarray(obs)
        return dict(zip(self.agents, obs)), {a: {} for a in self.agents}

    def step(self, actions: dict):
        if not self.agents:
            raise ValueError("step() after the episode ended: call reset() first")
        arrays = self._gather(actions)
        obs, state, reward, terminated, truncated, info = self._step(
            self.step_key(self._t), self.economy_state, arrays
        )
        self.economy_state = state
        self._t += 1
        obs, reward, terminated, truncated = (np.asarray(x) for x in (obs, reward, terminated, truncated))
        self.last_info = {k: np.asarray(v) for k, v in info.items()}
        agents = self.agents
        utility, persistence = self.last_info["utility"], self.last_info["specialisation"]
        collaboration, units = self.last_info["collaboration"], self.last_info["units"]
        income = self.last_info["value_added"]
        infos = {
            a: {"utility": float(utility[i]), "persistence": float(persistence[i]),
                "collaboration": float(collaboration[i]), "income": float(income[i]), "units": int(units[i])}
            for i, a in enumerate(agents)
        }
        out = (
            dict(zip(agents, obs)),
            dict(zip(agents, reward.astype(float).tolist())),
            dict(zip(agents, terminated.tolist())),
            dict(zip(agents, truncated.tolist())),
            infos,
        )
        if terminated.any() or truncated.any():  # the whole world ends together
            self.agents = []
        return out

    def _gather(self, actions: dict) -> dict[str, jax.Array]:
        """``{head: int32 [N, ...]}`` from the per-agent dicts; ``ValueError`` naming the
        agent and head of the first bad entry (nothing has changed yet)."""
        if not isinstance(actions, dict):
            raise ValueError(f"actions must be a dict keyed by agent, got {type(actions).__name__}")
        unknown = [a for a in actions if a not in self._index]
        if unknown:
            raise ValueError(f"actions for unknown agent {unknown[0]!r} (agents are 'agent_0'..'agent_{self.max_num_agents - 1}')")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"no action for agent {missing[0]!r} ({len(missing)} live agents missing)")
        names = [h.name for h in self._heads]
        n = self.max_num_agents
        out = {}
        for h in self._heads:
            rows = []
            for a in self.possible_agents:
                act = actions[a]
                if not isinstance(act, dict):
                    raise ValueError(f"agent {a!r}: action must be a dict of heads {names}, got {type(act).__name__}")
                if h.name not in act:
                    raise ValueError(f"agent {a!r}: head {h.name!r} missing (heads: {names})")
                rows.append(act[h.name])
            try:
                arr = np.asarray(rows)
            except ValueError:  # ragged: some agent's entry has another shape
                arr = np.empty(0)
            if arr.shape != (n,) + h.shape:
                bad = next((a for a, r in zip(self.possible_agents, rows) if np.shape(r) != h.shape), self.possible_agents[0])
                raise ValueError(f"agent {bad!r}: head {h.name!r} has shape {np.shape(actions[bad][h.name])}, expected {h.shape}")
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
                bad = next(a for a, r in zip(self.possible_agents, rows) if not np.issubdtype(np.asarray(r).dtype, np.integer))
                raise ValueError(f"agent {bad!r}: head {h.name!r} must be integer, got {np.asarray(actions[bad][h.name]).dtype}")
            wrong = np.flatnonzero(np.any((arr < 0) | (arr >= h.choices), axis=tuple(range(1, arr.ndim))))
            if wrong.size:
                a = self.possible_agents[wrong[0]]
                raise ValueError(f"agent {a!r}: head {h.name!r} value {np.asarray(actions[a][h.name]).tolist()} "
                                 f"out of range [0, {h.choices})")
            out[h.name] = jnp.asarray(arr.astype(np.int32))
        for a in self.possible_agents:
            extra = set(actions[a]) - set(names)
            if extra:
                raise ValueError(f"agent {a!r}: unknown head {sorted(extra)[0]!r} (heads: {names})")
        return out

    def render(self):
        if self.render_mode is None:
            gymnasium.logger.warn("render() without a render_mode: pass render_mode='ansi' to parallel_env")
            return None
        s = self.economy_state
        cfg = self.cfg
        price = np.asarray(s.price).mean(0)
        lines = [f"step {self._t} of {cfg.episode_length}, world {self.world_seed()}"
                 f"{' (held out)' if self.held_out else ''}"]
        lines.append("mean price: " + ", ".join(f"{g}={p:.1f}" for g, p in zip(cfg.good_names, price)))
        if "niche_occupancy" in self.last_info:
            occ = self.last_info["niche_occupancy"].sum(0) / self.max_num_agents
            lines.append("niches: " + ", ".join(f"{n}={x:.2f}" for n, x in zip([*cfg.niche_names, "rest"], occ)))
        return "\n".join(lines)

    def close(self):
        pass

    def state(self) -> np.ndarray:
        """All agents' observations, ``[N, obs_dim]`` float32 (a global state for centralised critics)."""
        return np.asarray(self.economy.observe(self.economy_state))


__all__ = ["AgoraParallelEnv", "parallel_env"]
