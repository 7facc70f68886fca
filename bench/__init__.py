"""Side-by-side benchmarks: `just bench` (see bench/run.py)."""
