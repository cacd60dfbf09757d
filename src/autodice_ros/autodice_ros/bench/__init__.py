"""Benchmarks: scripts that print JSON (and draw plots); never tests."""
