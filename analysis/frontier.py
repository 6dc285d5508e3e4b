"""The welfare frontier of an economy: the best average utility an allocation of labour
over niches can reach, the ceiling every evaluation is measured against (``agora frontier``).

Two frontiers, in the units of ``agora eval``'s ``utility`` (mean utility per agent-step):

* **First-best** (:func:`first_best`), an upper bound: in every market of the evaluation
  worlds a planner chooses the shares of labour ``x_j`` over the niches and splits the
  output equally among the market's agents, in the steady state, at full skill. Per agent
  and step, niche ``j`` does ``x_j * e_j`` units of work, ``e_j = labour_j x richness_j x
  project multiplier`` (or the niche's registered production rule, called on the steady
  state), net output is ``P_g = sum_j x_j e_j (out_jg - in_jg)``, and with the catalogue's
  eaten fraction ``c_g`` and spoilage ``p_g`` a holding settles where
  ``eaten_g = c_g P_g / (c_g + p_g - c_g p_g)``. The project stock settles at
  ``S = B sum_j x_j e_j public_j / decay`` (``B`` agents per market), which multiplies
  every producer's work by ``1 + gain S / (S + half)``. Utility is the market's mean
  Cobb-Douglas ``sum_g w_g log(1 + eaten_g)`` over its agents' tastes. The shares are
  found by SciPy's SLSQP (sequential least squares: smooth objective, a handful of
  variables, the equality "shares sum to 1" and the inequalities "no good is used faster
  than it is made", all with exact JAX gradients) from several starts per market.
* **Market frontier** (:func:`market_frontier`), a lower bound on what the market allows:
  the best fixed niche shares, the same in every market (agent slot ``b`` of a market
  works the niche whose cumulative share covers it), with the scripted agents' orders for
  each agent's assigned niche, played on the evaluation's held-out worlds with its keys.
  The shares (a softmax of free logits) are searched by CMA-ES (``cma``, N. Hansen's
  reference implementation, ask/tell), seeded from the first-best allocation; each
  generation's candidates play all worlds in one ``vmap``-ed, jitted rollout.

:func:`frontier` computes both and caches them per economy config (a hash of the
validated economy section, the evaluation settings and the search budget) under
``$AGORA_FRONTIER_CACHE`` (default ``$AGORA_CACHE/frontier``, i.e. ``~/.cache/agora/frontier``), so evaluations and studies
reuse them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agents.scripted import ScriptedConfig, scripted_actions
from economy import ConfigError, Economy, EconomyConfig, eval_keys, rollout
from economy.registry import ProductionContext, default_rule, make_rule

FRONTIER_VERSION = 1  # bump when the method changes: older cache entries are then recomputed
# Not bumped on 2026-12-07, when the call auction's rationing lottery moved to economy.rng (so
# that padded catalogues draw what unpadded ones do): the committed market frontiers' allocations
# replayed on the same worlds moved by -0.0011 +- 0.0006 (default demo, 0.7147 -> 0.7136) and
# -0.0012 +- 0.0005 (classic demo, 0.6098 -> 0.6086), paired over the 8 worlds: a seventh of each
# frontier's own standard error (0.008, 0.009), so cached frontiers stay valid records.
NOT_IN_FRONTIER = ("observe_values", "collaboration_scale")  # economy fields only learners see: not hashed
FIXED_POINT_STEPS = 60  # iterations of the steady state (project stock and holdings)


class FrontierError(ConfigError):
    """A catalogue (or a niche subset) the frontier cannot be computed for; the message names why."""


class FrontierSettings(BaseModel):
    """The frontier's search budget (frozen; the defaults are ``agora frontier``'s)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    population: int = Field(10, ge=2, le=256)  # CMA-ES candidates per generation (one vmapped batch)
    generations: int = Field(24, ge=1, le=10_000)  # CMA-ES generations (market frontier)
    sigma: float = Field(0.6, gt=0.0)  # initial CMA-ES step size on the share logits
    starts: int = Field(4, ge=1, le=100)  # SLSQP starts per market (first-best)
    seed: int = Field(0, ge=0)  # CMA-ES and SLSQP start seed


