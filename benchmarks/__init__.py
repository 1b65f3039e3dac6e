"""Benchmark helpers (not part of the installed package)."""
