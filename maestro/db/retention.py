"""Retention's statements: one batch of ended runs, or of signals, older than a cutoff, deleted
unless something kept still needs them.

A run goes (with its steps and waits, by cascade) once it ended before the cutoff and nothing
kept refers to it: no workflow's strict_sequential queue is held by it, no model version names
it, no restart of it exists, and no run its signals started exists (a kept run's upstream stays
whole, so it goes only after everything it started). A signal goes (with its matches) once it
was stored before the cutoff and no open join holds it, no existing run consumed or produced
it, and no step's wait matched it. Each batch walks its table in key order from where the last
one stopped, locks only rows nobody holds (SKIP LOCKED) and is one statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from maestro.runtime import RunStatus

ENDED = [s.value for s in RunStatus if s.is_terminal]

_RUNS_BATCH = text(
    """
    WITH v AS (
        SELECT CAST(:cutoff AS timestamptz) AS cutoff, CAST(:ended AS text[]) AS ended
    ), candidates AS (
        SELECT created_at, run_id FROM runs, v
        WHERE (created_at, run_id) > (CAST(:after_at AS timestamptz), CAST(:after_id AS text))
          AND created_at < v.cutoff
        ORDER BY created_at, run_id
        LIMIT :batch
    ), doomed AS (
        SELECT r.run_id FROM v, runs r JOIN candidates c USING (run_id)
        WHERE r.ended_at < v.cutoff AND r.status = ANY(v.ended)
          AND NOT EXISTS (SELECT 1 FROM workflows w WHERE w.blocked_by_run_id = r.run_id)
          AND NOT EXISTS (SELECT 1 FROM model_versions v WHERE v.run_id = r.run_id)
          AND NOT EXISTS (
              SELECT 1 FROM runs k
              WHERE k.cause ->> 'kind' = 'restart'
                AND ((k.cause -> 'detail') ->> 'restart_of') = r.run_id)
          AND NOT EXISTS (
              SELECT 1 FROM runs k
              WHERE k.cause ->> 'kind' = 'subworkflow'
                AND ((k.cause -> 'detail') ->> 'parent_run_id') = r.run_id)
          AND NOT EXISTS (
              SELECT 1 FROM signals s
              JOIN signal_matches m ON m.signal_id = s.id
              JOIN runs d ON d.run_id = m.run_id
              WHERE s.producer_run_id = r.run_id AND m.outcome = 'started_run')
        FOR UPDATE OF r SKIP LOCKED
    ), gone AS (
        DELETE FROM runs WHERE run_id IN (SELECT run_id FROM doomed) RETURNING run_id
    )
    SELECT (SELECT count(*) FROM gone) AS deleted,
           (SELECT count(*) FROM candidates) AS examined,
           last.created_at AS last_at, last.run_id AS last_id
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT created_at, run_id FROM candidates ORDER BY created_at DESC, run_id DESC LIMIT 1
    ) AS last ON true
    """
)

_SIGNALS_BATCH = text(
    """
    WITH candidates AS (
        SELECT id FROM signals WHERE id > :after_id AND created_at < :cutoff
        ORDER BY id LIMIT :batch
    ), held AS (
        SELECT ((slot.value ->> 'id')::bigint) AS id
        FROM trigger_joins j, jsonb_each(j.slots) AS slot
    ), doomed AS (
        SELECT s.id FROM signals s JOIN candidates c USING (id)
        WHERE NOT EXISTS (SELECT 1 FROM held h WHERE h.id = s.id)
          AND NOT EXISTS (
              SELECT 1 FROM signal_matches m JOIN runs r ON r.run_id = m.run_id
              WHERE m.signal_id = s.id)
          AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = s.producer_run_id)
          AND NOT EXISTS (SELECT 1 FROM signal_waits w WHERE w.matched_signal_id = s.id)
        FOR UPDATE OF s SKIP LOCKED
    ), matches AS (
        DELETE FROM signal_matches WHERE signal_id IN (SELECT id FROM doomed)
    ), gone AS (
        DELETE FROM signals WHERE id IN (SELECT id FROM doomed) RETURNING id
    )
    SELECT (SELECT count(*) FROM gone) AS deleted,
           (SELECT count(*) FROM candidates) AS examined,
           (SELECT max(id) FROM candidates) AS last_id
    """
)


@dataclass
class Batch:
    """What one batch did: rows deleted, rows looked at, where the next batch starts, and
    whether the walk is done (it reached the cutoff or the end of the table)."""

    deleted: int
    examined: int
    after: tuple[datetime, str] | int | None
    done: bool


async def delete_runs(
    session: AsyncSession, cutoff: datetime, after: tuple[datetime, str], batch: int
) -> Batch:
    """Delete the deletable runs among the next `batch` runs created before `cutoff`, after
    `after` (created_at, run_id)."""
    row = (
        await session.execute(
            _RUNS_BATCH,
            {
                "cutoff": cutoff,
                "after_at": after[0],
                "after_id": after[1],
                "batch": batch,
                "ended": ENDED,
            },
        )
    ).one()
    last = (row.last_at, row.last_id) if row.last_id is not None else after
    return Batch(row.deleted, row.examined, last, row.examined < batch)


async def delete_signals(session: AsyncSession, cutoff: datetime, after: int, batch: int) -> Batch:
    """Delete the deletable signals among the next `batch` signals stored before `cutoff`,
    after id `after`."""
    row = (
        await session.execute(_SIGNALS_BATCH, {"cutoff": cutoff, "after_id": after, "batch": batch})
    ).one()
    return Batch(row.deleted, row.examined, row.last_id or after, row.examined < batch)
