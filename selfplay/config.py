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
import math
from typing import Annotated, Any, Literal, Mapping, NamedTuple, Sequence

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator,
)

from agents.scripted import ScriptedConfig
from economy import ConfigError, EconomyConfig, apply_overrides, load_yaml
from economy.config import (
    INT32_MAX, Frozen, FrozenMap, check_number_bounds, did_you_mean, divisors, format_validation_error, suggest_sizes,
)
from selfplay.batching import minibatch_split
from selfplay.population import FITNESS
from selfplay.rewards import REWARD_COMPONENTS
from selfplay.variants import VARIANTS


def check_name_template(field: str, v: str) -> str:
    """A directory template: non-empty, ``{name}`` its only substitution."""
    try:
        v.format(name="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{field}={v!r}: only {{name}} may be substituted ({type(e).__name__}: {e})") from None
    if not v.strip():
        raise ValueError(f"{field} must not be empty")
    return v


class MeshConfig(Frozen):
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


class SimulateConfig(Frozen):
    """``agora simulate``: run one world with baseline agents and print a table."""

    steps: int = Field(100, ge=1)  # steps to simulate (one world; episode_length does not reset it)
    seed: int = Field(0, ge=0)  # world seed (below economy.world.eval_seed_start); also seeds the agents
    agents: Literal["scripted", "random"] = "scripted"  # who plays: the scripted baseline or uniform random actions
    print_every: int = Field(1, ge=1)  # print a table row every this many steps (and the last step)
    scripted: ScriptedConfig = ScriptedConfig()  # knobs of the scripted baseline


Range = tuple[float, float]
RangeMap = Annotated[dict[str, Range], AfterValidator(FrozenMap)]


def _as_range(value: Any) -> Range | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        return float(value[0]), float(value[1])
    return None


def variant_problems(data: Any, prefix: str = "") -> tuple[dict | None, list[str]]:
    """Check ``train.variants`` against the declarations (:mod:`selfplay.variants`) and the
    reward components (:mod:`selfplay.rewards`) registered now. Returns ``({"ranges": ...,
    "rewards": ...}`` with every declared name filled with its default, problems)``; each
    problem names its dotted key under ``prefix``."""
    if not isinstance(data, Mapping):
        return None, [f"{prefix.rstrip('.')} = {data!r}: must be a mapping of name: [lo, hi]"]
    problems: list[str] = []
    ranges: dict[str, Range] = {}
    rewards: dict[str, Range] = {}
    for name, value in data.items():
        if name == "rewards":
            continue
        v = VARIANTS.get(name)
        if v is None:
            problems.append(f"{prefix}{name}: unknown key (declared variants: {sorted(VARIANTS)}; reward weights go under {prefix}rewards)")
            continue
        r = _as_range(value)
        why = "must be [lo, hi], two numbers" if r is None else v.check_range(*r)
        if why:
            problems.append(f"{prefix}{name} = {value!r}: {why}")
        else:
            ranges[name] = r
    given = data.get("rewards") or {}
    if not isinstance(given, Mapping):
        problems.append(f"{prefix}rewards = {given!r}: must be a mapping of reward component: [lo, hi]")
        given = {}
    for name, value in given.items():
        if name not in REWARD_COMPONENTS:
            problems.append(f"{prefix}rewards.{name}: unknown reward component (registered: {sorted(REWARD_COMPONENTS)})")
            continue
        r = _as_range(value)
        why = "must be [lo, hi], two numbers" if r is None else None
        if r is not None and not all(math.isfinite(x) for x in r):
            why = "must be finite numbers"
        elif r is not None and r[0] > r[1]:
            why = "lo > hi"
        if why:
            problems.append(f"{prefix}rewards.{name} = {value!r}: {why}")
        else:
            rewards[name] = r
    if problems:
        return None, problems
    return {
        "ranges": {n: ranges.get(n, v.default) for n, v in VARIANTS.items()},
        "rewards": {c: rewards.get(c, comp.default) for c, comp in REWARD_COMPONENTS.items()},
    }, []


class VariantRanges(Frozen):
    """RL variants and reward weights, per member, drawn at start. In YAML::

        variants:
          learning_rate: [1.0e-3, 3.0e-3]   # any declared variant (selfplay.variants)
          rewards:
            specialisation: [0.0, 0.2]      # any registered reward component (selfplay.rewards)

    A range ``[x, x]`` fixes the value for every member; a name left out takes its
    declared default range (reward components other than ``utility``: 0)."""

    ranges: RangeMap  # {variant: (lo, hi)}, every declared variant
    rewards: RangeMap  # {reward component: (lo, hi)}, every registered component

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, data):
        if isinstance(data, cls):
            return data
        out, problems = variant_problems(data)
        if problems:
            raise ValueError("; ".join(problems))
        return out

    @model_serializer
    def _to_yaml(self):
        return {**{k: list(v) for k, v in self.ranges.items()}, "rewards": {k: list(v) for k, v in self.rewards.items()}}


