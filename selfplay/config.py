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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.scripted import ScriptedConfig
from economy import ConfigError, EconomyConfig, apply_overrides, load_yaml
from economy.config import format_validation_error


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulateConfig(_Frozen):
    """``agora simulate``: run one world with baseline agents and print a table."""

    steps: int = Field(100, ge=1)  # steps to simulate (one world; episode_length does not reset it)
    seed: int = Field(0, ge=0)  # world seed (below economy.world.eval_seed_start); also seeds the agents
    agents: Literal["scripted", "random"] = "scripted"  # who plays: the scripted baseline or uniform random actions
    print_every: int = Field(1, ge=1)  # print a table row every this many steps (and the last step)
    scripted: ScriptedConfig = ScriptedConfig()  # knobs of the scripted baseline


class RunConfig(_Frozen):
    """A whole run: the economy and one section per command."""

    economy: EconomyConfig
    simulate: SimulateConfig = SimulateConfig()

    @model_validator(mode="after")
    def _check(self):
        start = self.economy.world.eval_seed_start
        if self.simulate.seed >= start:
            raise ValueError(
                f"simulate.seed={self.simulate.seed} lies in the held-out evaluation range "
                f"(economy.world.eval_seed_start={start})"
            )
        return self


_SECTIONS: dict[str, type[BaseModel]] = {"economy": EconomyConfig, "simulate": SimulateConfig}


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
