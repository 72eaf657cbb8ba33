"""One login throttle for every entry point: REST, pages, the dashboard's live socket,
the module socket, registration tokens and the login form. Once an address is
blocked, even the right credentials are refused (429) everywhere."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import ADMIN, MakeServer, RunningServer, basic_auth
from tests.support.rawclient import REGISTRATION_TOKEN, open_socket, register

WRONG = (ADMIN[0], "not-the-password")


async def _live_status(server: RunningServer, auth: tuple[str, str]) -> int:
    try:
        socket = await connect(f"{server.ws_url}/dashboard/live", proxy=None, open_timeout=10,
                               additional_headers={"Authorization": basic_auth(*auth)})
    except InvalidStatus as refused:
        return refused.response.status_code
    await socket.close()
    return 101


async def _module_socket_status(server: RunningServer, module_hash: str) -> int:
    try:
        socket = await open_socket(server.ws_url, module_hash)
    except InvalidStatus as refused:
        return refused.response.status_code
    await socket.close()
    return 101


async def _every_entry_point(server: RunningServer, module_hash: str) -> dict[str, int]:
    """What each entry point answers the right credentials with."""
    login_page = await server.fetch("/login", auth=None)
    xsrf = login_page.headers.get_list("Set-Cookie")
    cookie = next(c.split(";")[0] for c in xsrf if c.startswith("_xsrf="))
    form = await server.fetch(
        "/login", "POST", auth=None, follow_redirects=False,
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
        body=urlencode({"username": ADMIN[0], "password": ADMIN[1], "_xsrf": cookie.split("=", 1)[1]}),
    )
    registration = await server.fetch("/module/register?name=x", auth=None,
                                      headers={"X-Registration-Token": REGISTRATION_TOKEN})
    return {
        "rest": (await server.fetch("/module/list")).code,
        "page": (await server.fetch("/modules")).code,
        "live socket": await _live_status(server, ADMIN),
        "module socket": await _module_socket_status(server, module_hash),
        "registration token": registration.code,
        "login form": form.code,
    }


@pytest.mark.parametrize("attack", ["live socket", "module socket", "registration token", "login form"])
async def test_guesses_at_any_entry_point_block_every_entry_point(make_server: MakeServer, attack: str) -> None:
    server = await make_server(login_slow_after=100, login_block_after=4, login_block_seconds=60)
    module = await register(server.base_url, "throttled")
    before = await _every_entry_point(server, module["hash"])
    assert before == {"rest": 200, "page": 200, "live socket": 101, "module socket": 101,
                      "registration token": 200, "login form": 303}, before

    for _ in range(4):
        if attack == "live socket":
            assert await _live_status(server, WRONG) == 401
        elif attack == "module socket":
            assert await _module_socket_status(server, "0" * 40) == 403
        elif attack == "registration token":
            response = await server.fetch("/module/register?name=x", auth=None,
                                          headers={"X-Registration-Token": "wrong"})
            # The guess that reaches the limit is already answered with the block.
            assert response.code in (401, 429)
        else:
            page = await server.fetch("/login", auth=None)
            cookie = next(c.split(";")[0] for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf="))
            response = await server.fetch(
                "/login", "POST", auth=None, follow_redirects=False,
                headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
                body=urlencode({"username": ADMIN[0], "password": WRONG[1], "_xsrf": cookie.split("=", 1)[1]}),
            )
            assert response.code == 401, response.body

    after = await _every_entry_point(server, module["hash"])
    assert set(after.values()) == {429}, after