class PBTConfig(Frozen):
    """Population-based training on the device."""

    enabled: bool = True
    interval: int = Field(10, ge=1)  # updates between PBT rounds
    fraction: float = Field(0.25, ge=0.0, le=0.5)  # bottom fraction that copies the top fraction
    perturb: Range = (0.8, 1.25)  # a copy's hyperparameters are perturbed by one of these (each variant's law)
    fitness: str = "utility"  # a name in selfplay.population.FITNESS: utility, niche_shared, market_welfare
    fitness_ema: float = Field(0.5, gt=0.0, le=1.0)  # weight of the newest update in the fitness average
    # What a copy takes from its source besides parameters and optimiser state (always):
    # "hyperparameters" and/or "reward_weights". Reward weights stay with their slot by
    # default: they are the experimental condition.
    inherit: tuple[Literal["hyperparameters", "reward_weights"], ...] = ("hyperparameters",)
    # Diversity-preserving selection: a copy that would give one founder's lineage more than
    # this share of the member slots is skipped (1.0: no cap).
    max_lineage_share: float = Field(1.0, gt=0.0, le=1.0)

    @field_validator("fitness")
    @classmethod
    def _check_fitness(cls, v):
        if v not in FITNESS:
            raise ValueError(f"unknown fitness {v!r} (registered: {sorted(FITNESS)})")
        return v


class LeagueConfig(Frozen):
    """Frozen snapshots of earlier members play a share ``size / (members + size)`` of the agent slots."""

    size: int = Field(0, ge=0)  # number of frozen snapshots (0: no league)
    refresh_every: int = Field(10, ge=1)  # updates between snapshot refreshes (round robin over slots)


class AnalysisConfig(Frozen):
    """Diversity and niche analysis, computed on the device inside the update."""

    every: int = Field(10, ge=0)  # updates between analyses (0: never); logged to analysis.jsonl and TensorBoard
    probe_states: int = Field(1024, ge=2)  # observations drawn from the update's rollout (all members, all markets)
    histogram_bins: int = Field(20, ge=2)  # bins of the specialisation and wealth histograms
    images: bool = True  # KL heat map, niche shares and lineage images in TensorBoard (host-side matplotlib)


class ImitationConfig(Frozen):
    """A warm start by imitation: the first ``updates`` updates roll out the scripted
    baseline (every agent) and fit each member to its actions by maximum likelihood, the
    critic to the scripted economy's returns; PPO, PBT and the league start after them.
    The learners begin at the baseline's niches and prices instead of at uniform random
    actions (0: off, the learners start from their random initialisation)."""

    updates: int = Field(0, ge=0)  # imitation updates, counted in train.updates
    scripted: ScriptedConfig = ScriptedConfig()  # knobs of the scripted teacher


class CurriculumConfig(Frozen):
    """A niche curriculum: for the first ``updates`` updates a share of the agent slots work
    the niche of their role instead of the one their policy draws, the share falling
    linearly from ``fraction`` to 0. Roles follow ``shares`` (one per niche, e.g. the market
    frontier's), assigned to contiguous slots of every market as the frontier assigns them;
    which slots are held is a fixed pseudo-random order, so the held set only shrinks. The
    policy's own draw is what PPO trains on: for a held agent it did not act, so its niche
    head gets no signal there (the advantage does not depend on the draw), while its order
    heads learn to trade for its role. Off by default (``updates: 0``)."""

    shares: tuple[float, ...] = ()  # niche shares of the roles, one per niche (sum 1)
    fraction: float = Field(0.0, ge=0.0, le=1.0)  # share of slots held at the first update
    updates: int = Field(0, ge=0)  # updates over which the held share falls to 0

    @field_validator("shares")
    @classmethod
    def _shares(cls, v):
        if v and (any(x < 0 for x in v) or abs(sum(v) - 1.0) > 1e-3):
            raise ValueError(f"shares={list(v)} must be non-negative and sum to 1")
        return v


class FaultConfig(Frozen):
    """Injected faults, for testing the run's guards (all off by default)."""

    nan_update: int = Field(0, ge=0)  # from this update (1-based) member nan_member's reward is NaN (0: never)
    nan_member: int = Field(0, ge=0)


