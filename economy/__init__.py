"""Agora's economy: a vectorised, jit-compiled trading economy (see docs/economy.md)."""

import os as _os

# XLA:CPU's concurrency-optimised scheduler (jax 0.10.2) deadlocks on some programs that
# hold several independent loops (seen: network init next to a world draw). Turn it off
# unless the user set it; XLA reads the flag when the CPU backend starts, so this must
# run before the first computation (importing any Agora package does).
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (
        _os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_concurrency_optimized_scheduler=false"
    ).strip()

from economy.config import (
    ConfigError,
    EconomyConfig,
    GoodConfig,
    MarketConfig,
    NicheConfig,
    ProjectConfig,
    TreasuryConfig,
    WorldConfig,
    apply_overrides,
    load_config,
    load_yaml,
)
from economy.env import AutoReset, Economy, eval_keys, ledger, rollout, world_total
from economy.market import BUY, HOLD, SELL, Clearing, clear, clearing_tick, lottery_start, order_book, price_grid, ration
from economy.registry import PRODUCTION_RULES, ProductionContext, default_rule, make_rule, register_rule
from economy.sharding import agent_mesh, shard_state, state_sharding
from economy.state import ActionHead, EconomyParams, EconomyState
from economy.streams import derive, stream_id, world_key

__all__ = [
    "ActionHead", "AutoReset", "BUY", "Clearing", "ConfigError", "Economy", "EconomyConfig",
    "EconomyParams", "EconomyState", "GoodConfig", "HOLD", "MarketConfig", "NicheConfig",
    "PRODUCTION_RULES", "ProductionContext", "ProjectConfig", "SELL", "TreasuryConfig",
    "WorldConfig", "agent_mesh", "apply_overrides", "clear", "clearing_tick", "default_rule", "eval_keys", "ledger",
    "world_total",
    "load_config", "load_yaml", "make_rule", "order_book", "price_grid", "ration", "register_rule", "rollout",
    "shard_state", "state_sharding", "derive", "stream_id", "world_key",
]
