"""Agora's benchmarks: the suite behind ``agora bench`` (``benchmarks.suite``) and the
scripts it builds on, each run as ``python -m benchmarks.<name>`` (see docs/performance.md)."""