class NetworkConfig(Frozen):
    # "mlp": agents.networks.ActorCritic (a torso of `hidden` layers); "entity":
    # agents.networks.EntityActorCritic (per-good and per-niche tokens of width `width`, masks
    # for padding), the policy for economy.catalogues (many catalogues in one economy)
    kind: Literal["mlp", "entity"] = "mlp"
    hidden: tuple[int, ...] = (128, 128)  # widths of the torso's layers (each at least 1; () for none)
    width: int = Field(64, ge=1, le=4096)  # the entity network's token width
    activation: Literal["tanh", "relu"] = "tanh"

    @field_validator("hidden")
    @classmethod
    def _widths(cls, v):
        if any(w < 1 for w in v):
            raise ValueError(f"hidden={list(v)}: every layer needs a width of at least 1")
        return v


class TrainConfig(Frozen):
    """``agora train``: population self-play with PPO, RL variants, PBT and a league."""

    members: int = Field(4, ge=1)  # P: learning members; players 0..P-1 of the P + league.size players (see layout)
    updates: int = Field(100, ge=1)  # PPO updates in the run
    rollout_steps: int = Field(32, ge=1)  # T: environment steps per update
    epochs: int = Field(2, ge=1)
    minibatches: int = Field(4, ge=1)  # per epoch: steps of every agent split first, then agents (see selfplay.ppo)
    value_norm: bool = True  # critic learns returns normalised by their running mean and std per member
    value_norm_rate: float = Field(0.1, gt=0.0, le=1.0)  # weight of the newest update in those running moments
    max_grad_norm: float = Field(0.5, gt=0.0)
    # Extra entropy bonus on the niche head alone (exploration of professions; 0: off). A
    # run constant, not a per-member variant, so the training state keeps its structure.
    niche_ent_coef: float = Field(0.0, ge=0.0)
    # Bonus on the entropy of the niche mix: c x H(the mean over a minibatch's samples of each
    # member's niche distribution), so the member's agents spread over the niches while each
    # agent may choose deterministically (0: off; needs loss_path=traced, whose loss sees the logits)
    niche_mix_coef: float = Field(0.0, ge=0.0)
    # Under economy.niche_tenure > 1 with orders=scripted (the niche the only head): the policy
    # terms of the loss count only the draws of renewal steps, the others being overridden
    tenure_weights: bool = True
    # How the PPO loss gets log-probabilities and entropies from the output layer: "fused"
    # (agents.networks.policy_terms: one native pass, forward and backward, on a one-device
    # CPU mesh; its XLA twin elsewhere) or "traced" (autodiff through per-head distrax
    # categoricals). The same loss and gradients up to float rounding (tests/test_fast_ppo.py).
    # With network.kind=entity: "fused" is agents.networks.EntityPolicy (the order heads as one
    # output layer over every (agent, good) row through the same kernels, acting included);
    # "traced" samples the entity network's logits by XLA and differentiates them.
    loss_path: Literal["fused", "traced"] = "fused"
    seed: int = Field(0, ge=0)  # seeds members, hyperparameters, worlds and actions
    # Who plays which agent (PL = members + league.size players, B = agents per market):
    # agent i is played by player (i // C) % PL, in runs of C contiguous agents.
    # "mixed": C = 1, every player in every market (PL must divide B); the members' markets
    #   are all alike, so the market_welfare fitness ties.
    # "villages": C = B / village_players, so market m hosts exactly village_players players,
    #   (m * k + j) % PL for j < k, and each player sits in M * k / PL markets (B divisible
    #   by k, M * k by PL); market_welfare then ranks members by the welfare of their own
    #   markets (group selection).
    layout: Literal["mixed", "villages"] = "mixed"
    village_players: int = Field(2, ge=1)  # k: players per market under layout=villages (ignored under mixed)
    # Who places the orders: "policy" (the learners' side, quantity and price heads) or
    # "scripted" (the learners choose only their niche; the scripted baseline's rule places
    # the orders for that niche: sell the surplus, buy the inputs and the consumption
    # targets, a tick beyond the last price). "scripted" splits the division of labour (what
    # self-play learns) from the trading it needs (a fixed rule), see docs/selfplay.md.
    orders: Literal["policy", "scripted"] = "policy"
    scripted_orders: ScriptedConfig = ScriptedConfig()  # the order rule's knobs under orders=scripted
    imitation: ImitationConfig = ImitationConfig()
    curriculum: CurriculumConfig = CurriculumConfig()  # a niche curriculum (roles held, handed back gradually)
    fault: FaultConfig = FaultConfig()
    network: NetworkConfig = NetworkConfig()
    variants: VariantRanges = Field(default_factory=lambda: VariantRanges.model_validate({}))
    pbt: PBTConfig = PBTConfig()
    league: LeagueConfig = LeagueConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    log_every: int = Field(5, ge=1)  # updates between TensorBoard writes
    checkpoint_every: int = Field(20, ge=1)  # updates between checkpoints
    keep_checkpoints: int = Field(3, ge=1)
    run_dir: str = "runs/{name}"  # ``{name}``: the config file's stem

    @field_validator("run_dir")
    @classmethod
    def _run_dir(cls, v):
        return check_name_template("run_dir", v)

    @property
    def players(self) -> int:
        return self.members + self.league.size

    def run_length(self, agents_per_market: int) -> int:
        """C: agents in one contiguous run of a player (agent i is played by player
        ``(i // C) % players``): 1 under ``mixed``, ``B / village_players`` under ``villages``."""
        return 1 if self.layout == "mixed" else agents_per_market // self.village_players


