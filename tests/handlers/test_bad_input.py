"""Input that once reached int() or the stores unchecked: always a 400 envelope
naming the field, never a 500."""

from __future__ import annotations

import pytest

from tests.conftest import RunningServer


@pytest.mark.parametrize("field", ["timeout_seconds", "retries", "misfire_grace_seconds",
                                   "retry_delay_seconds", "execute_shift_time"])
@pytest.mark.parametrize("value", ["²", "--5", "9" * 5000, "1e3", " "])
async def test_numeric_workflow_fields_refuse_non_integers(server: RunningServer, field: str, value: str) -> None:
    status, env = await server.api("/workflow/create", "POST", json_body={
        "name": f"n-{field}", "enable": False, field: value,
    })
    assert status == 400, env
    assert env["code"] == "4000" and env["result"]["field"] == field, env
    assert await server.ctx.docs["workflows"].count_documents({}) == 0


@pytest.mark.parametrize("path", [
    "/runs?workflow_id=%C2%B2",
    "/runs?workflow_id=99999999999999999999",
    "/runs?workflow_id=-1",
    "/runs?page=99999999999999999999",
    "/runs?page=0",
    "/runs?page_size=%C2%B2",
    "/notifications?page=99999999999999999999",
    "/audit?page=%C2%B2",
    "/workflow/1/runs?page=99999999999999999999",
])
async def test_query_integers_are_checked(server: RunningServer, path: str) -> None:
    if path.startswith("/workflow/1/"):
        status, env = await server.api("/workflow/create", "POST", json_body={"name": "w", "enable": False})
        assert status == 200, env
    status, env = await server.api(path)
    assert status == 400 and env["code"] == "4000", (path, env)


@pytest.mark.parametrize("path", ["/history?workflow_id=%C2%B2", "/history?page=%C2%B2", "/outbox?page=99999999999999999999"])
async def test_dashboard_lists_never_500_on_odd_query_values(server: RunningServer, path: str) -> None:
    response = await server.fetch(path)
    assert response.code in (200, 400), (path, response.code)
