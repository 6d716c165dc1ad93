"""Synthetic traffic, ground truth, benchmarks and load tests for livepulse."""
