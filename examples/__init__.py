"""Example workflows and the step functions they call (importable by workers)."""
