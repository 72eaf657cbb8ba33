"""The module SDK stands alone: `tornado_sched.client` imports and works in a
process where every server-side package is unimportable, as for a module author
who installed only Tornado. (A fresh venv with only tornado was checked by hand;
a child process with the others blocked is the fast equivalent.)"""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.conftest import RunningServer
from tests.support.rawclient import eventually

ROOT = Path(__file__).resolve().parents[2]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def server_packages() -> list[str]:
    """Top-level import names of every runtime requirement except Tornado, read from
    requirements.txt (a dependency added there is blocked here without a test edit)."""
    required = {_canonical(line.split("==")[0].strip()) for line in (ROOT / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    required.discard("tornado")
    installed = packages_distributions()
    names = {top for top, dists in installed.items() if any(_canonical(d) in required for d in dists)}
    found = {_canonical(d) for dists in installed.values() for d in dists} & required
    assert found == required, f"requirements not installed: {required - found}"
    return sorted(names)

CHILD = textwrap.dedent("""
    import asyncio, importlib.abc, sys

    BLOCKED = set(sys.argv[3].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked server package: {name}")
            return None

    sys.meta_path.insert(0, Block())
    from tornado_sched.client import ModuleClient

    async def handler(args, meta):
        return {"echo": args}

    async def main():
        client = ModuleClient(sys.argv[1], "standalone", handler, token=sys.argv[2], ping_interval=None)
        client.start()
        await asyncio.wait_for(client.wait_connected(), 10)
        loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
        print("connected", client.module_hash, "loaded:", ",".join(loaded) or "-", flush=True)
        await asyncio.sleep(30)

    asyncio.run(main())
""")


def test_every_server_requirement_is_blocked() -> None:
    blocked = server_packages()
    assert {"pymongo", "bson", "sqlalchemy", "aiomysql", "apscheduler", "prometheus_client", "redis"} <= set(blocked)
    assert "tornado" not in blocked


async def test_client_registers_and_connects_without_server_packages(server: RunningServer) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, server.base_url, server.ctx.settings.registration_token,
        ",".join(server_packages()), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(child.stdout.readline(), 20)).decode()
        if not line:
            raise AssertionError((await child.stderr.read()).decode()[-2000:])
        word, module_hash, _label, loaded = line.split()
        assert word == "connected" and loaded == "-"
        await eventually(lambda: server.ctx.hub.is_online(module_hash))
    finally:
        child.kill()
        await child.wait()
