"""The benchmark harness behind scripts/bench (see docs/performance.md)."""