# ---- catalogue checks ------------------------------------------------------------------------
def _allowed(cfg: EconomyConfig, only: Sequence[str] | None) -> np.ndarray:
    """bool ``[J]``: the niches the frontier may use (all, or those named in ``only``)."""
    names = list(cfg.niche_names)
    if not only:
        return np.ones(len(names), bool)
    unknown = [n for n in only if n not in names]
    if unknown:
        raise FrontierError(f"--only: unknown niche {', '.join(map(repr, unknown))} (niches: {', '.join(names)})")
    return np.array([n in only for n in names])


def producible(cfg: EconomyConfig, allowed: np.ndarray) -> np.ndarray:
    """bool ``[G]``: goods some chain of the allowed niches can make from nothing (a niche
    runs when every input it needs is producible)."""
    goods = {g: i for i, g in enumerate(cfg.good_names)}
    made = np.zeros(cfg.num_goods, bool)
    changed = True
    while changed:  # fixed point over a handful of niches, at config time
        changed = False
        for j, n in enumerate(cfg.niches):
            if allowed[j] and all(made[goods[g]] for g, q in n.inputs.items() if q > 0):
                for g, q in n.outputs.items():
                    if q > 0 and not made[goods[g]]:
                        made[goods[g]] = changed = True
    return made


def consumer_goods(cfg: EconomyConfig) -> np.ndarray:
    """bool ``[G]``: goods that are eaten and give utility."""
    return np.array([g.utility > 0 and g.consume > 0 for g in cfg.goods])


def check_catalogue(cfg: EconomyConfig, allowed: np.ndarray) -> list[str]:
    """Raise :class:`FrontierError` when no chain of the allowed niches feeds a consumer
    good; return the consumer goods that no chain can make (their utility is then 0)."""
    made, eat = producible(cfg, allowed), consumer_goods(cfg)
    if not (made & eat).any():
        names = [g for g, e in zip(cfg.good_names, eat) if e]
        why = []
        for j, n in enumerate(cfg.niches):
            if allowed[j]:
                missing = [g for g in n.inputs if not made[cfg.good_names.index(g)]]
                if missing:
                    why.append(f"{n.name} needs {', '.join(missing)}, which no niche makes")
        used = [n for n, a in zip(cfg.niche_names, allowed) if a]
        raise FrontierError(
            f"no chain of the niches {', '.join(used)} produces a consumer good ({', '.join(names)})"
            + (f": {'; '.join(why)}" if why else "")
        )
    return [g for g, e, m in zip(cfg.good_names, eat, made) if e and not m]


