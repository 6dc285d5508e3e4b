"""Agora's agents: scripted baselines (networks arrive with population self-play)."""

from agents.scripted import ScriptedConfig, niche_values, quantity_index, random_actions, scripted_actions

__all__ = ["ScriptedConfig", "niche_values", "quantity_index", "random_actions", "scripted_actions"]
