"""Benchmarks that write their results to files (never timed asserts in tests)."""
