"""Run an economy with baseline agents (scripted or random) and tabulate what happens.

The whole run is one jitted ``lax.scan`` over steps: the policy, the economy step and
the per-step metrics all stay on the device, the metrics come back stacked ``[T, ...]``
as scan outputs, and the host only formats them at the end.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agents.scripted import ScriptedConfig, random_actions, scripted_actions
from economy import Economy, EconomyState, streams
from economy.env import rollout as economy_rollout
from selfplay.config import RunConfig

Policy = Callable[[jax.Array, EconomyState], dict]  # (key, state) -> actions


def make_policy(env: Economy, agents: str, scripted: ScriptedConfig = ScriptedConfig()) -> Policy:
    """The baseline policy named ``agents`` ("scripted" or "random") as ``(key, state) -> actions``."""
    policies: dict[str, Policy] = {
        "scripted": functools.partial(scripted_actions, env, config=scripted),
        "random": functools.partial(random_actions, env),
    }
    try:
        return policies[agents]
    except KeyError:
        raise ValueError(f"unknown agents {agents!r} (known: {sorted(policies)})") from None


def step_metrics(env: Economy, state: EconomyState, info: dict) -> dict[str, jax.Array]:
    """Per-step statistics of one step (``state`` after it). Shapes per entry below."""
    n, m = state.goods.shape[0], state.price.shape[0]
    goods = state.goods
    return {
        "price": jnp.mean(info["market_price"].astype(jnp.float32), 0),  # float32 [G] mean clearing price over markets
        "volume": jnp.sum(info["market_volume"], 0),  # int32 [G] units traded, all markets
        "market_volume": info["market_volume"],  # int32 [M, G]
        "niche_shares": jnp.sum(info["niche_occupancy"], 0).astype(jnp.float32) / n,  # float32 [J+1], last: rest
        "utility": jnp.mean(info["utility"]),  # float32 [] mean per-agent utility this step
        # Ledger terms per market (int32, exact: the config bounds each market's sums; the
        # world's totals are economy.world_total of these, in int64 on the host).
        "goods_total": jnp.sum(goods.reshape(m, -1, goods.shape[-1]), 1),  # int32 [M, G] after the step
        "money_total": jnp.sum(state.money.reshape(m, -1), 1) + state.treasury,  # int32 [M] agents' + treasury
        "produced": info["produced"],  # int32 [M, G]
        "consumed": info["consumed"],  # int32 [M, G]
        "min_holding": jnp.minimum(jnp.min(goods), jnp.min(state.money)),  # int32 [] never negative
    }


def rollout(env: Economy, policy: Policy, key: jax.Array, state: EconomyState, steps: int, metrics=None):
    """Run ``steps`` steps from ``state`` in one ``lax.scan`` (:func:`economy.rollout`).

    Pure and jittable with ``env``, ``policy``, ``steps`` and ``metrics`` static (and
    vmappable over ``key`` and ``state`` to run several worlds). Returns ``(final state,
    metrics)``, metrics as in :func:`step_metrics` with a leading ``[T]`` axis, or as
    ``metrics(env, state, info, actions)`` returns them (``selfplay.evaluate`` measures
    per-member quantities that way, on the same steps and keys).
    """
    if metrics is None:
        metrics = lambda env, state, info, actions: step_metrics(env, state, info)  # noqa: E731
    return economy_rollout(env, policy, key, state, steps, metrics)


class StepRecord(NamedTuple):
    """What one step of a simulation did (economy-wide)."""

    step: int  # 1-based: the state after this many steps
    price: np.ndarray  # float [G] mean clearing price per good over markets
    volume: np.ndarray  # int [G] units traded per good, all markets
    niche_shares: np.ndarray  # float [J+1] fraction of agents per niche, last entry: resting
    utility: float  # mean utility per agent


class Timing(NamedTuple):
    compile_s: float  # reset and rollout, traced and compiled
    run_s: float  # the jitted rollout alone
    total_s: float  # everything, including building the economy
    agent_steps: int  # agents x steps

    @property
    def agent_steps_per_s(self) -> float:
        return self.agent_steps / max(self.run_s, 1e-9)


def run_keys(env: Economy, seed: int) -> tuple[jax.Array, jax.Array]:
    """``(world key, agents key)`` of a simulation seed: the world is ``env.world_key(seed)``
    (world namespace); the agents' key is the ``simulate/agents`` stream of the run root
    ``jax.random.key(seed)``, disjoint from every key the world draws."""
    return env.world_key(seed), streams.derive(jax.random.key(seed), "simulate", "agents")


def simulate_timed(cfg: RunConfig) -> tuple[list[StepRecord], Timing]:
    """:func:`simulate`, with the time spent compiling and running."""
    start = time.perf_counter()
    sim = cfg.simulate
    from analysis.catalogue import economy_for  # economy.catalogues: the padded economy of the training catalogues

    env = economy_for(cfg.economy)
    policy = make_policy(env, sim.agents, sim.scripted)
    key_world, key_agents = run_keys(env, sim.seed)
    reset = jax.jit(env.reset).lower(key_world).compile()
    _, state = reset(key_world)
    run = jax.jit(functools.partial(rollout, env, policy, steps=sim.steps), donate_argnums=1)
    run = run.lower(key_agents, state).compile()
    compiled = time.perf_counter()
    _, metrics = run(key_agents, state)
    metrics = jax.device_get(jax.block_until_ready(metrics))
    done = time.perf_counter()
    timing = Timing(
        compile_s=compiled - start,
        run_s=done - compiled,
        total_s=done - start,
        agent_steps=cfg.economy.num_agents * sim.steps,
    )
    return records(metrics), timing


def simulate(cfg: RunConfig) -> list[StepRecord]:
    """Run ``cfg.economy`` for ``cfg.simulate.steps`` steps with ``cfg.simulate.agents``
    agents from world ``cfg.simulate.seed``; one :class:`StepRecord` per step."""
    return simulate_timed(cfg)[0]


def records(metrics: dict) -> list[StepRecord]:
    """Host-side :class:`StepRecord` list from stacked metrics ``[T, ...]``."""
    m = {k: np.asarray(v) for k, v in metrics.items()}
    return [
        StepRecord(
            step=t + 1,
            price=m["price"][t],
            volume=m["volume"][t],
            niche_shares=m["niche_shares"][t],
            utility=float(m["utility"][t]),
        )
        for t in range(len(m["utility"]))
    ]


def format_table(
    records: Sequence[StepRecord],
    good_names: Sequence[str],
    niche_names: Sequence[str],
    print_every: int = 1,
) -> str:
    """A fixed-width table: one row every ``print_every`` steps (and the last step).

    Columns: ``step``; mean price per good (``p:NAME``); volume per good (``v:NAME``);
    percentage of agents per niche (``%NAME``, resting is ``%rest``); mean ``utility``.
    """
    headers = (
        ["step"]
        + [f"p:{g}" for g in good_names]
        + [f"v:{g}" for g in good_names]
        + [f"%{j}" for j in niche_names]
        + ["%rest", "utility"]
    )
    last = records[-1].step if records else 0
    rows = []
    for r in records:
        if r.step % print_every and r.step != last:
            continue
        rows.append(
            [str(r.step)]
            + [f"{x:.1f}" for x in r.price]
            + [str(int(x)) for x in r.volume]
            + [f"{100 * x:.1f}" for x in r.niche_shares]
            + [f"{r.utility:.4f}"]
        )
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(headers)] + [line(row) for row in rows])
