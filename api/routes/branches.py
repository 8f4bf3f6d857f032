"""Branch routes: the branches that hold workflows, and deleting a branch with its workflows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from api.auth import owners_filter
from api.deps import SessionDep, WorkflowsDep
from api.schemas import BranchDeleted, BranchOut
from maestro.branches import BRANCH_PATTERN
from maestro.db import workflows as workflows_db

router = APIRouter(prefix="/branches", tags=["branches"])
BranchPath = Annotated[str, Path(pattern=BRANCH_PATTERN)]


@router.get("", response_model=list[BranchOut])
async def list_branches(request: Request, session: SessionDep) -> list[BranchOut]:
    """Every branch that holds workflows, by name, with how many (for an owner-limited key,
    the branches and counts of its owners' workflows)."""
    rows = await workflows_db.list_branches(session, owners=owners_filter(request))
    return [BranchOut(branch=b, workflows=n, active_workflows=a) for b, n, a in rows]


@router.delete(
    "/{branch}",
    response_model=BranchDeleted,
    responses={
        403: {"description": "a workflow of the branch belongs to another owner"},
        404: {"description": "the branch holds no workflow"},
        409: {"description": "`prod`, or a workflow of the branch has queued or running runs"},
    },
)
async def delete_branch(
    branch: BranchPath, request: Request, workflows: WorkflowsDep
) -> BranchDeleted:
    """Delete a branch: each of its workflows as `DELETE /workflows/{id}` does (its Temporal
    schedules, versions, trigger registrations, runs; signals stay in the log). Refused as a
    whole for `prod` (409), while any of them has queued or running runs (409), or, for an
    owner-limited key, when one belongs to another owner (403)."""
    deleted = await workflows.delete_branch(branch, owners_filter(request))
    return BranchDeleted(branch=branch, deleted=deleted)
