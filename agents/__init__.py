"""Agora's agents: the population's actor-critic networks (heads built from the action
spec, stacked members, the native acting kernel) and the scripted and random baselines."""

from agents.networks import (
    ActorCritic,
    act_parts,
    entropy,
    from_members,
    init_population,
    joint_apply,
    log_prob,
    population_apply,
    sample_actions,
    to_members,
)
from agents.scripted import ScriptedConfig, niche_values, quantity_index, random_actions, scripted_actions

__all__ = [
    "ActorCritic", "ScriptedConfig", "act_parts", "entropy", "from_members", "init_population", "joint_apply",
    "log_prob", "niche_values", "population_apply", "quantity_index", "random_actions", "sample_actions",
    "scripted_actions", "to_members",
]
