"""``train.orders=scripted``: the learners draw only their niche; the scripted baseline's
rule places the orders for the niche each agent drew (:meth:`Trainer.complete`).

One trainer on the tiny welfare preset (the default catalogue) serves the module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.scripted import ScriptedConfig, scripted_actions
from economy.streams import derive
from selfplay.config import load_run_config
from selfplay.train import Trainer
from tests.conftest import CONFIGS
from tests.test_train import OVERRIDES as TRAIN_OVERRIDES

OVERRIDES = [o for o in TRAIN_OVERRIDES if not o.startswith("train.analysis")] + [
    "train.analysis.every=0", "train.orders=scripted", "train.updates=4",
    # a non-default rule, so a completion that ignores train.scripted_orders shows
    "train.scripted_orders.price_spread=3", "train.scripted_orders.cash_share=0.25",
]


@pytest.fixture(scope="module")
def trainer():
    return Trainer(load_run_config(CONFIGS / "tiny_welfare.yaml", OVERRIDES))


@pytest.fixture(scope="module")
def state(trainer):
    return trainer.init(jax.random.key(3))


def test_the_policy_draws_the_niche_and_the_rule_places_its_orders(trainer, state):
    """The network has the niche head alone; the economy's actions are the scripted rule's
    orders (with train.scripted_orders' knobs) for exactly the niches the members drew, on
    the ``orders`` stream of the step key. (Catches: orders from the rule's own niche choice,
    from the default knobs, or on the act key; a policy spec that kept the order heads.)"""
    assert [h.name for h in trainer.net.action_spec] == ["niche"]
    env = trainer.env
    key = jax.random.key(11)
    actions = jax.jit(trainer.policy(state))(key, state.env_state)
    assert set(actions) == {h.name for h in env.action_spec}
    drawn = trainer.act_with(trainer.players_params(state), derive(key, "act"), env.observe(state.env_state))
    np.testing.assert_array_equal(actions["niche"], drawn["niche"])
    cfg = ScriptedConfig(price_spread=3, cash_share=0.25)
    want = scripted_actions(env, derive(key, "orders"), state.env_state, cfg, niche=drawn["niche"])
    for name in ("side", "quantity", "price"):
        np.testing.assert_array_equal(actions[name], want[name], err_msg=name)
    # the rule's own choice would differ from the drawn niches (the test would catch a swap)
    own = scripted_actions(env, derive(key, "orders"), state.env_state, cfg)
    assert (np.asarray(own["niche"]) != np.asarray(drawn["niche"])).mean() > 0.3


def test_updates_train_the_niche_head_only(trainer, state):
    """An update under scripted orders records one action per agent (the niche), changes the
    parameters and stays finite; every member's niche shares sum to 1. (Catches: order
    heads left in the transition, a loss over heads the policy no longer has.)"""
    ts, metrics = trainer.update(jax.device_put(jax.tree.map(jnp.copy, state)))
    jax.block_until_ready(ts.params)
    leaves0, leaves1 = jax.tree.leaves(state.params), jax.tree.leaves(ts.params)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves1)
    assert any(not np.array_equal(a, b) for a, b in zip(leaves0, leaves1))
    np.testing.assert_allclose(np.asarray(metrics["member_niche_shares"]).sum(-1), 1.0, rtol=1e-6)
