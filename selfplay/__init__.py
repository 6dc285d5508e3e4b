"""Agora's self-play: run configs, simulation with baseline agents, the command line."""

from selfplay.config import RunConfig, SimulateConfig, load_run_config, run_config_from_dict
from selfplay.simulate import StepRecord, Timing, format_table, make_policy, rollout, simulate, simulate_timed, step_metrics

__all__ = [
    "RunConfig", "SimulateConfig", "StepRecord", "Timing", "format_table", "load_run_config", "make_policy",
    "rollout", "run_config_from_dict", "simulate", "simulate_timed", "step_metrics",
]
