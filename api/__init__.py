"""Maestro's HTTP API (FastAPI): routes, dependencies and error mapping over the core."""
