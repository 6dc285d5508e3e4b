"""Typed, frozen run configuration: the economy plus what a command does with it.

A run config is a YAML preset (``configs/tiny.yaml``) with one section per concern::

    economy:            # an economy.EconomyConfig (may name a ``base:`` file)
      base: economy/default.yaml
      num_agents: 256
    simulate:           # SimulateConfig: run the economy with baseline agents
      steps: 10
      agents: scripted

Overrides are ``dotted.key=value`` strings (``economy.num_agents=1024``,
``simulate.steps=5``), values parsed as YAML. Every bad key or value stops at load time
with :class:`economy.ConfigError`, whose message names it as a dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents.scripted import ScriptedConfig
from economy import ConfigError, EconomyConfig, apply_overrides, load_yaml
from economy.config import format_validation_error
from selfplay.batching import minibatch_split


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeshConfig(_Frozen):
    """Devices: the agent axis is split over ``agents`` devices by whole markets
    (``economy.num_markets`` divisible by it); parameters are replicated. ``auto``: the
    most devices (of all processes) that divide the number of markets."""

    agents: int | Literal["auto"] = "auto"

    @field_validator("agents")
    @classmethod
    def _check_agents(cls, v):
        if v != "auto" and v < 1:
            raise ValueError(f"must be 'auto' or a number of devices >= 1, got {v}")
        return v


class SimulateConfig(_Frozen):
    """``agora simulate``: run one world with baseline agents and print a table."""

    steps: int = Field(100, ge=1)  # steps to simulate (one world; episode_length does not reset it)
    seed: int = Field(0, ge=0)  # world seed (below economy.world.eval_seed_start); also seeds the agents
    agents: Literal["scripted", "random"] = "scripted"  # who plays: the scripted baseline or uniform random actions
    print_every: int = Field(1, ge=1)  # print a table row every this many steps (and the last step)
    scripted: ScriptedConfig = ScriptedConfig()  # knobs of the scripted baseline


Range = tuple[float, float]


def _check_range(name: str, r: Range, positive: bool = False) -> None:
    lo, hi = r
    if lo > hi:
        raise ValueError(f"{name}={list(r)}: lo > hi")
    if positive and lo <= 0:
        raise ValueError(f"{name}={list(r)}: must be positive (sampled log-uniformly)")


class VariantRanges(_Frozen):
    """RL variants: each member's hyperparameters are drawn from these ranges at start
    (learning rate and entropy coefficient log-uniformly, the rest uniformly). A range
    ``[x, x]`` fixes the value for every member."""

    learning_rate: Range = (1e-3, 3e-3)
    ent_coef: Range = (3e-4, 3e-3)  # the entropy is summed over all heads' entries (about 40 nats at start)
    clip_eps: Range = (0.15, 0.3)
    gamma: Range = (0.9, 0.97)
    gae_lambda: Range = (0.9, 0.97)
    utility: Range = (1.0, 1.0)  # reward weight of the utility component
    specialisation: Range = (0.0, 0.0)  # reward weight of the specialisation component
    collaboration: Range = (0.0, 0.0)  # reward weight of the collaboration component

    @model_validator(mode="after")
    def _check(self):
        for name in type(self).model_fields:
            _check_range(name, getattr(self, name), positive=name in ("learning_rate", "ent_coef"))
        for name in ("clip_eps", "gamma", "gae_lambda"):
            lo, hi = getattr(self, name)
            if not (0.0 <= lo and hi <= 1.0):
                raise ValueError(f"{name}={[lo, hi]}: must lie in [0, 1]")
        return self


class PBTConfig(_Frozen):
    """Population-based training on the device."""

    enabled: bool = True
    interval: int = Field(10, ge=1)  # updates between PBT rounds
    fraction: float = Field(0.25, ge=0.0, le=0.5)  # bottom fraction that copies the top fraction
    perturb: Range = (0.8, 1.25)  # hyperparameters of a copy are multiplied by one of these
    fitness: Literal["utility", "niche_shared"] = "utility"  # niche_shared: divided by members sharing the dominant niche
    fitness_ema: float = Field(0.5, gt=0.0, le=1.0)  # weight of the newest update in the fitness average


class LeagueConfig(_Frozen):
    """Frozen snapshots of earlier members play a share ``size / (members + size)`` of the agent slots."""

    size: int = Field(0, ge=0)  # number of frozen snapshots (0: no league)
    refresh_every: int = Field(10, ge=1)  # updates between snapshot refreshes (round robin over slots)


class AnalysisConfig(_Frozen):
    """Diversity and niche analysis, computed on the device inside the update."""

    every: int = Field(10, ge=0)  # updates between analyses (0: never); logged to analysis.jsonl and TensorBoard
    probe_states: int = Field(1024, ge=2)  # observations drawn from the update's rollout (all members, all markets)
    histogram_bins: int = Field(20, ge=2)  # bins of the specialisation and wealth histograms
    images: bool = True  # KL heat map, niche shares and lineage images in TensorBoard (host-side matplotlib)


class NetworkConfig(_Frozen):
    hidden: tuple[int, ...] = (128, 128)
    activation: Literal["tanh", "relu"] = "tanh"


class TrainConfig(_Frozen):
    """``agora train``: population self-play with PPO, RL variants, PBT and a league."""

    members: int = Field(4, ge=1)  # P: learning members; agent i is played by member i % (P + league.size)
    updates: int = Field(100, ge=1)  # PPO updates in the run
    rollout_steps: int = Field(32, ge=1)  # T: environment steps per update
    epochs: int = Field(2, ge=1)
    minibatches: int = Field(4, ge=1)  # per epoch: steps of every agent split first, then agents (see selfplay.ppo)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    seed: int = Field(0, ge=0)  # seeds members, hyperparameters, worlds and actions
    network: NetworkConfig = NetworkConfig()
    variants: VariantRanges = VariantRanges()
    pbt: PBTConfig = PBTConfig()
    league: LeagueConfig = LeagueConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    log_every: int = Field(5, ge=1)  # updates between TensorBoard writes
    checkpoint_every: int = Field(20, ge=1)  # updates between checkpoints
    keep_checkpoints: int = Field(3, ge=1)
    run_dir: str = "runs/{name}"  # ``{name}``: the config file's stem

    @property
    def players(self) -> int:
        return self.members + self.league.size


class RunConfig(_Frozen):
    """A whole run: the economy and one section per command."""

    economy: EconomyConfig
    simulate: SimulateConfig = SimulateConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()

    @model_validator(mode="after")
    def _check(self):
        start = self.economy.world.eval_seed_start
        if self.simulate.seed >= start:
            raise ValueError(
                f"simulate.seed={self.simulate.seed} lies in the held-out evaluation range "
                f"(economy.world.eval_seed_start={start})"
            )
        if self.mesh.agents != "auto" and self.economy.num_markets % self.mesh.agents:
            raise ValueError(
                f"mesh.agents={self.mesh.agents} must divide economy.num_markets={self.economy.num_markets} "
                "(each device holds whole markets)"
            )
        t, n = self.train, self.economy.num_agents
        per_market = self.economy.agents_per_market
        if n % t.players:
            raise ValueError(
                f"train.members={t.members} + train.league.size={t.league.size} = {t.players} players must divide "
                f"economy.num_agents={n} (agent i is played by player i % players)"
            )
        try:  # each minibatch takes a part of the steps (samples) of a group of the agents (streams)
            minibatch_split(t.minibatches, n // t.players, t.rollout_steps)
        except ValueError as e:
            raise ValueError(
                f"train.minibatches={t.minibatches} with train.rollout_steps={t.rollout_steps} and "
                f"{n // t.players} agents per player: {e}"
            ) from None
        if per_market % t.players:
            raise ValueError(
                f"{t.players} players must divide the agents per market ({per_market}) so every member trades in every market"
            )
        return self


_SECTIONS: dict[str, type[BaseModel]] = {
    "economy": EconomyConfig, "simulate": SimulateConfig, "train": TrainConfig, "mesh": MeshConfig,
}


def _problems(e: ValidationError, prefix: str) -> list[str]:
    """The lines of :func:`economy.config.format_validation_error`, without its heading."""
    return format_validation_error(e, prefix=prefix).split("\n  ")[1:]


def run_config_from_dict(data: Any) -> RunConfig:
    """Validate a run-config mapping; raises :class:`ConfigError` naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
    problems: list[str] = []
    sections: dict[str, BaseModel] = {}
    for key in data:
        if key not in _SECTIONS:
            problems.append(f"{key}: unknown section (sections: {sorted(_SECTIONS)})")
    if "economy" not in data:
        problems.append("economy: missing section (the economy: goods, niches, num_agents, ...)")
    for name, model in _SECTIONS.items():
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, dict):
            problems.append(f"{name} = {value!r}: must be a mapping")
            continue
        try:
            sections[name] = model.model_validate(value)
        except ValidationError as e:
            # Validating each section alone keeps a section-wide check's message short:
            # it names the keys itself instead of repeating the whole section.
            problems += _problems(e, prefix=f"{name}.")
    if not problems:
        try:
            return RunConfig(**sections)
        except ValidationError as e:
            problems += _problems(e, prefix="")
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a run config from YAML, apply ``dotted.key=value`` overrides and validate.

    ``path`` is a preset with an ``economy:`` section (``configs/demo.yaml``); a bare
    economy file (``configs/economy/default.yaml``) is taken as the ``economy:`` section
    of a run with default settings. Raises :class:`ConfigError` naming bad keys/values.
    """
    data = load_yaml(path)
    if "economy" not in data and "goods" in data:
        data = {"economy": data}
    data = apply_overrides(data, overrides)
    return run_config_from_dict(data)