# ---- first-best: the planner's steady state --------------------------------------------------
class _Planner:
    """The steady-state model of one market, jitted once per economy (see the module doc)."""

    def __init__(self, env: Economy):
        cfg, p = env.cfg, env.params
        J, G = cfg.num_niches, cfg.num_goods
        self.cfg, self.J, self.G = cfg, J, G
        self.net = jnp.asarray(p.outputs[:J] - p.inputs[:J], jnp.float32)  # [J, G]
        self.public = jnp.asarray(p.public[:J], jnp.float32)
        c, s = p.consume, p.perish
        turnover = c + s - c * s  # fraction of a steady holding (after work) that leaves each step
        self.eaten_frac = jnp.where(turnover > 0, c / jnp.maximum(turnover, 1e-12), 0.0)
        self.kept_frac = jnp.where(turnover > 0, (1 - c) * (1 - s) / jnp.maximum(turnover, 1e-12), 1e6)
        self.custom = env.custom
        self.B = cfg.agents_per_market
        self.value_and_grad = jax.jit(jax.value_and_grad(lambda x, *a: -self.utility(x, *a)))
        self.net_fn = jax.jit(lambda x, *a: self.steady(x, *a)[0])
        self.net_jac = jax.jit(jax.jacfwd(lambda x, *a: self.steady(x, *a)[0]))
        self.outcome = jax.jit(self.steady)
        self.utility_fn = jax.jit(self.utility)

    def effort(self, x, richness, labour, mult, holding):
        """Units of work per worker and step in each niche ``[J]`` at full skill."""
        J = self.J
        ctx = ProductionContext(
            skill=jnp.ones((J,)), richness=richness, project=jnp.full((J,), mult), workers=x * self.B,
            goods=jnp.broadcast_to(holding, (J, self.G)), labour=labour, skill_floor=self.cfg.skill_floor,
            step=jnp.int32(0), params={},
        )
        e = default_rule(ctx)
        for c in self.custom:  # trace-time loop over the few niches with their own rule
            e = e.at[c.index].set(c.rule(ctx._replace(params=c.params))[c.index].astype(jnp.float32))
        return jnp.maximum(e, 0.0)

    def steady(self, x, richness, labour, tastes):
        """``(net output per agent-step [G], eaten [G], project multiplier, stock)``."""
        pc = self.cfg.project

        def body(carry, _):
            stock, holding = carry
            mult = 1.0 + pc.gain * stock / (stock + pc.half)
            units = x * self.effort(x, richness, labour, mult, holding)  # [J] per agent
            net = units @ self.net
            stock = self.B * jnp.sum(units * self.public) / pc.decay
            holding = jnp.maximum(net, 0.0) * self.kept_frac
            return (stock, holding), None

        (stock, holding), _ = jax.lax.scan(body, (jnp.float32(0.0), jnp.zeros((self.G,))), None, FIXED_POINT_STEPS)
        mult = 1.0 + pc.gain * stock / (stock + pc.half)
        net = (x * self.effort(x, richness, labour, mult, holding)) @ self.net
        eaten = jnp.maximum(net, 0.0) * self.eaten_frac
        return net, eaten, mult, stock

    def utility(self, x, richness, labour, tastes):
        return jnp.sum(tastes * jnp.log1p(self.steady(x, richness, labour, tastes)[1]))


def _world_markets(env: Economy, worlds: int):
    """The evaluation worlds' markets: richness ``[K*M, J]``, labour ``[K*M, J]`` and mean
    tastes ``[K*M, G]`` (float64 NumPy)."""
    cfg = env.cfg
    M, B = cfg.num_markets, cfg.agents_per_market
    reset = jax.jit(env.reset)
    rich, lab, taste = [], [], []
    for world, _ in eval_keys(env, worlds):
        _, s = reset(world)
        rich.append(np.asarray(s.richness, np.float64))
        lab.append(np.broadcast_to(np.asarray(s.labour, np.float64), (M, cfg.num_niches)))
        taste.append(np.asarray(s.preferences, np.float64).reshape(M, B, -1).mean(1))
    return np.concatenate(rich), np.concatenate(lab), np.concatenate(taste)


