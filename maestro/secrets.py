"""Secrets: owner-scoped values encrypted at rest, named by step definitions, decrypted only
inside the worker's step activity, and masked (`***`) in whatever a step attempt leaves behind.

A value is never returned by the API, stored in a definition, a run's params or a Temporal
payload: definitions carry names (`{secret: name}`, `secrets: [name]`), and the activity reads
the values from PostgreSQL by name, for the workflow's own owner only, on every attempt (so a
new value takes effect on the next attempt).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.db.tables import Secret, Workflow
from maestro.definitions import WorkflowDefinition
from maestro.errors import ConfigurationError, DefinitionInvalid, Forbidden, NotFound, Problem
from maestro.settings import Settings
from maestro.steps import STEP_TYPES, secret_references

MASK = "***"


def write_key_file(path: Path) -> bool:
    """Create `path` holding a new secrets key, readable by its owner only, unless it exists;
    True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(Fernet.generate_key().decode() + "\n")
    return True


class SecretBox:
    """Seals and opens secret values with the operator's key(s): the first key seals, every
    key opens (so a new key can be put first while old values are re-stored)."""

    def __init__(self, keys: Sequence[str]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(key.strip().encode()) for key in keys])
        except (ValueError, TypeError):
            raise ConfigurationError(
                "the secrets key is not a Fernet key (32 bytes, URL-safe base64); generate one "
                'with `python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"`'
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox | None:
        """The box for MAESTRO_SECRETS_KEY, else the key file; None if neither is there."""
        if settings.secrets_key is not None:
            raw = settings.secrets_key.get_secret_value()
        else:
            try:
                raw = settings.secrets_key_path.read_text()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read the secrets key file {settings.secrets_key_path}: {exc}"
                ) from None
        keys = [key for key in re.split(r"[,\s]+", raw) if key]
        if not keys:
            raise ConfigurationError("the secrets key is empty")
        return cls(keys)

    def seal(self, name: str, owner: str, value: str) -> str:
        """The stored form of a value, bound to its secret's name and owner."""
        payload = json.dumps({"name": name, "owner": owner, "value": value})
        return self._fernet.encrypt(payload.encode()).decode()

    def open(self, name: str, owner: str, token: str) -> str:
        """The value of a stored secret."""
        try:
            payload = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise ConfigurationError(
                f"secret {name!r} cannot be decrypted with the configured secrets key; it was "
                "stored with another key (add that key after the current one, or store it again)"
            ) from None
        # A sealed value copied into another secret's row does not open there.
        if payload.get("name") != name or payload.get("owner") != owner:
            raise ConfigurationError(
                f"secret {name!r} holds another secret's value; store it again"
            )
        return payload["value"]


def require_box(box: SecretBox | None, settings: Settings) -> SecretBox:
    """`box`, or a configuration error saying how to give one."""
    if box is None:
        raise ConfigurationError(
            "secrets are not configured: set MAESTRO_SECRETS_KEY or create the key file "
            f"{settings.secrets_key_path} (`maestro up` creates it on first start)"
        )
    return box


def _check_owner(owners: Sequence[str], owner: str, name: str) -> None:
    if owners and owner not in owners:
        raise Forbidden(
            f"this key is limited to owners {', '.join(owners)}; "
            f"secret {name!r} belongs to {owner or 'no owner'!r}"
        )


async def put_secret(
    session: AsyncSession,
    box: SecretBox,
    name: str,
    owner: str,
    value: str,
    owners: Sequence[str] = (),
) -> tuple[Secret, bool]:
    """Create a secret or give it a new value (its version + 1); a key limited to `owners`
    may neither create one for another owner nor replace one that another owner holds.
    Returns the row and whether it was created."""
    _check_owner(owners, owner, name)
    sealed = box.seal(name, owner, value)
    created = (
        await session.scalars(
            insert(Secret)
            .values(name=name, owner=owner, ciphertext=sealed, version=1)
            .on_conflict_do_nothing()
            .returning(Secret)
        )
    ).one_or_none()
    if created is not None:
        return created, True
    row = await get_secret(session, name, owners, lock=True)
    row.owner = owner
    row.ciphertext = sealed
    row.version += 1
    row.updated_at = datetime.now(UTC)
    await session.flush()
    return row, False


