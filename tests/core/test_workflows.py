"""validate_workflow and WorkflowStore built directly on the embedded document server."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tornado_sched.errors import Invalid, InvalidFields, NotFound
from tornado_sched.events import WORKFLOW_DELETED, WORKFLOW_SAVED
from tornado_sched.workflows import (
    DEFAULT_MISFIRE_GRACE_SECONDS,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAY_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    preview_fire_times,
    validate_workflow,
)

from .conftest import Core


def test_validate_fills_the_defaults_once_defined() -> None:
    fields = validate_workflow({"name": " a ", "enable": False}, "Europe/Berlin")
    assert fields["name"] == "a" and fields["timezone"] == "Europe/Berlin"
    assert fields["timeout_seconds"] == DEFAULT_TIMEOUT_SECONDS == 600
    assert fields["misfire_grace_seconds"] == DEFAULT_MISFIRE_GRACE_SECONDS == 300
    assert fields["retry_delay_seconds"] == DEFAULT_RETRY_DELAY_SECONDS == 10
    assert fields["retries"] == DEFAULT_RETRIES == 0
    assert (fields["overlap"], fields["misfire"]) == ("forbid", "skip")


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"),
    ({"name": "a", "enable": True}, "execute_cron_list"),
    ({"name": "a", "execute_cron_list": ["0 9 * * *"]}, "execute_modules"),
    ({"name": "a", "enable": False, "execute_cron_list": "0 9 * * *"}, "execute_cron_list"),
    ({"name": "a", "execute_cron_list": ["61 * * * *"]}, "execute_cron_list"),
    ({"name": "a", "enable": False, "execute_shift_unit": "d"}, "execute_shift_unit"),
    ({"name": "a", "enable": False, "timezone": "Mars/Base"}, "timezone"),
    ({"name": "a", "enable": False, "timeout_seconds": "²"}, "timeout_seconds"),
    ({"name": "a", "enable": False, "execute_modules": [{"module_hash": {"$ne": None}}]}, "execute_modules"),
])
def test_validate_names_the_bad_field(body: dict, field: str) -> None:
    with pytest.raises(Invalid) as caught:
        validate_workflow(body, "Asia/Shanghai")
    assert caught.value.field == field


async def test_every_change_is_published(core: Core) -> None:
    created = await core.workflows.create({"name": "w", "execute_cron_list": ["0 9 * * *"],
                                           "execute_modules": await core.steps()})
    await core.workflows.update(created.workflow_id, {"description": "d"})
    await core.workflows.set_enabled(created.workflow_id, False)
    await core.workflows.delete(created.workflow_id)
    changes = [(kind, data) for kind, data in core.seen if kind.startswith("workflow.")]
    assert [kind for kind, _ in changes] == [WORKFLOW_SAVED] * 3 + [WORKFLOW_DELETED]
    assert changes[1][1]["workflow"].description == "d"
    assert changes[2][1]["workflow"].enable is False
    assert changes[3][1] == {"workflow_id": created.workflow_id}
    with pytest.raises(NotFound):
        await core.workflows.get(created.workflow_id)


async def test_refused_changes_publish_nothing(core: Core) -> None:
    with pytest.raises(Invalid):
        await core.workflows.create({"name": "w", "execute_modules": [{"module_hash": "unknown"}], "enable": False})
    created = await core.workflows.create({"name": "w", "enable": False})
    with pytest.raises(Invalid):
        await core.workflows.set_enabled(created.workflow_id, True)  # no crontab lines
    assert [k for k in core.kinds() if k.startswith("workflow.")] == [WORKFLOW_SAVED]


async def test_upcoming_fire_times_apply_the_shift(core: Core) -> None:
    from datetime import UTC, datetime, timedelta

    workflow = await core.workflows.create({
        "name": "w", "execute_cron_list": ["0 10 * * *"], "execute_shift_time": -30, "timezone": "UTC",
        "execute_modules": await core.steps(),
    })
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    upcoming = workflow.upcoming(now)
    assert len(upcoming) == 5
    assert upcoming[0] == datetime(2030, 1, 2, 9, 59, 30, tzinfo=UTC)
    assert upcoming[1] - upcoming[0] == timedelta(days=1)
    assert (await core.workflows.create({"name": "on demand", "enable": False})).upcoming(now) == []


def test_validate_reports_every_bad_field_at_once() -> None:
    body = {"name": " ", "execute_cron_list": ["0 25 * * *"], "timezone": "Asia/Shangai", "retries": 99,
            "execute_shift_unit": "d"}
    with pytest.raises(InvalidFields) as caught:
        validate_workflow(body, "Asia/Shanghai")
    fields = [e.field for e in caught.value.errors]
    assert fields == ["name", "execute_cron_list", "execute_shift_unit", "timezone", "execute_modules", "retries"]
    # Callers that read one error get the first, as before.
    assert caught.value.field == "name" and caught.value.message == "name: required string"
    with pytest.raises(Invalid) as single:
        validate_workflow({"name": "ok", "execute_cron_list": ["0 25 * * *"], "enable": False}, "UTC")
    assert not isinstance(single.value, InvalidFields) and single.value.field == "execute_cron_list"


def test_preview_fire_times_apply_shift_and_zone() -> None:
    now = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    times = preview_fire_times({"execute_cron_list": ["0 9 * * *"], "execute_shift_time": "-30",
                                "execute_shift_unit": "m", "timezone": "Asia/Tokyo"}, "UTC", now, count=3)
    assert [t.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%d %H:%M") for t in times] == [
        "03 08:30", "04 08:30", "05 08:30"]  # 02 08:30 Tokyo is already past at 00:00 UTC
    assert preview_fire_times({"execute_cron_list": []}, "UTC", now) == []
    with pytest.raises(InvalidFields) as caught:
        preview_fire_times({"execute_cron_list": ["x"], "timezone": "Nowhere/Land"}, "UTC", now)
    assert {e.field for e in caught.value.errors} == {"execute_cron_list", "timezone"}


async def test_plans_cover_data_ordered_workflows_against_current_registrations(core: Core) -> None:
    producer = await core.registry.register("prod", "", [], [{"name": "x"}], "")
    consumer = await core.registry.register("cons", "", [{"name": "x"}, {"name": "y"}], [], "")
    steps = [{"module_hash": consumer.hash, "args": {}}, {"module_hash": producer.hash, "args": {}}]
    data = await core.workflows.create({"name": "d", "enable": False, "execute_modules": steps, "order": "data"})
    await core.workflows.create({"name": "p", "enable": False, "execute_modules": steps})
    plans = await core.workflows.plans(await core.workflows.list())
    assert set(plans) == {data.workflow_id}
    assert plans[data.workflow_id].stages == [[1], [0]]
    assert plans[data.workflow_id].warnings() == ["cons (step 0) needs 'y', which no module in this workflow produces"]

    # The producer re-registers without "x": the stored workflow's plan follows it.
    await core.registry.register("prod", "", [], [{"name": "z"}], "")
    plan = (await core.workflows.plans([await core.workflows.get(data.workflow_id)]))[data.workflow_id]
    assert [w.split(" needs ")[1] for w in plan.warnings()] == [
        "'x', which no module in this workflow produces", "'y', which no module in this workflow produces",
    ]
    assert await core.workflows.plans([]) == {}