def first_best(cfg: EconomyConfig, worlds: int = 8, only: Sequence[str] | None = None,
               settings: FrontierSettings = FrontierSettings()) -> dict:
    """The planner's steady-state optimum on the ``worlds`` evaluation worlds (module doc).

    Returns ``utility`` (mean per agent-step over markets and worlds), ``shares`` ``[J]``
    (mean labour shares), ``project_multiplier`` (mean), ``per_market`` shares ``[K*M, J]``
    and ``per_market_utility`` ``[K*M]``, the ``niches`` used, ``unproducible`` consumer
    goods and the ``optimiser`` used. ``only`` restricts the niches by name.
    """
    from scipy.optimize import minimize

    allowed = _allowed(cfg, only)
    unproducible = check_catalogue(cfg, allowed)
    env = Economy(cfg)
    planner = _Planner(env)
    rich, lab, taste = _world_markets(env, worlds)
    J = cfg.num_niches
    rng = np.random.default_rng(settings.seed)
    k = int(allowed.sum())

    def start(i):
        x = np.zeros(J)
        x[allowed] = np.full(k, 1.0 / k) if i == 0 else rng.dirichlet(np.ones(k))
        return x

    starts = [start(i)[allowed] for i in range(settings.starts)]
    embed = np.eye(J)[allowed]  # [k, J]: the variables are the allowed niches' shares
    full = lambda y: (np.asarray(y) @ embed).astype(np.float32)  # noqa: E731
    best_x, best_u, mults = [], [], []
    for m in range(rich.shape[0]):
        args = tuple(np.asarray(a[m], np.float32) for a in (rich, lab, taste))

        def fun(y):
            v, g = planner.value_and_grad(full(y), *args)
            return float(v), np.asarray(g, np.float64) @ embed.T

        cons = [
            {"type": "eq", "fun": lambda y: np.sum(y) - 1.0, "jac": lambda y: np.ones_like(y)},
            {"type": "ineq", "fun": lambda y: np.asarray(planner.net_fn(full(y), *args), np.float64),
             "jac": lambda y: np.asarray(planner.net_jac(full(y), *args), np.float64) @ embed.T},
        ]
        cands = []
        for y0 in starts:
            r = minimize(fun, y0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * k, constraints=cons,
                         options={"maxiter": 200, "ftol": 1e-10})
            y = np.clip(r.x, 0.0, 1.0)
            x = (y / max(y.sum(), 1e-12)) @ embed
            net = np.asarray(planner.net_fn(x.astype(np.float32), *args))
            feasible = np.all(net >= -1e-4 * (1 + np.abs(net).max()))
            u = float(planner.utility_fn(x.astype(np.float32), *args))
            cands.append((feasible, u, x))
        feasible_u = [(u, x) for f, u, x in cands if f] or [(u, x) for _, u, x in cands]
        u, x = max(feasible_u, key=lambda t: t[0])
        best_u.append(u)
        best_x.append(x)
        mults.append(float(planner.outcome(jnp.asarray(x, jnp.float32), *args)[2]))
    per_market = np.asarray(best_x)
    return {
        "utility": float(np.mean(best_u)),
        "shares": per_market.mean(0).tolist(),
        "project_multiplier": float(np.mean(mults)),
        "per_market": per_market.tolist(),
        "per_market_utility": best_u,
        "niches": [n for n, a in zip(cfg.niche_names, allowed) if a],
        "unproducible": unproducible,
        "optimiser": f"scipy SLSQP, {settings.starts} starts per market (equal shares + Dirichlet draws)",
    }


# ---- market frontier: fixed shares with the scripted agents' orders ---------------------------
def assign_niches(shares: jax.Array, agents_per_market: int) -> jax.Array:
    """int32 ``[B]``: the niche of each agent slot of a market under ``shares`` ``[J]``
    (summing to 1): slot ``b`` works the niche ``j`` whose cumulative share, rounded to
    whole agents, first exceeds ``b``. Deterministic; counts differ from ``shares * B`` by
    less than one agent."""
    bounds = jnp.round(jnp.cumsum(shares) * agents_per_market)  # [J], the last is B
    slots = jnp.arange(agents_per_market, dtype=jnp.float32)
    return jnp.minimum(jnp.sum(slots[:, None] >= bounds[None, :], -1), shares.shape[0] - 1).astype(jnp.int32)


