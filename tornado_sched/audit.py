"""Audit log: who created, changed, deleted, enabled, ran or reloaded what, when,
from which address. Rows go to the relational store."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import func, select

from .clock import as_utc, utcnow
from .pending import PendingSqlRows
from .stores import SqlStore
from .tables import audit_log

log = logging.getLogger(__name__)


class AuditLog:
    """Append-only record of operator actions."""

    def __init__(self, sql: SqlStore) -> None:
        self._sql = sql
        # While SQL is down, rows wait here and are written when it returns.
        self.pending = PendingSqlRows(sql, audit_log)

    @property
    def write_failures(self) -> int:
        return self.pending.write_failures

    async def record(
        self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None,
        remote_ip: str | None = None,
    ) -> None:
        await self.pending.add({
            "at": utcnow().replace(tzinfo=None), "actor": actor[:64], "action": action[:32], "target": target[:100],
            "detail": json.dumps(detail, ensure_ascii=False, default=str) if detail else None,
            "remote_ip": (remote_ip or "")[:64],
        })

    async def list(self, page: int = 1, page_size: int = 50, *, actor: str | None = None,
                   action: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """A page of rows, newest first; `actor` and `action` match exactly when given."""
        where = []
        if actor:
            where.append(audit_log.c.actor == actor)
        if action:
            where.append(audit_log.c.action == action)
        async with self._sql.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(audit_log).where(*where))).scalar_one()
            rows = (await conn.execute(
                select(audit_log).where(*where).order_by(audit_log.c.id.desc())
                .offset((page - 1) * page_size).limit(page_size)
            )).all()
        return [
            {
                "id": r.id, "at": as_utc(r.at), "actor": r.actor, "action": r.action, "target": r.target,
                "detail": json.loads(r.detail) if r.detail else None, "remote_ip": r.remote_ip,
            }
            for r in rows
        ], total
