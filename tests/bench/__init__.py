"""Smoke test of the benchmark harness (``just bench``)."""
