"""Branches: isolated deployments of workflows (`prod`, `user.alice`, `test.x`) — their names,
the branch-qualified workflow ids they live under, and the branch a workflow id belongs to.

A definition pushed to a branch other than `prod` is stored under the id `<id>@<branch>`;
production keeps the plain id. Definition ids never hold `@` (`WORKFLOW_ID_PATTERN`), so the
branch of any workflow id is read from the id itself, with no lookup: the signal bus tags what
a workflow's runs and steps publish with it, for free on the publishing path."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from maestro.errors import InvalidInput, Problem

PROD = "prod"
BRANCH_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
BranchName = Annotated[str, Field(pattern=BRANCH_PATTERN)]
SEPARATOR = "@"
# The `workflows.id` column's length: a qualified id must fit it.
MAX_WORKFLOW_ID = 128


def qualified_id(workflow_id: str, branch: str) -> str:
    """The id `workflow_id` is stored under in `branch` (itself in `prod`)."""
    return workflow_id if branch == PROD else f"{workflow_id}{SEPARATOR}{branch}"


def branch_of(workflow_id: str) -> str:
    """The branch a stored workflow id belongs to."""
    _, separator, branch = workflow_id.partition(SEPARATOR)
    return branch if separator else PROD


def base_id(workflow_id: str) -> str:
    """The definition id of a stored workflow id (without its branch)."""
    return workflow_id.partition(SEPARATOR)[0]


def check_qualified_id(workflow_id: str, branch: str) -> str:
    """The qualified id, or InvalidInput naming `branch` when it would not fit the id column."""
    qualified = qualified_id(workflow_id, branch)
    if len(qualified) > MAX_WORKFLOW_ID:
        raise InvalidInput(
            "branch-qualified workflow id too long",
            [
                Problem(
                    ("query", "branch"),
                    f"{qualified!r} is {len(qualified)} characters; a workflow id with its "
                    f"branch holds at most {MAX_WORKFLOW_ID} (use a shorter branch or id)",
                    "string_too_long",
                )
            ],
        )
    return qualified
