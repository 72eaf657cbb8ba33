"""A run's start against a real store held mid-insert (MariaDB behind a proxy that
stops answering): its first wave is stored as sent, but nothing treats a step as sent
before its frame is out."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import proxied_mariadb_store
from tests.core.test_runs_history import RecordingSocket, _online_modules, _workflow
from tornado_sched.clock import utcnow
from tornado_sched.history import RunHistory
from tornado_sched.protocol import ResultMessage
from tornado_sched.runs import RunTracker

from .conftest import Core


async def test_a_step_is_not_sent_before_its_frame_is_out(core: Core, mariadb_admin_url: str) -> None:
    async with proxied_mariadb_store(mariadb_admin_url) as (sql, proxy):
        history = RunHistory(sql)
        runs = RunTracker(history, core.registry, core.workflows, core.hub, core.events, "")
        await runs.start()
        [session] = await _online_modules(core, 1)
        socket = session.connection
        assert isinstance(socket, RecordingSocket)
        workflow = await _workflow(core, [session.module_hash], overlap="allow")
        first = await runs.start_run(workflow, "manual", utcnow())
        await proxy.hang()
        second = asyncio.ensure_future(runs.start_run(workflow, "manual", utcnow()))
        await asyncio.sleep(0.3)  # the second run is open, its rows held in the insert
        assert not second.done() and len(runs.open_runs(workflow.workflow_id)) == 2
        # A result without run_id now is the first run's: the second sent nothing yet.
        late = ResultMessage("success", str(workflow.workflow_id), workflow.name, None, None, "first", None)
        durable = runs.record_result_now(session, late)
        assert durable is not None
        assert first.steps[0].status == "success"
        # Until its frame is out, the second run's step is pending in memory.
        [opening] = [r for r in runs.open_runs(workflow.workflow_id) if r.run_id != first.run_id]
        assert opening.steps[0].status == "pending"
        await proxy.restore()
        await durable
        started = await second
        assert started.steps[0].status == "sent"
        executes = [json.loads(f) for f in socket.frames if f.startswith("{") and '"execute"' in f]
        assert [e["meta"]["run_id"] for e in executes] == [first.run_id, started.run_id]
        stored = await history.get(started.run_id)
        assert stored is not None and (stored.steps[0].status, stored.steps[0].attempts) == ("sent", 1)
        await runs.close()
