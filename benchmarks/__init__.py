"""Benchmarks: `python -m benchmarks` measures speed and memory on this machine and writes
benchmarks/results/results.json and results.md. Scripts, not tests: they time, they don't assert.
"""