class Sizes(NamedTuple):
    """The sizes a run's divisibility rules tie together (plain integers: checking them
    imports nothing and compiles nothing). :meth:`problem` names the first broken rule and
    the settings that could fix it, :meth:`suggest` the nearest valid values of one."""

    agents: int  # economy.num_agents (N)
    markets: int  # economy.num_markets (M)
    mesh: int | str  # mesh.agents (devices, or "auto")
    members: int  # train.members
    league: int  # train.league.size
    layout: str  # train.layout
    village_players: int  # train.village_players (k)
    minibatches: int  # train.minibatches
    rollout_steps: int  # train.rollout_steps (T)
    min_members: int = 1  # train.fault.nan_member + 1: the least train.members a suggestion may name

    # dotted setting -> field of Sizes
    SETTINGS = {"mesh.agents": "mesh", "train.members": "members", "train.village_players": "village_players",
                "train.minibatches": "minibatches"}

    @classmethod
    def of(cls, cfg: "RunConfig") -> "Sizes":
        t = cfg.train
        return cls(cfg.economy.num_agents, cfg.economy.num_markets, cfg.mesh.agents, t.members, t.league.size,
                   t.layout, t.village_players, t.minibatches, t.rollout_steps, t.fault.nan_member + 1)

    @property
    def players(self) -> int:
        return self.members + self.league

    def problem(self) -> tuple[str, tuple[str, ...]] | None:
        """``(message, settings)`` for the first size rule these sizes break (``settings``:
        the dotted keys whose nearest valid values the message should name), or ``None``."""
        n, m, pl, k = self.agents, self.markets, self.players, self.village_players
        per_market = n // m
        players = f"the {pl} players (train.members={self.members} + train.league.size={self.league})"
        if self.mesh != "auto" and m % self.mesh:
            return (f"mesh.agents={self.mesh} must divide economy.num_markets={m} (each device holds whole markets)",
                    ("mesh.agents",))
        if self.layout == "villages":
            if k > pl:
                return (f"train.village_players={k} (train.layout=villages) must be at most {players}",
                        ("train.village_players",))
            if per_market % k:
                return (f"train.village_players={k} (train.layout=villages) must divide the agents per market "
                        f"(economy.num_agents / economy.num_markets = {per_market}): each market is split into "
                        f"{k} contiguous runs of agents, one per player", ("train.village_players",))
            if (m * k) % pl:
                return (f"train.layout=villages: economy.num_markets={m} * train.village_players={k} = {m * k} market "
                        f"seats must be divisible by {players}, so that every player sits in the same number of "
                        "markets", ("train.members", "train.village_players"))
        if n % pl:
            return (f"train.members={self.members} + train.league.size={self.league} = {pl} players must divide "
                    f"economy.num_agents={n} (agent i is played by player (i // C) % players, see train.layout)",
                    ("train.members",))
        if self.layout == "mixed" and per_market % pl:
            return (f"train.members={self.members} + train.league.size={self.league} = {pl} players must divide the "
                    f"agents per market (economy.num_agents / economy.num_markets = {per_market}) so every member "
                    "trades in every market under train.layout=mixed (train.layout=villages puts a few players in "
                    "each market)", ("train.members",))
        try:  # each minibatch takes a part of the steps (samples) of a group of the agents (streams)
            minibatch_split(self.minibatches, n // pl, self.rollout_steps)
        except ValueError as e:
            return (f"train.minibatches={self.minibatches} with train.rollout_steps={self.rollout_steps} and "
                    f"{n // pl} agents per player: {e}", ("train.minibatches",))
        return None

    def candidates(self, setting: str) -> list[int]:
        """Values of ``setting`` that its own divisibility rule allows (a superset of the
        valid ones: :meth:`suggest` checks every rule on each)."""
        if setting == "mesh.agents":
            return divisors(self.markets)
        if setting == "train.members":  # the players (members + league) must divide N
            return [p - self.league for p in divisors(self.agents) if p - self.league >= self.min_members]
        if setting == "train.village_players":  # k must divide the agents per market
            return divisors(self.agents // self.markets)
        if setting == "train.minibatches":  # sample parts divide T, stream groups divide the agents per player
            streams = self.agents // self.players
            return [d * g for d in divisors(self.rollout_steps) for g in divisors(streams) if d * g <= INT32_MAX]
        raise KeyError(setting)

    def suggest(self, setting: str) -> str:
        """``nearest valid SETTING: B below, A above``: the nearest values of ``setting``
        with which every size rule holds, the other sizes as they are."""
        field = self.SETTINGS[setting]
        valid = lambda v: self._replace(**{field: v}).problem() is None  # noqa: E731
        note = ""
        if setting == "train.members" and self.league:
            note = f" (train.league.size={self.league} adds {self.league} players)"
        return suggest_sizes(setting, getattr(self, field), self.candidates(setting), valid, note)


class RunConfig(Frozen):
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
        t = self.train
        if t.fault.nan_member >= t.members:
            raise ValueError(f"train.fault.nan_member={t.fault.nan_member} must be below train.members={t.members}")
        if t.imitation.updates >= t.updates:
            raise ValueError(
                f"train.imitation.updates={t.imitation.updates} must be below train.updates={t.updates} "
                "(imitation is a warm start, not the run)"
            )
        many = self.economy.catalogues is not None
        if many and t.network.kind != "entity":
            raise ValueError("economy.catalogues needs train.network.kind=entity (a policy that sees what each good "
                             "and niche of a world's catalogue is and masks the padding)")
        if t.network.kind == "entity" and not many:
            raise ValueError("train.network.kind=entity plays padded economies: set economy.catalogues (or use kind=mlp)")
        if t.niche_mix_coef > 0 and t.loss_path != "traced":
            raise ValueError("train.niche_mix_coef > 0 needs train.loss_path=traced (the mix's entropy is taken from "
                             "the niche logits, which the fused path does not form)")
        c = t.curriculum
        if many and c.updates:
            raise ValueError("train.curriculum.updates > 0 with economy.catalogues: the curriculum's niche shares "
                             "belong to one catalogue")
        if c.updates and len(c.shares) != self.economy.num_niches:
            raise ValueError(
                f"train.curriculum.shares has {len(c.shares)} entries; the economy has {self.economy.num_niches} "
                f"niches ({', '.join(self.economy.niche_names)})"
            )
        sizes = Sizes.of(self)
        problem = sizes.problem()
        if problem is not None:
            why, settings = problem
            raise ValueError(f"{why}: " + ", or ".join(sizes.suggest(x) for x in settings))
        return self


_SECTIONS: dict[str, type[BaseModel]] = {
    "economy": EconomyConfig, "simulate": SimulateConfig, "train": TrainConfig, "mesh": MeshConfig,
}


def _problems(e: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> list[str]:
    """The lines of :func:`economy.config.format_validation_error`, without its heading."""
    return format_validation_error(e, prefix=prefix, model=model).split("\n  ")[1:]


def run_config_from_dict(data: Any) -> RunConfig:
    """Validate a run-config mapping; raises :class:`ConfigError` naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
    problems: list[str] = []
    sections: dict[str, BaseModel] = {}
    for key in data:
        if key not in _SECTIONS:
            problems.append(f"{key}: unknown section{did_you_mean(key, _SECTIONS)} (sections: {sorted(_SECTIONS)})")
    if "economy" not in data:
        problems.append("economy: missing section (the economy: goods, niches, num_agents, ...)")
    for name, model in _SECTIONS.items():
        if name not in data:
            continue
        value = data[name]
        if not isinstance(value, dict):
            problems.append(f"{name} = {value!r}: must be a mapping")
            continue
        if name == "train" and "variants" in value:
            # Checked here so each problem names its dotted key (train.variants.NAME).
            _, bad = variant_problems(value["variants"], prefix="train.variants.")
            if bad:
                problems += bad
                value = {k: v for k, v in value.items() if k != "variants"}
        try:
            sections[name] = model.model_validate(value)
        except ValidationError as e:
            # Validating each section alone keeps a section-wide check's message short:
            # it names the keys itself instead of repeating the whole section.
            problems += _problems(e, prefix=f"{name}.", model=model)
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


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two nested config dicts differ (a key on one side only counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