async def get_secret(
    session: AsyncSession, name: str, owners: Sequence[str] = (), *, lock: bool = False
) -> Secret:
    """A secret's row (its value stays sealed); NotFound, or Forbidden for another owner's."""
    row = await session.get(Secret, name, with_for_update=lock)
    if row is None:
        raise NotFound(f"secret {name!r} not found")
    _check_owner(owners, row.owner, name)
    return row


async def list_secrets(session: AsyncSession, owners: Sequence[str] = ()) -> Sequence[Secret]:
    """Every secret, or those of `owners`, by name."""
    query = select(Secret).order_by(Secret.name)
    if owners:
        query = query.where(Secret.owner.in_(owners))
    return (await session.scalars(query)).all()


async def delete_secret(session: AsyncSession, name: str, owners: Sequence[str] = ()) -> None:
    """Delete a secret; steps that name it fail from their next attempt on."""
    await session.delete(await get_secret(session, name, owners, lock=True))
    await session.flush()


def definition_references(definition: WorkflowDefinition) -> list[tuple[tuple, str]]:
    """The secrets a definition's steps name, each with its location; params still holding
    expressions are left to the check at run time."""
    found: list[tuple[tuple, str]] = []
    for i, step in enumerate(definition.steps):
        params_type = STEP_TYPES.get(step.type)
        if params_type is None:
            continue
        try:
            spec = params_type.model_validate(step.params)
        except ValueError:
            continue
        found += [(("steps", i, "params", *loc), name) for loc, name in secret_references(spec)]
    return found


async def check_references(session: AsyncSession, definition: WorkflowDefinition) -> None:
    """Refuse a definition that names a secret that does not exist or that belongs to another
    owner than the workflow's."""
    references = definition_references(definition)
    if not references:
        return
    names = {name for _, name in references}
    query = select(Secret.name, Secret.owner).where(Secret.name.in_(names))
    owner_of = dict((await session.execute(query)).tuples().all())
    problems = []
    for loc, name in references:
        if name not in owner_of:
            problems.append(
                Problem(
                    loc,
                    f"unknown secret {name!r}; create it first (PUT /api/v1/secrets/{name})",
                    "unknown_secret",
                )
            )
        elif owner_of[name] != definition.owner:
            problems.append(
                Problem(
                    loc,
                    f"secret {name!r} belongs to another owner; a workflow may use only its own "
                    f"owner's ({definition.owner or 'no owner'!r}) secrets",
                    "secret_owner",
                )
            )
    if problems:
        raise DefinitionInvalid("the definition names secrets it may not use", problems)


async def resolve_secrets(
    session: AsyncSession, box: SecretBox | None, workflow_id: str, names: Iterable[str]
) -> dict[str, str]:
    """The values of `names` for a step of `workflow_id`: each must exist and belong to the
    workflow's owner. NotFound, Forbidden or ConfigurationError (no key, wrong key) otherwise."""
    names = list(dict.fromkeys(names))
    owner = await session.scalar(select(Workflow.owner).where(Workflow.id == workflow_id))
    if owner is None:
        raise NotFound(f"workflow {workflow_id!r} not found")
    rows = {
        row.name: row for row in await session.scalars(select(Secret).where(Secret.name.in_(names)))
    }
    values = {}
    for name in names:
        row = rows.get(name)
        if row is None:
            raise NotFound(f"secret {name!r} does not exist")
        if row.owner != owner:
            raise Forbidden(
                f"secret {name!r} does not belong to this workflow's owner "
                f"({owner or 'no owner'!r})"
            )
        if box is None:
            raise ConfigurationError(
                "this worker has no secrets key: set MAESTRO_SECRETS_KEY or "
                "MAESTRO_SECRETS_KEY_FILE to the key the API stores secrets with"
            )
        values[name] = box.open(name, row.owner, row.ciphertext)
    return values


class Masker:
    """Replaces every occurrence of the given values (and of each line of a multi-line value)
    with `***` in strings, lists and dicts."""

    def __init__(self, values: Iterable[str]) -> None:
        pieces: set[str] = set()
        for value in values:
            if value:
                pieces.add(value)
                pieces.update(line for line in value.splitlines() if line.strip())
        # Longest first: a value containing another is masked whole.
        ordered = sorted(pieces, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, data: Any) -> Any:
        """`data` with every secret value replaced by `***`."""
        if self._pattern is None:
            return data
        if isinstance(data, str):
            return self._pattern.sub(MASK, data)
        if isinstance(data, dict):
            return {self(key): self(value) for key, value in data.items()}
        if isinstance(data, list | tuple):
            return type(data)(self(item) for item in data)
        return data
