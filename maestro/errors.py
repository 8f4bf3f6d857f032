"""Maestro's one error hierarchy; the API maps these to HTTP statuses in one place.

MaestroError
├── ConfigurationError        settings are missing or inconsistent
├── InvalidInput              the caller sent something wrong            -> 422
│   ├── DefinitionInvalid     a workflow definition breaks a rule
│   ├── ParamsInvalid         run params do not fit the workflow's params
│   ├── FlowInvalid           a Python flow cannot be loaded or built (maestro.sdk)
│   └── CodePackageInvalid    a code package breaks a rule (size, secrets, hash, layout)
├── Unauthorized              no key, or an unknown or revoked one         -> 401
├── Forbidden                 the key lacks the scope or the ownership     -> 403
├── NotFound                  no such workflow, version or run            -> 404
│   └── ArtifactNotFound      nothing stored at an artifact URI (also a FileNotFoundError)
├── Conflict                  the thing exists but is in the wrong state  -> 409
│   ├── WorkflowInactive
│   ├── InvalidRunState
│   ├── LastAdminKey          revoking it would leave no active admin key
│   └── ConfirmationRequired  the action needs `confirm=true` (revoking one's own key)
└── Unavailable               a backing service cannot be reached         -> 503
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem with an input: where it is and why it is wrong."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"
    ctx: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loc": list(self.loc), "msg": self.msg, "type": self.type}
        if self.ctx:
            out["ctx"] = self.ctx
        return out


class MaestroError(Exception):
    """Base of every error Maestro raises on purpose."""

    code = "maestro_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(MaestroError):
    code = "configuration_error"


class InvalidInput(MaestroError):
    code = "invalid_input"

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class DefinitionInvalid(InvalidInput):
    code = "definition_invalid"


class ParamsInvalid(InvalidInput):
    code = "params_invalid"


class FlowInvalid(InvalidInput):
    code = "flow_invalid"


class CodePackageInvalid(InvalidInput):
    code = "code_package_invalid"


class Unauthorized(MaestroError):
    code = "unauthorized"


class Forbidden(MaestroError):
    code = "forbidden"


class NotFound(MaestroError):
    code = "not_found"


class ArtifactNotFound(NotFound, FileNotFoundError):
    """Nothing is stored at an artifact URI (or under a key); a `FileNotFoundError` too, as
    reading a missing file is."""

    code = "artifact_not_found"


class Conflict(MaestroError):
    code = "conflict"


class WorkflowInactive(Conflict):
    code = "workflow_inactive"


class InvalidRunState(Conflict):
    code = "invalid_run_state"


class LastAdminKey(Conflict):
    code = "last_admin_key"


class ConfirmationRequired(Conflict):
    code = "confirmation_required"


class Unavailable(MaestroError):
    code = "unavailable"
