"""Runs: one firing of a workflow (filled in by the workflows work)."""

from __future__ import annotations

import logging

from .hub import ModuleSession
from .protocol import ResultMessage

log = logging.getLogger(__name__)


class RunTracker:
    """Records module results against runs."""

    async def record_result(self, session: ModuleSession, result: ResultMessage) -> None:
        log.info("result from %r: %s", session.name, result.status)
