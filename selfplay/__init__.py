"""Agora's self-play: run configs, reward components and RL variants (registries), PPO,
population-based training and the league, the trainer, the run loop with checkpoints and
dashboards, simulation with baseline agents, and the command line."""

from selfplay.checkpoint import CheckpointError, CheckpointMismatchError, Checkpoints
from selfplay.config import RunConfig, SimulateConfig, TrainConfig, load_run_config, run_config_from_dict
from selfplay.population import FITNESS, FitnessInputs, pbt_sources, register_fitness
from selfplay.ppo import gae, ppo_loss, ppo_update
from selfplay.rewards import REWARD_COMPONENTS, RolloutData, StepData, register_component
from selfplay.run import train_run
from selfplay.simulate import StepRecord, Timing, format_table, make_policy, rollout, simulate, simulate_timed, step_metrics
from selfplay.train import Trainer, TrainState, make_train
from selfplay.variants import VARIANTS, Variant, register_variant

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "Checkpoints", "FITNESS", "FitnessInputs", "REWARD_COMPONENTS",
    "RolloutData", "RunConfig", "SimulateConfig", "StepData", "StepRecord", "Timing", "TrainConfig", "TrainState",
    "Trainer", "VARIANTS", "Variant", "format_table", "gae", "load_run_config", "make_policy", "make_train",
    "pbt_sources", "ppo_loss", "ppo_update", "register_component", "register_fitness", "register_variant",
    "rollout", "run_config_from_dict", "simulate", "simulate_timed", "step_metrics", "train_run",
]
