"""Maestro: an event-triggered workflow scheduler on Temporal."""

__version__ = "0.1.0"
