"""Step functions used by the example workflows."""

from __future__ import annotations

from maestro.context import StepContext


def count_letters(ctx: StepContext) -> dict:
    """Count the letters of `args.text`."""
    text = ctx.args["text"]
    return {"letters": sum(ch.isalpha() for ch in text), "text": text}
