"""Workflow delete and clone from the dashboard: each through a confirmation page
and an XSRF form posted with the session cookie (no JavaScript), audited; a viewer
is refused and nothing changes. Real server, real stores."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from tests.conftest import RunningServer
from tests.dashboard.test_dashboard import no_follow, session_cookie
from tests.flows.support import create_workflow, register, workflow_body

VIEWER = ("viewer-wf", "viewer-wf-pass-1")


async def _confirm(server: RunningServer, path: str, cookie: str) -> tuple[str, str]:
    """GET the confirmation page with the cookie; return (its text, the cookies to post with its token)."""
    page = await server.fetch(path, auth=None, headers={"Cookie": cookie})
    assert page.code == 200, page.body[:300]
    token = re.search(rb'name="_xsrf" value="([^"]+)"', page.body).group(1).decode()
    xsrf = [c.split(";", 1)[0] for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")]
    return page.body.decode(), token + "\n" + "; ".join([cookie, *xsrf])


async def _post(server: RunningServer, path: str, token_and_cookies: str, *, with_token: bool = True) -> object:
    token, cookies = token_and_cookies.split("\n", 1)
    body = urlencode({"_xsrf": token}) if with_token else ""
    return await no_follow(server, path, "POST", auth=False, body=body, headers={"Cookie": cookies})


async def test_clone_then_delete_through_their_confirmation_pages(server: RunningServer) -> None:
    module_hash = await register(server, "m-clone")
    wid = await create_workflow(server, workflow_body(name="wf-orig", modules=[module_hash], enable=True))
    cookie = await session_cookie(server)
    edit = (await server.fetch(f"/workflows/{wid}/edit")).body.decode()
    assert f'href="/workflows/{wid}/clone"' in edit and f'href="/workflows/{wid}/delete"' in edit

    page, post = await _confirm(server, f"/workflows/{wid}/clone", cookie)
    assert "Clone wf-orig?" in page and f'action="/workflows/{wid}/clone"' in page
    assert (await _post(server, f"/workflows/{wid}/clone", post, with_token=False)).code == 403
    assert len((await server.api("/workflow/list"))[1]["result"]) == 1  # refused: no copy
    done = await _post(server, f"/workflows/{wid}/clone", post)
    assert done.code == 303
    copy_id = int(re.fullmatch(r"/workflows/(\d+)/edit", done.headers["Location"]).group(1))
    status, env = await server.api(f"/workflow/{copy_id}")
    assert status == 200
    copy, orig = env["result"], (await server.api(f"/workflow/{wid}"))[1]["result"]
    assert copy["name"] == "wf-orig (copy)" and copy["enable"] is False and orig["enable"] is True
    for field in ("execute_cron_list", "execute_modules", "timezone", "overlap", "retries", "order"):
        assert copy[field] == orig[field], field
    again = await _post(server, f"/workflows/{wid}/clone", post)
    second = int(again.headers["Location"].split("/")[2])
    assert (await server.api(f"/workflow/{second}"))[1]["result"]["name"] == "wf-orig (copy 2)"

    page, post = await _confirm(server, f"/workflows/{wid}/delete", cookie)
    assert "Delete wf-orig?" in page and f'action="/workflows/{wid}/delete"' in page
    assert (await server.api(f"/workflow/{wid}"))[0] == 200  # the GET deleted nothing
    done = await _post(server, f"/workflows/{wid}/delete", post)
    assert done.code == 303 and done.headers["Location"] == "/workflows"
    assert (await server.api(f"/workflow/{wid}"))[0] == 404
    assert (await server.api(f"/workflow/{copy_id}"))[0] == 200
    gone = await _post(server, f"/workflows/{wid}/delete", post)
    assert gone.code == 404 and gone.headers["Content-Type"].startswith("text/html")

    seen = {(r["action"], r["target"]) for r in (await server.api("/audit"))[1]["result"]["entries"]}
    assert ("delete", f"workflow:{wid}") in seen and ("create", f"workflow:{copy_id}") in seen


async def test_a_viewer_may_not_delete_or_clone(server: RunningServer) -> None:
    await server.ctx.accounts.create(*VIEWER, "viewer")
    module_hash = await register(server, "m-viewer")
    wid = await create_workflow(server, workflow_body(name="wf-kept", modules=[module_hash]))
    for action in ("delete", "clone"):
        response = await server.fetch(f"/workflows/{wid}/{action}", "POST", body=b"", auth=VIEWER)
        assert response.code == 403, (action, response.code)
    status, env = await server.api("/workflow/list")
    assert [w["name"] for w in env["result"]] == ["wf-kept"]


async def test_audit_page_lists_newest_first_filters_and_is_admin_only(server: RunningServer) -> None:
    await server.ctx.accounts.create(*VIEWER, "viewer")
    module_hash = await register(server, "m-audit")
    first = await create_workflow(server, workflow_body(name="wf-audit-1", modules=[module_hash]))
    second = await create_workflow(server, workflow_body(name="wf-audit-<b>", modules=[module_hash]))
    status, _ = await server.api(f"/workflow/{first}/disable", "POST")
    assert status == 200
    page = (await server.fetch("/admin/audit")).body.decode()
    targets = re.findall(r"<td>(workflow:\d+)</td>", page)
    assert targets[:3] == [f"workflow:{first}", f"workflow:{second}", f"workflow:{first}"]  # newest first
    assert "wf-audit-&lt;b&gt;" in page and "wf-audit-<b>" not in page
    assert 'href="/admin/audit"' in page  # the admin sees the nav entry
    filtered = (await server.fetch("/admin/audit?action=disable&actor=admin")).body.decode()
    assert re.findall(r"<td>(workflow:\d+)</td>", filtered) == [f"workflow:{first}"]
    none = (await server.fetch("/admin/audit?actor=nobody")).body.decode()
    assert "No entries match these filters." in none and "<td>workflow:" not in none
    refused = await server.fetch("/admin/audit", auth=VIEWER)
    assert refused.code == 403 and refused.headers["Content-Type"].startswith("text/html")
    assert 'href="/admin/audit"' not in (await server.fetch("/", auth=VIEWER)).body.decode()


async def test_token_created_shown_once_then_revoked_through_confirmation(server: RunningServer) -> None:
    await server.ctx.accounts.create(*VIEWER, "viewer")
    cookie = await session_cookie(server)
    page, post = await _confirm(server, "/admin/tokens", cookie)
    assert "No tokens yet." in page
    token, cookies = post.split("\n", 1)
    created = await no_follow(server, "/admin/tokens", "POST", auth=False,
                              body=urlencode({"_xsrf": token, "name": "ci <script>"}), headers={"Cookie": cookies})
    assert created.code == 200 and created.headers["Cache-Control"] == "no-store"
    body = created.body.decode()
    secret = re.search(r'<code class="token-once">([^<]+)</code>', body).group(1)
    assert "ci &lt;script&gt;" in body and "ci <script>" not in body
    status, env = await server.api("/module/list", auth=None, headers={"Authorization": f"Bearer {secret}"})
    assert status == 200, env  # the shown token works
    listing = (await server.fetch("/admin/tokens")).body.decode()
    assert secret not in listing and secret[:10] + "…" in listing  # shown once, then only its prefix
    token_id = int(re.search(r'data-token="(\d+)"', listing).group(1))
    assert f'href="/admin/tokens/{token_id}/revoke"' in listing

    page, post = await _confirm(server, f"/admin/tokens/{token_id}/revoke", cookie)
    assert "Revoke token ci &lt;script&gt;?" in page
    assert (await server.api("/module/list", auth=None, headers={"Authorization": f"Bearer {secret}"}))[0] == 200
    done = await _post(server, f"/admin/tokens/{token_id}/revoke", post)
    assert done.code == 303 and done.headers["Location"] == "/admin/tokens"
    assert (await server.api("/module/list", auth=None, headers={"Authorization": f"Bearer {secret}"}))[0] == 401
    again = await _post(server, f"/admin/tokens/{token_id}/revoke", post)
    assert again.code == 409 and again.headers["Content-Type"].startswith("text/html")
    assert "Revoked" in (await server.fetch("/admin/tokens")).body.decode()
    entries = (await server.api("/audit"))[1]["result"]["entries"]
    assert [e["action"] for e in entries if e["target"] == f"token:{token_id}"] == ["revoke", "create"]
    assert secret not in json.dumps(entries)
    for path, method in (("/admin/tokens", "GET"), ("/admin/tokens", "POST"), (f"/admin/tokens/{token_id}/revoke", "GET")):
        refused = await server.fetch(path, method, body=b"" if method == "POST" else None, auth=VIEWER)
        assert refused.code == 403, (path, method)


async def test_audit_page_pages_through_older_entries_keeping_the_filter(server: RunningServer) -> None:
    module_hash = await register(server, "m-audit-pages")
    wid = await create_workflow(server, workflow_body(name="wf-audit-pages", modules=[module_hash]))
    for _ in range(26):  # 26 disables + the create: two pages of 25 when filtered by action
        assert (await server.api(f"/workflow/{wid}/disable", "POST"))[0] == 200
    first = (await server.fetch("/admin/audit?action=disable")).body.decode()
    assert len(re.findall(r"<td>workflow:\d+</td>", first)) == 25
    assert "Page 1 of 2" in first and 'rel="prev"' not in first
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert "action=disable" in older and "page=2" in older
    second = (await server.fetch(older)).body.decode()
    assert len(re.findall(r"<td>workflow:\d+</td>", second)) == 1
    assert "Page 2 of 2" in second and 'rel="prev"' in second and 'rel="next"' not in second
