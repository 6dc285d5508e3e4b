"""RL variants: every per-member hyperparameter declared once.

A :class:`Variant` names the hyperparameter, its default range, how members draw it at
start (``law``), how PBT perturbs a copy (``perturb``), the bounds it must stay in, and
where it acts (``target``):

* ``"loss"``: passed to :func:`selfplay.ppo.ppo_loss` in its ``hyper`` mapping;
* ``"gae"``: ``gamma`` and ``gae_lambda`` of the advantage estimate;
* ``"optimizer"``: an injected hyperparameter of the optimiser of the same name
  (``optax.inject_hyperparams``: ``learning_rate``, Adam's ``b1``, ``b2``, ``eps``).

Sampling (:func:`sample`), PBT's explore step (:func:`perturb`), the config's ranges
(``train.variants.<name>: [lo, hi]``), the loss inputs, ``metrics.jsonl``, TensorBoard and
the report all follow from :data:`VARIANTS`. Adding a hyperparameter is one call, e.g.
(the README's example, run by the tests) Adam's first-moment decay per member::

    from selfplay.variants import Variant, register_variant

    register_variant(Variant("b1", default=(0.9, 0.9), law="uniform", perturb="complement",
                             bounds=(0.0, 1.0), target="optimizer"))

then ``agora train CONFIG 'train.variants.b1=[0.8, 0.95]'``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping

import jax
import jax.numpy as jnp

from economy.streams import derive


@dataclass(frozen=True)
class Variant:
    name: str
    default: tuple[float, float]  # range [lo, hi] members draw from when the config does not name it
    law: Literal["uniform", "log_uniform"] = "uniform"
    # PBT explore, with f one of train.pbt.perturb's two factors: "scale": x * f;
    # "complement": 1 - (1 - x) * f (for discounts near 1); "none": unchanged.
    perturb: Literal["scale", "complement", "none"] = "scale"
    bounds: tuple[float, float] = (-math.inf, math.inf)  # closed interval; ranges are checked, PBT clips
    target: Literal["loss", "gae", "optimizer"] = "loss"
    doc: str = ""

    def check_range(self, lo: float, hi: float) -> str | None:
        """Why ``[lo, hi]`` is not a valid range of this variant, or None."""
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return f"[{lo}, {hi}]: must be finite numbers"
        if lo > hi:
            return f"[{lo}, {hi}]: lo > hi"
        b0, b1 = self.bounds
        if lo < b0 or hi > b1:
            return f"[{lo}, {hi}]: must lie in [{b0}, {b1}]"
        if self.law == "log_uniform" and lo <= 0:
            return f"[{lo}, {hi}]: must be positive (drawn log-uniformly)"
        return None


VARIANTS: dict[str, Variant] = {}


def register_variant(v: Variant, replace: bool = False) -> Variant:
    """Declare a per-member hyperparameter (see the module docstring)."""
    if not v.name.isidentifier() or v.name == "rewards":
        raise ValueError(f"variant name {v.name!r} must be an identifier other than 'rewards' (it is a config key)")
    if v.name in VARIANTS and not replace:
        raise ValueError(f"variant {v.name!r} is already declared (replace=True to override)")
    problem = v.check_range(*v.default)
    if problem:
        raise ValueError(f"variant {v.name!r}: default range {problem}")
    VARIANTS[v.name] = v
    return v


def unregister_variant(name: str) -> None:
    VARIANTS.pop(name, None)


def draw(key: jax.Array, law: str, lo: float, hi: float, shape) -> jax.Array:
    """``shape`` values from ``[lo, hi]``: uniformly, or log-uniformly (``law="log_uniform"``)."""
    if law == "log_uniform":
        return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))
    return jax.random.uniform(key, shape, minval=lo, maxval=hi)


def sample(key: jax.Array, ranges: Mapping[str, tuple[float, float]], members: int) -> dict[str, jax.Array]:
    """Each member's value of every variant in ``ranges``: float32 ``[members]`` per name,
    each from its own named stream (adding a variant does not change the others' draws)."""
    return {
        name: draw(derive(key, name), VARIANTS[name].law, lo, hi, (members,)).astype(jnp.float32)
        for name, (lo, hi) in ranges.items()
    }


def perturb(key: jax.Array, hyper: Mapping[str, jax.Array], mask: jax.Array, factors: tuple[float, float]) -> dict:
    """PBT explore: where ``mask`` (bool ``[P]``), each variant is perturbed by one of the two
    ``factors`` (drawn per member and variant from the variant's named stream) by its
    declared law, then clipped to its bounds; elsewhere unchanged."""
    lo, hi = factors
    out = {}
    for name, x in hyper.items():
        v = VARIANTS[name]
        f = jnp.where(jax.random.bernoulli(derive(key, name), 0.5, x.shape), hi, lo)
        if v.perturb == "scale":
            y = x * f
        elif v.perturb == "complement":
            y = 1.0 - (1.0 - x) * f
        else:
            y = x
        out[name] = jnp.where(mask, jnp.clip(y, *v.bounds), x).astype(x.dtype)
    return out


def names(target: str | None = None) -> tuple[str, ...]:
    """Declared variants (of one ``target``), in declaration order."""
    return tuple(n for n, v in VARIANTS.items() if target is None or v.target == target)


# ---- built-in variants -----------------------------------------------------------------
register_variant(Variant("learning_rate", (1e-3, 3e-3), "log_uniform", "scale", (1e-7, 1.0), "optimizer",
                         "Adam step size"))
register_variant(Variant("ent_coef", (3e-4, 3e-3), "log_uniform", "scale", (1e-8, 1.0), "loss",
                         "entropy bonus (the entropy is summed over all heads' entries, about 40 nats at start)"))
register_variant(Variant("clip_eps", (0.15, 0.3), "uniform", "scale", (0.02, 0.5), "loss",
                         "PPO ratio clip (and the value clip, in normalised value units)"))
register_variant(Variant("vf_coef", (0.5, 0.5), "uniform", "none", (0.0, 10.0), "loss", "value loss weight"))
register_variant(Variant("gamma", (0.9, 0.97), "uniform", "complement", (0.0, 1.0), "gae", "discount"))
register_variant(Variant("gae_lambda", (0.9, 0.97), "uniform", "complement", (0.0, 1.0), "gae", "GAE lambda"))


def table_md() -> str:
    """``docs/variants.md``: every declared variant (this page is written from
    :data:`VARIANTS`; a test keeps them equal, so a changed default range or bound is a
    documented change)."""
    lines = ["# RL variants", "",
             "Every per-member hyperparameter, from its one declaration in `selfplay/variants.py` (this page is",
             "written from it by `selfplay.variants.table_md()`; a test keeps them equal). Default: the range",
             "members draw from when the config does not name it (`train.variants.<name>: [lo, hi]` sets it);",
             "bounds: the closed interval a configured range must lie in and PBT's perturbation is clipped to;",
             "perturb: how PBT's explore step moves a copied value by one of `train.pbt.perturb`'s two factors",
             "`f` (`scale`: x f; `complement`: 1 - (1 - x) f; `none`: unchanged); target: where it acts.", "",
             "| name | default | law | perturb | bounds | target | meaning |", "|:---|:---|:---|:---|:---|:---|:---|"]
    for v in VARIANTS.values():
        lines.append(f"| `{v.name}` | [{v.default[0]:g}, {v.default[1]:g}] | {v.law} | {v.perturb} "
                     f"| [{v.bounds[0]:g}, {v.bounds[1]:g}] | {v.target} | {v.doc} |")
    return "\n".join(lines) + "\n"


__all__ = ["VARIANTS", "Variant", "draw", "names", "perturb", "register_variant", "sample", "table_md",
           "unregister_variant"]
