"""Interoperability with non-JAX multi-agent RL code (optional extras).

* :mod:`economy.interop.pettingzoo`: the economy as a PettingZoo ``ParallelEnv``
  (``pip install -e ".[pettingzoo]"``).
"""