def fixed_share_player(env: Economy, worlds: int, steps: int, burn_in: int, scripted: ScriptedConfig = ScriptedConfig()):
    """``shares [C, J] -> (utility [C, K], project stock [C, K], units per niche [C, K, J])``:
    every candidate's fixed shares played on the ``worlds`` evaluation worlds with the
    evaluation's keys by the scripted orders; means over the steps from ``burn_in`` on.
    One jitted program (candidates and worlds vmapped)."""
    cfg = env.cfg
    n, M, B, J = cfg.num_agents, cfg.num_markets, cfg.agents_per_market, cfg.num_niches
    keys = eval_keys(env, worlds)
    world_keys = jnp.stack([w for w, _ in keys])
    action_keys = jnp.stack([a for _, a in keys])

    def metrics(env, state, info, actions):
        work = jax.nn.one_hot(info["niche"], J + 1, dtype=jnp.float32)[:, :J]
        return {
            "utility": jnp.mean(info["utility"]),
            "project": jnp.mean(info["project"].astype(jnp.float32)),
            "units": info["units"].astype(jnp.float32) @ work / n,  # [J] units of work per agent
        }

    def one(shares, world_key, key):
        _, state = env.reset(world_key)
        niche = jnp.tile(assign_niches(shares, B), M)
        policy = lambda k, s: scripted_actions(env, k, s, scripted, niche=niche)  # noqa: E731
        _, m = rollout(env, policy, key, state, steps, metrics)
        return m["utility"][burn_in:].mean(), m["project"][burn_in:].mean(), m["units"][burn_in:].mean(0)

    per_world = jax.vmap(one, in_axes=(None, 0, 0))
    return jax.jit(jax.vmap(lambda s: per_world(s, world_keys, action_keys)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def market_frontier(cfg: EconomyConfig, worlds: int, steps: int, burn_in: int, seed_shares: Sequence[float],
                    only: Sequence[str] | None = None, settings: FrontierSettings = FrontierSettings(),
                    log=None) -> dict:
    """The best fixed niche shares with scripted orders (module doc), searched by CMA-ES
    from ``seed_shares``. Returns ``utility`` (mean over worlds), ``stderr`` (over worlds),
    ``per_world`` utilities, ``shares`` ``[J]``, ``project_stock``, ``units_per_agent_step``
    ``[J]``, the number of ``evaluations``, the ``history`` of the best utility per
    generation and the ``optimiser`` used."""
    import cma

    allowed = _allowed(cfg, only)
    check_catalogue(cfg, allowed)
    env = Economy(cfg)
    play = fixed_share_player(env, worlds, steps, burn_in)
    idx = np.flatnonzero(allowed)
    J, C = cfg.num_niches, settings.population

    def shares_of(z: np.ndarray) -> np.ndarray:
        s = np.zeros((len(z), J))
        s[:, idx] = _softmax(np.asarray(z))
        return s

    x0 = np.log(np.maximum(np.asarray(seed_shares, np.float64)[idx], 0.01))
    x0 -= x0.mean()
    best = {"utility": -np.inf}
    history = []
    evaluations = 0

    def evaluate(z: np.ndarray):
        nonlocal evaluations, best
        s = shares_of(z)
        u, stock, units = jax.device_get(play(jnp.asarray(s, jnp.float32)))
        evaluations += len(z)
        mean = u.mean(1)
        i = int(np.argmax(mean))
        if mean[i] > best["utility"]:
            best = {"utility": float(mean[i]), "stderr": float(u[i].std(ddof=1) / np.sqrt(worlds)) if worlds > 1 else None,
                    "per_world": u[i].tolist(), "shares": s[i].tolist(), "project_stock": float(stock[i].mean()),
                    "units_per_agent_step": units[i].mean(0).tolist()}
        return mean

    if len(idx) == 1:  # one niche: nothing to search
        evaluate(np.zeros((C, 1)))
        history.append(best["utility"])
    else:
        es = cma.CMAEvolutionStrategy(x0, settings.sigma, {
            "popsize": C, "seed": settings.seed + 1, "verbose": -9, "maxiter": settings.generations,
            "tolfun": 0, "tolx": 0, "tolflatfitness": 10**6, "tolfunhist": 0, "tolstagnation": 10**6})
        es.inject([x0], force=True)  # the first-best allocation is the first candidate
        for g in range(settings.generations):
            z = np.asarray(es.ask())
            es.tell(list(z), list(-evaluate(z)))
            history.append(best["utility"])
            if log:
                log(f"  generation {g + 1}/{settings.generations}: best {best['utility']:.4f}")
    best.update(evaluations=evaluations, history=history,
                optimiser=f"CMA-ES (pycma {cma.__version__}) over share logits, population {C}, "
                          f"{settings.generations} generations, seeded from the first-best")
    return best


# ---- both, cached -----------------------------------------------------------------------------
def config_hash(cfg: EconomyConfig, **extra) -> str:
    """sha256 of the validated economy section (and ``extra``: settings that change the result).

    Only values that differ from the config's defaults enter the hash, so a new config
    field whose default leaves the economy unchanged keeps every cached frontier valid;
    a change of a default value must bump :data:`FRONTIER_VERSION`."""
    eco = cfg.model_dump(mode="json", exclude_defaults=True, exclude=set(NOT_IN_FRONTIER))
    data = {"economy": eco, "version": FRONTIER_VERSION, **extra}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cache_dir() -> Path:
    """``$AGORA_FRONTIER_CACHE``, else ``$AGORA_CACHE/frontier`` (default ``~/.cache/agora/frontier``)."""
    if os.environ.get("AGORA_FRONTIER_CACHE"):
        return Path(os.environ["AGORA_FRONTIER_CACHE"])
    return Path(os.environ.get("AGORA_CACHE", Path.home() / ".cache" / "agora")) / "frontier"


def frontier(cfg: EconomyConfig, worlds: int, steps: int, burn_in: int, only: Sequence[str] | None = None,
             settings: FrontierSettings = FrontierSettings(), recompute: bool = False, log=None) -> dict:
    """Both frontiers of ``cfg`` on the evaluation worlds (``worlds``, ``steps``,
    ``burn_in`` as ``agora eval`` plays them), from the cache (:func:`cache_dir`) when it
    has them and ``recompute`` is false. Returns ``{"key", "niche_names", "only", "eval",
    "settings", "first_best", "market", "seconds", "version", "cached"}`` (``first_best``:
    :func:`first_best`, ``market``: :func:`market_frontier`)."""
    from analysis.files import write_atomic

    only = sorted(only) if only else None
    key = config_hash(cfg, worlds=worlds, steps=steps, burn_in=burn_in, only=only, settings=settings.model_dump())
    path = cache_dir() / f"{key}.json"
    if path.is_file() and not recompute:
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                cached["cached"] = True
                return cached
        except json.JSONDecodeError:
            pass  # a damaged entry is recomputed
    t0 = time.perf_counter()
    fb = first_best(cfg, worlds, only, settings)
    t1 = time.perf_counter()
    if log:
        log(f"first-best {fb['utility']:.4f} in {t1 - t0:.1f} s; searching the market frontier "
            f"({settings.generations} generations of {settings.population})")
    mf = market_frontier(cfg, worlds, steps, burn_in, fb["shares"], only, settings, log)
    t2 = time.perf_counter()
    out = {
        "key": key,
        "niche_names": list(cfg.niche_names),
        "only": only,
        "eval": {"worlds": worlds, "steps": steps, "burn_in": burn_in},
        "settings": settings.model_dump(),
        "first_best": fb,
        "market": mf,
        "seconds": {"first_best": t1 - t0, "market": t2 - t1},
        "version": FRONTIER_VERSION,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(out, indent=1))
    out["cached"] = False
    return out


# ---- distance to the frontier -----------------------------------------------------------------
DISTANCE_METRICS = ("frontier_utility", "frontier_first_best", "efficiency", "efficiency_first_best",
                    "niche_js_to_frontier")


def js_bits(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits (0 equal, 1 disjoint) of two distributions."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def distance(metrics: dict, fr: dict | None) -> dict:
    """``DISTANCE_METRICS`` of an evaluation's ``metrics`` (its ``utility`` and
    ``niche_shares`` ``[J+1]``, the last entry resting) against a :func:`frontier`:
    ``efficiency`` = utility / market frontier, ``efficiency_first_best`` = utility /
    first-best, ``niche_js_to_frontier`` = JS divergence (bits) between the shares of work
    over niches (resting left out) and the market frontier's. All null without a frontier."""
    if fr is None or metrics.get("utility") is None:
        return dict.fromkeys(DISTANCE_METRICS)
    mu, fb = fr["market"]["utility"], fr["first_best"]["utility"]
    work = np.asarray(metrics["niche_shares"][:-1], np.float64)
    return {
        "frontier_utility": mu,
        "frontier_first_best": fb,
        "efficiency": metrics["utility"] / mu,
        "efficiency_first_best": metrics["utility"] / fb,
        "niche_js_to_frontier": js_bits(work, fr["market"]["shares"]) if work.sum() > 0 else None,
    }


def format_frontier(fr: dict) -> str:
    """The printed table of ``agora frontier``."""
    names = fr["niche_names"]
    fb, mf = fr["first_best"], fr["market"]
    w = max(len(n) for n in names + ["niche"])
    lines = [
        f"{'':{w}}  {'first-best':>10}  {'market':>10}",
        f"{'utility':{w}}  {fb['utility']:>10.4f}  {mf['utility']:>10.4f}"
        + (f" ± {mf['stderr']:.4f} (s.e. over {fr['eval']['worlds']} worlds)" if mf.get("stderr") is not None else ""),
    ]
    for j, n in enumerate(names):
        lines.append(f"{n:{w}}  {fb['shares'][j]:>10.3f}  {mf['shares'][j]:>10.3f}")
    lines.append(f"{'project':{w}}  {'x%.3f' % fb['project_multiplier']:>10}  {'%.1f' % mf['project_stock']:>10}"
                 "   (first-best: output multiplier; market: mean stock)")
    if fb["unproducible"]:
        lines.append(f"no chain of these niches makes: {', '.join(fb['unproducible'])}")
    lines.append(f"first-best: {fb['optimiser']}; {fr['seconds']['first_best']:.1f} s")
    lines.append(f"market: {mf['optimiser']}; {mf['evaluations']} evaluations; {fr['seconds']['market']:.1f} s")
    return "\n".join(lines)


def summary(fr: dict | None) -> dict | None:
    """What an eval.json keeps of the frontier: both utilities, shares and where it came from."""
    if fr is None:
        return None
    return {
        "key": fr["key"],
        "first_best": {k: fr["first_best"][k] for k in ("utility", "shares", "project_multiplier")},
        "market": {k: fr["market"].get(k) for k in ("utility", "stderr", "shares", "project_stock", "evaluations")},
        "settings": fr["settings"],
    }


def table_rows(fr: dict | None) -> dict | None:
    """The frontier as rows beside the baselines (of the first run's economy), in the
    metrics' names: ``market frontier`` and ``first-best`` (the planner's steady state)."""
    if fr is None:
        return None
    from analysis.niches import niche_spread

    fb, mf = fr["first_best"], fr["market"]
    both = {"frontier_utility": mf["utility"], "frontier_first_best": fb["utility"]}
    spread = lambda shares: dict(zip(("effective_niches", "active_niches"), niche_spread(shares)))  # noqa: E731
    return {
        "market frontier": {"utility": mf["utility"], "utility_stderr": mf["stderr"], "niche_shares": [*mf["shares"], 0.0],
                            **spread(mf["shares"]), "project_stock": mf["project_stock"], **both, "efficiency": 1.0,
                            "efficiency_first_best": mf["utility"] / fb["utility"], "niche_js_to_frontier": 0.0,
                            "evaluations": mf["evaluations"]},
        "first-best": {"utility": fb["utility"], "niche_shares": [*fb["shares"], 0.0], **spread(fb["shares"]), **both,
                       "efficiency": fb["utility"] / mf["utility"], "efficiency_first_best": 1.0,
                       "project_multiplier": fb["project_multiplier"]},
    }


__all__ = [
    "DISTANCE_METRICS", "FrontierError", "FrontierSettings", "assign_niches", "cache_dir", "check_catalogue",
    "config_hash", "distance", "first_best", "fixed_share_player", "format_frontier", "frontier", "js_bits",
    "market_frontier", "producible", "summary", "table_rows",
]
