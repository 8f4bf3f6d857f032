"""Benchmarks of Maestro against a raw-Temporal floor: `python -m bench.run`."""
