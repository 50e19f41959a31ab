"""Throughput, loss-cost and gradient-variance benchmarks: ``python -m scaled.tools.bench``."""
