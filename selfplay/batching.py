"""How a PPO epoch cuts its batch into minibatches: plain integer arithmetic, without
jax, so that the run config can check it before anything is imported or compiled
(selfplay.config) and the update can apply it (selfplay.ppo.minibatches)."""

from __future__ import annotations

import math


def minibatch_split(num_minibatches: int, streams: int, samples: int) -> tuple[int, int]:
    """``(stream_groups, sample_parts)`` with ``stream_groups * sample_parts ==
    num_minibatches``: every stream's samples are cut into ``sample_parts =
    gcd(num_minibatches, samples)`` parts and, when that is not enough, the streams into
    ``stream_groups`` interleaved groups (stream ``s`` in group ``s % stream_groups``).
    Raises ``ValueError`` when ``stream_groups`` does not divide ``streams``."""
    parts = math.gcd(num_minibatches, samples)
    groups = num_minibatches // parts
    if streams % groups:
        raise ValueError(
            f"num_minibatches={num_minibatches} needs {groups} groups of streams "
            f"(samples per stream K={samples} gives {parts} parts), which must divide the B={streams} streams"
        )
    return groups, parts
